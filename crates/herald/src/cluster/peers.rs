//! Asking the other nodes: the socket API (list, disconnect, rooms) answers for sockets on any node by asking
//! every live peer in parallel, with the caller's API key and `LOCAL_HEADER`, which makes a peer answer for its
//! own sockets only (so a request never fans out twice).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;

use super::Directory;

/// The request header that asks a node about its own sockets only.
pub const LOCAL_HEADER: &str = "x-herald-local";
/// How long a peer may take to answer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// The client that asks peers, which checks a peer at an https:// node URL against herald's roots. Cloning is
/// cheap (reqwest's client is an `Arc`).
#[derive(Debug, Clone)]
pub struct Peers {
    client: reqwest::Client,
}

impl Peers {
    pub fn new(trust: &crate::tls::Trust) -> Result<Peers, reqwest::Error> {
        let client = trust
            .http_client()
            .timeout(PEER_TIMEOUT)
            .connect_timeout(PEER_TIMEOUT)
            .build()?;
        Ok(Peers { client })
    }

    /// Sends `request` to every live peer at once; answers in the directory's order.
    pub async fn ask_all(
        &self,
        directory: &dyn Directory,
        request: &PeerRequest<'_>,
    ) -> Vec<PeerAnswer> {
        let peers = directory.peers();
        join_all(peers.into_iter().map(|(node, url)| async move {
            let answer = self.ask(&url, request).await;
            PeerAnswer { node, answer }
        }))
        .await
    }

    async fn ask(&self, url: &str, request: &PeerRequest<'_>) -> Result<(u16, Bytes), String> {
        let url = format!("{}{}", url.trim_end_matches('/'), request.target);
        let mut builder = self
            .client
            .request(request.method.clone(), url)
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", request.api_key),
            )
            .header(LOCAL_HEADER, "1");
        if let Some(body) = &request.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = builder
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| e.without_url().to_string())?;
        Ok((status, body))
    }
}

/// One peer's answer: its status and body, or why it gave none.
#[derive(Debug)]
pub struct PeerAnswer {
    pub node: Arc<str>,
    pub answer: Result<(u16, Bytes), String>,
}

/// A request to pass on to every peer.
#[derive(Debug, Clone)]
pub struct PeerRequest<'a> {
    pub method: reqwest::Method,
    /// Path and query, already escaped (`path_segment`).
    pub target: &'a str,
    /// The caller's API key.
    pub api_key: &'a str,
    /// A JSON body.
    pub body: Option<Bytes>,
}

/// `segment` escaped for a URL path or query value: everything but unreserved characters is percent-encoded.
pub fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(escape("abc-_.~Z9"), "abc-_.~Z9");
        assert_eq!(escape("a b/c?d%é"), "a%20b%2Fc%3Fd%25%C3%A9");
    }
}
