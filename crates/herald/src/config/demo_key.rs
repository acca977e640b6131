//! The `demo` site's API key: generated once, kept in `<data_dir>/demo-api-key` (mode 0600), reused at every
//! later start.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::RngCore;

use crate::config::{Config, ConfigError, DEMO_SITE};
use crate::secret::Secret;

/// The file in the data directory that holds the demo site's key.
pub const DEMO_KEY_FILE: &str = "demo-api-key";

/// Gives a `demo` site that has no API key the one kept in `<data_dir>/demo-api-key`, generating and writing it
/// (32 random bytes, URL-safe base64 without padding) on first use. Returns the key when it put one into the
/// site, so the caller can print it at start; `None` when there is no such site or it already has a key.
pub fn ensure_demo_key(config: &mut Config) -> Result<Option<Secret>, ConfigError> {
    let data_dir = config.server.data_dir.clone();
    let Some(site) = config
        .sites
        .iter_mut()
        .find(|site| site.name == DEMO_SITE && site.api_keys.is_empty())
    else {
        return Ok(None);
    };
    let key = match read_key(&data_dir)? {
        Some(key) => key,
        None => write_key(&data_dir, generate_key())?,
    };
    site.api_keys = vec![key.clone()];
    Ok(Some(key))
}

fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DEMO_KEY_FILE)
}

/// The kept key; `None` when the file does not exist or holds only whitespace.
fn read_key(data_dir: &Path) -> Result<Option<Secret>, ConfigError> {
    let path = key_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => Ok(Some(Secret::new(text.trim()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(ConfigError::DemoKeyRead { path, error }),
    }
}

fn generate_key() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Creates the data directory and writes the key, readable by the owner only.
fn write_key(data_dir: &Path, key: Secret) -> Result<Secret, ConfigError> {
    std::fs::create_dir_all(data_dir).map_err(|error| ConfigError::DataDir {
        path: data_dir.to_owned(),
        error,
    })?;
    let path = key_path(data_dir);
    let write = || -> std::io::Result<()> {
        let mut file = owner_only_options().open(&path)?;
        // An existing empty file keeps its mode through `open`, so narrow it explicitly.
        restrict_to_owner(&path)?;
        file.write_all(key.expose().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    };
    write().map_err(|error| ConfigError::DemoKeyWrite {
        path: path.clone(),
        error,
    })?;
    Ok(key)
}

fn owner_only_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

#[cfg(unix)]
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::test_support::TempDir;
    use crate::config::{validate, SiteConfig};

    fn demo_config(data_dir: &Path) -> Config {
        let mut config = Config::default();
        config.server.data_dir = data_dir.to_owned();
        config
    }

    #[test]
    fn generates_then_reuses_the_key() {
        let tmp = TempDir::new("demo-key");
        let data_dir = tmp.path().join("nested").join("data");

        let mut first = demo_config(&data_dir);
        let key = ensure_demo_key(&mut first).unwrap().unwrap();
        assert_eq!(key.expose().len(), 43, "32 bytes in unpadded base64");
        assert!(key
            .expose()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(first.sites[0].api_keys, vec![key.clone()]);
        validate(&first).unwrap();

        let path = data_dir.join(DEMO_KEY_FILE);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", key.expose())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let mut second = demo_config(&data_dir);
        assert_eq!(ensure_demo_key(&mut second).unwrap(), Some(key.clone()));
        assert_eq!(second.sites[0].api_keys, vec![key]);
    }

    #[test]
    fn an_empty_key_file_is_replaced() {
        let tmp = TempDir::new("demo-empty");
        tmp.write(DEMO_KEY_FILE, " \n");
        let mut config = demo_config(tmp.path());
        let key = ensure_demo_key(&mut config).unwrap().unwrap();
        assert_eq!(key.expose().len(), 43);
    }

    #[test]
    fn leaves_keyed_and_other_sites_alone() {
        let tmp = TempDir::new("demo-none");
        let mut keyed = demo_config(tmp.path());
        keyed.sites[0].api_keys = vec![Secret::new("mine")];
        assert_eq!(ensure_demo_key(&mut keyed).unwrap(), None);
        assert_eq!(keyed.sites[0].api_keys, vec![Secret::new("mine")]);

        let mut other = demo_config(tmp.path());
        other.sites = vec![SiteConfig::new("shop".into())];
        assert_eq!(ensure_demo_key(&mut other).unwrap(), None);
        assert!(!tmp.path().join(DEMO_KEY_FILE).exists());
    }

    #[test]
    fn an_unwritable_data_dir_is_one_clear_line() {
        let tmp = TempDir::new("demo-blocked");
        // A file where the data directory should be.
        let blocker = tmp.write("data", "");
        let mut config = demo_config(&blocker);
        let err = ensure_demo_key(&mut config).unwrap_err().to_string();
        assert!(err.starts_with(&blocker.display().to_string()), "{err}");
        assert!(err.contains(": cannot "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
