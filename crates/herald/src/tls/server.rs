//! The certificate herald serves: read from `server.tls`, and swapped whole by `reload`, so handshakes after it
//! get the new certificate while open connections keep the session they made.

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{provider, read, read_certificates, TlsError};
use crate::config::TlsFiles;

/// The protocol herald speaks over TLS, announced by ALPN: its server is HTTP/1.1 only (WebSocket upgrades are
/// HTTP/1.1 too), so a client that offers h2 falls back to it.
const ALPN: &[u8] = b"http/1.1";

/// HTTPS and WSS on herald's port: the certificate and key of `server.tls`. Cloning is cheap (an `Arc`); every
/// clone sees a `reload`.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

/// The certificate new handshakes get. A handshake reads it once, under a read lock held for an `Arc` clone.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read()))
    }
}

impl ServerTls {
    /// Reads `files`: the certificate chain (the server's first) and its private key, which must match.
    pub fn load(files: &TlsFiles) -> Result<ServerTls, TlsError> {
        let current = Arc::new(Current(RwLock::new(Arc::new(certified_key(files)?))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(ServerTls {
            inner: Arc::new(Inner {
                files: files.clone(),
                current,
                acceptor: TlsAcceptor::from(Arc::new(config)),
            }),
        })
    }

    /// Reads the files again and serves the new certificate from the next handshake on. Open connections are
    /// not touched. When the new files cannot be used the error says why, and the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = Arc::new(certified_key(&self.inner.files)?);
        *self.inner.current.0.write() = key;
        Ok(())
    }

    /// The files this certificate comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// The TLS side of an accepted connection, once its handshake is done. `None` when the handshake fails, or
    /// when the client speaks plain HTTP: it gets a 400 that says to use https://. The caller bounds the time.
    pub(crate) async fn accept(&self, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) if first[0] == HANDSHAKE_RECORD => {}
            Ok(1) => {
                refuse_plain(stream).await;
                return None;
            }
            _ => return None,
        }
        match self.inner.acceptor.accept(stream).await {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::debug!(%error, "a TLS handshake failed");
                None
            }
        }
    }
}

/// The first byte of a TLS connection: a handshake record. A plain HTTP request starts with a method's letter.
const HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain HTTP request to the TLS port gets, rather than a connection closed without a word.
const PLAIN_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
    content-length: 54\r\nconnection: close\r\n\r\nthis port speaks HTTPS: use https:// (or wss://) here\n";

/// Answers a plain HTTP request with [`PLAIN_REFUSAL`] and closes. What the client sent is read and dropped
/// until it closes too, so the close is not a reset that would lose the answer; the caller's deadline bounds it.
async fn refuse_plain(mut stream: TcpStream) {
    if stream.write_all(PLAIN_REFUSAL).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates("server.tls.cert", &files.cert)?;
    let pem = read("server.tls.key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        other => TlsError::BadPem {
            setting: "server.tls.key",
            path: files.key.clone(),
            reason: other.to_string(),
        },
    })?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // A key type whose public half rustls cannot compute: the handshake will tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
        Err(e) => Err(TlsError::BadCertificate {
            path: files.cert.clone(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    /// A directory of its own under the temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            let dir = std::env::temp_dir()
                .join(format!("herald-tls-unit-{:016x}", rand::random::<u64>()));
            std::fs::create_dir_all(&dir).expect("a temp dir");
            Dir(dir)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("a temp file");
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed certificate for `name` and its key, as PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("a key");
        let cert = CertificateParams::new(vec![name.to_string()])
            .expect("parameters")
            .self_signed(&key)
            .expect("a certificate");
        (cert.pem(), key.serialize_pem())
    }

    fn files(cert: &Path, key: &Path) -> TlsFiles {
        TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
        }
    }

    fn served(tls: &ServerTls) -> Vec<u8> {
        let current = tls.inner.current.0.read();
        current.cert[0].as_ref().to_vec()
    }

    #[test]
    fn each_bad_file_is_one_line_naming_it() {
        let dir = Dir::new();
        let (cert, key) = self_signed("a.test");
        let (_, other_key) = self_signed("b.test");
        let cert = dir.file("cert.pem", &cert);
        let key = dir.file("key.pem", &key);
        let missing = dir.0.join("missing.pem");
        let empty = dir.file("empty.pem", "not PEM at all\n");
        let other_key = dir.file("other.key", &other_key);
        let garbage = dir.file(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let d = |p: &Path| p.display().to_string();
        let cases = [
            (
                files(&missing, &key),
                format!("server.tls.cert {}: cannot read: No such file or directory (os error 2)", d(&missing)),
            ),
            (
                files(&empty, &key),
                format!("server.tls.cert {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)", d(&empty)),
            ),
            (
                files(&cert, &empty),
                format!("server.tls.key {}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", d(&empty)),
            ),
            (
                files(&cert, &cert),
                format!("server.tls.key {}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", d(&cert)),
            ),
            (
                files(&garbage, &key),
                format!(
                    "server.tls.cert {}: the server's certificate (the first) cannot be used: invalid peer \
                     certificate: BadEncoding",
                    d(&garbage)
                ),
            ),
            (
                files(&cert, &other_key),
                format!(
                    "server.tls.key {} is not the key of the first certificate in server.tls.cert {} (the \
                     server's own certificate goes first)",
                    d(&other_key),
                    d(&cert)
                ),
            ),
        ];
        for (files, expected) in cases {
            let error = ServerTls::load(&files).expect_err("a bad file").to_string();
            assert_eq!(error, expected);
            assert!(!error.contains('\n'));
        }
        assert!(ServerTls::load(&files(&cert, &key)).is_ok());
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
        let dir = Dir::new();
        let (first, first_key) = self_signed("first.test");
        let files = files(
            &dir.file("cert.pem", &first),
            &dir.file("key.pem", &first_key),
        );
        let tls = ServerTls::load(&files).expect("the first certificate");
        let before = served(&tls);

        let (second, second_key) = self_signed("second.test");
        dir.file("cert.pem", &second);
        dir.file("key.pem", &second_key);
        tls.reload().expect("the second certificate");
        let after = served(&tls);
        assert_ne!(after, before);

        // A renewal caught halfway: the new certificate with the old key.
        let (third, _) = self_signed("third.test");
        dir.file("cert.pem", &third);
        let error = tls.reload().expect_err("a certificate without its key");
        assert!(
            error
                .to_string()
                .contains("is not the key of the first certificate"),
            "{error}"
        );
        assert_eq!(served(&tls), after, "the certificate in use stays");
    }
}
