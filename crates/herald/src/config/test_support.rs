//! Test helpers for the config modules: a scratch directory under the system temp dir, and public keys.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under `std::env::temp_dir()`, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("herald-config-{}-{label}-{n}", std::process::id()));
        // A leftover from a crashed run with the same pid would make the test see stale files.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creates a temp dir");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in the directory and returns its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("writes a temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A 1024-bit RSA public key (SPKI PEM), for RS*/PS* validation.
pub(crate) const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCglgq9AyhTW1gw3DFaAbT542pg
S/rfEoufVjbwgZi93+6cfmMsJuS91IjDNVn+zX/nUaqc9Z8OZCGX0nyzc4lveXgs
15VPhLaP2Ffvhduim+ZH7BzomAArzrQjoKHFjxrvi8h0dSsHRARQ9x/OcXv9lRYp
jZlGi60/wH6IJ7uAhQIDAQAB
-----END PUBLIC KEY-----
";

/// A P-256 public key (SPKI PEM), for ES* validation.
pub(crate) const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEH9Dv8l6D53p61shTKTscWouZZ2u
4e6fx2aK1cdeRHcdGvMq2I0d33igQ0qzaKTILt+oQvOR0ptBidkvq4BQ1Q==
-----END PUBLIC KEY-----
";
