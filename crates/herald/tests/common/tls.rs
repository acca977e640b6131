//! A private CA for the TLS tests, made fresh by each test (rcgen), with the server certificates it signs written
//! to files as an operator would give them to herald, and clients that trust that CA alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald::config::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CA of its own, in a temp directory removed on drop.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: PathBuf,
}

/// A certificate the CA signed, with its key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let dir =
            std::env::temp_dir().join(format!("herald-tls-{name}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("the CA's directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("herald test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("a self-signed CA");
        TestCa { issuer, dir }
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, written to `<dir>/ca.pem`.
    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.join("ca.pem");
        write(&path, &self.pem());
        path
    }

    /// A server certificate for `localhost` and 127.0.0.1, whose subject is `common_name`.
    pub fn issue(&self, common_name: &str) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().expect("a server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// `issued` written to `<dir>/<name>.crt` and `<dir>/<name>.key`, as `server.tls` names them.
    pub fn write(&self, name: &str, issued: &Issued) -> TlsFiles {
        let files = TlsFiles {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        write(&files.cert, &issued.cert_pem);
        write(&files.key, &issued.key_pem);
        files
    }

    /// An HTTPS client that trusts this CA and nothing else.
    pub fn http_client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.pem().as_bytes())
            .expect("the CA as reqwest reads it");
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .no_proxy()
            .build()
            .expect("an HTTPS client")
    }

    /// A rustls client config that trusts this CA and nothing else, offering h2 and HTTP/1.1.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.issuer.der().clone())
            .expect("the CA as a root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS connection to `addr` checked against `config`'s roots for the name 127.0.0.1.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("an IP address as a server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The certificate the server presented on `stream`.
pub fn peer_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

/// Writes `text` to `path`, replacing the file whole (a rename), as a certificate renewal tool does.
pub fn write(path: &Path, text: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", temp.display()));
    std::fs::rename(&temp, path)
        .unwrap_or_else(|e| panic!("cannot rename to {}: {e}", path.display()));
}

/// A WebSocket over TLS.
pub type Wss = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// A socket.io v4 client over WSS to `addr` (checked against `config`'s roots) that joined namespace `nsp`
/// (`/shop`); returns it, the certificate the server presented, and the namespace's CONNECT answer.
pub async fn wss_join(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    nsp: &str,
) -> (Wss, CertificateDer<'static>, String) {
    use futures_util::SinkExt;
    let stream = connect(addr, config).await.expect("a TLS connection");
    let certificate = peer_certificate(&stream);
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("wss://{addr}/socket.io/?EIO=4&transport=websocket"),
        stream,
    )
    .await
    .expect("a WebSocket over TLS");
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("0{"), "{open}");
    ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
        "40{nsp},"
    )))
    .await
    .expect("CONNECT sent");
    let reply = next_text(&mut ws).await;
    (ws, certificate, reply)
}

/// The next text frame of `ws`, within `WAIT`.
pub async fn next_text(ws: &mut Wss) -> String {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(super::WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return text.to_string();
        }
    }
}
