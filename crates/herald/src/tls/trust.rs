//! The roots herald's own connections trust: the system's (the OS CA store), plus the CA certificates of
//! `server.ca_file`. Every HTTP client herald makes (webhooks, JWKS, presence, peers) and every Redis client
//! comes from here, so all of them trust the same roots.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use super::{provider, read_certificates, TlsError};

/// The OS's CA store, read once per process (it does not change under a running herald).
static SYSTEM_ROOTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
    let found = rustls_native_certs::load_native_certs();
    if let Some(error) = found.errors.first() {
        tracing::warn!(%error, loaded = found.certs.len(), "some of the system's CA certificates cannot be read");
    }
    found.certs
});

/// What herald trusts when it connects out. Cloning is cheap (an `Arc`).
#[derive(Clone, Default)]
pub struct Trust {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `server.ca_file`, when set.
    ca_file: Option<PathBuf>,
    /// Its certificates, trusted besides the system's.
    extra: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("ca_file", &self.inner.ca_file)
            .field("extra", &self.inner.extra.len())
            .finish()
    }
}

impl Trust {
    /// The system's roots alone.
    pub fn system() -> Trust {
        Trust::default()
    }

    /// The system's roots and, when given, every certificate of the PEM bundle at `ca_file`.
    pub fn load(ca_file: Option<&Path>) -> Result<Trust, TlsError> {
        let Some(path) = ca_file else {
            return Ok(Trust::system());
        };
        let extra = read_certificates("server.ca_file", path)?;
        // Each must be usable as a trust anchor, or it would be skipped silently at the first connection.
        let mut check = RootCertStore::empty();
        for cert in &extra {
            check.add(cert.clone()).map_err(|e| TlsError::BadCa {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
        Ok(Trust {
            inner: Arc::new(Inner {
                ca_file: Some(path.to_owned()),
                extra,
            }),
        })
    }

    /// An HTTP client builder that verifies servers against these roots and names herald as its user agent.
    /// Callers add their timeouts.
    pub fn http_client(&self) -> reqwest::ClientBuilder {
        let extra = self
            .inner
            .extra
            .iter()
            .filter_map(|cert| reqwest::Certificate::from_der(cert).ok());
        reqwest::Client::builder()
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(extra)
    }

    /// A Redis client for `url`; a `rediss://` one verifies the server against these roots. Every Redis
    /// connection herald makes (mailbox store, cluster bus, registry, recovery sessions, emitter, leases, the
    /// Redis bridge) starts here.
    pub fn redis_client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        if !url.starts_with("rediss://") {
            return redis::Client::open(url);
        }
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(self.roots_pem()),
            },
        )
    }

    /// A rustls client config over these roots, without ALPN (the caller sets what it speaks).
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = RootCertStore::empty();
        // A system certificate rustls cannot use is left out, as reqwest's verifier does.
        let (_added, _ignored) = roots.add_parsable_certificates(SYSTEM_ROOTS.iter().cloned());
        roots.add_parsable_certificates(self.inner.extra.iter().cloned());
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// The system's roots and the extra ones as one PEM bundle: the redis crate takes its roots as PEM, and
    /// uses them instead of the system's.
    fn roots_pem(&self) -> Vec<u8> {
        let mut pem = Vec::new();
        for cert in SYSTEM_ROOTS.iter().chain(&self.inner.extra) {
            pem_encode(cert, &mut pem);
        }
        pem
    }
}

/// Appends `cert` as a PEM block.
fn pem_encode(cert: &CertificateDer<'_>, out: &mut Vec<u8>) {
    let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END CERTIFICATE-----\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn pem_bundles_read_back_as_the_same_certificates() {
        let certs: Vec<CertificateDer<'static>> = [vec![1u8; 1], vec![7u8; 200], vec![0u8; 64]]
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let mut pem = Vec::new();
        for cert in &certs {
            pem_encode(cert, &mut pem);
        }
        let back = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("our PEM parses");
        assert_eq!(back, certs);
    }
}
