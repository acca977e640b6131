//! TLS: the certificate herald serves HTTPS and WSS with (`ServerTls`, re-read on SIGHUP) and the roots herald's
//! own connections trust (`Trust`: webhooks, `rediss://`, peers). One crypto provider, aws-lc-rs, which
//! reqwest, async-nats and lapin already build into the binary.

mod server;
mod trust;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

pub use server::ServerTls;
pub use trust::Trust;

use crate::config::{one_line, ServerConfig};

/// Why a certificate, key or CA file cannot be used. One line that names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} {}: cannot read: {error}", one_line(path.display()))]
    Read {
        setting: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{setting} {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)", one_line(path.display()))]
    NoCertificate {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("{setting} {}: not valid PEM: {reason}", one_line(path.display()))]
    BadPem {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("server.tls.key {}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", one_line(path.display()))]
    NoKey { path: PathBuf },
    #[error("server.tls.key {}: the key cannot be used: {reason}", one_line(path.display()))]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "server.tls.cert {}: the server's certificate (the first) cannot be used: {reason}",
        one_line(path.display())
    )]
    BadCertificate { path: PathBuf, reason: String },
    #[error(
        "server.tls.key {} is not the key of the first certificate in server.tls.cert {} (the server's own \
         certificate goes first)",
        one_line(key.display()),
        one_line(cert.display())
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("server.ca_file {}: a certificate cannot be trusted: {reason}", one_line(path.display()))]
    BadCa { path: PathBuf, reason: String },
    /// rustls refused a configuration herald made; a bug, not a file's fault.
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// Everything TLS of a configuration: the server's certificate when `server.tls` is set, and the roots herald
/// trusts. Reads the files, so a bad one is reported before any port is bound.
pub fn load(server: &ServerConfig) -> Result<(Option<ServerTls>, Trust), TlsError> {
    let tls = server.tls.as_ref().map(ServerTls::load).transpose()?;
    let trust = Trust::load(server.ca_file.as_deref())?;
    Ok((tls, trust))
}

/// Why the TLS layer under an outbound call refused the server's certificate, when it did (`UnknownIssuer`, a
/// name mismatch, an expired certificate): the reason to log, which names no URL. `None` for any other failure.
pub fn refused_certificate(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    if let Some(rustls::Error::InvalidCertificate(reason)) = error.downcast_ref::<rustls::Error>() {
        return Some(format!("{reason:?}"));
    }
    // Wrappers that hide the error they hold from `source()`: an `io::Error` (reqwest, tokio-rustls) and an
    // `Arc` (the redis crate's errors).
    let inner: Option<&(dyn std::error::Error + 'static)> = match error.downcast_ref::<io::Error>()
    {
        Some(io) => io.get_ref().map(|inner| inner as _),
        None => error.downcast_ref::<Shared>().map(|shared| &**shared as _),
    };
    inner
        .and_then(refused_certificate)
        .or_else(|| error.source().and_then(refused_certificate))
}

/// The crypto provider of every TLS config herald makes itself.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        setting,
        path: path.to_owned(),
        error,
    })
}

/// Every certificate of the PEM file at `path`, at least one.
fn read_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            setting,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            setting,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}
