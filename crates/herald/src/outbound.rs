//! Calls herald makes to backends on a client's behalf (event routes, socket hooks, `updateUserUrl`): the
//! `X-Herald-Signature` a backend checks them by, and delivery retried with backoff for calls nobody waits on.

use std::time::Duration;

use hmac::{KeyInit, Mac};

use crate::secret::Secret;

/// The header that carries a call's signature.
pub const SIGNATURE_HEADER: &str = "x-herald-signature";

/// Attempts per retried call: the first and four retries, 0.5 s to 4 s apart.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// `sha256=<hex HMAC-SHA256 of body>` under `secret`, as GitHub signs its webhooks.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut text = String::with_capacity(7 + 2 * digest.len());
    text.push_str("sha256=");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Sends the request `build` makes until it succeeds, is refused for good (a 4xx other than 408 and 429) or
/// `ATTEMPTS` have failed, backing off between attempts. `what` and `site` name the call in the log; each
/// attempt's time, to its answer's head or its failure, goes to `duration`.
pub async fn with_retry(
    site: &str,
    what: &'static str,
    duration: &metrics::Histogram,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> bool {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let started = std::time::Instant::now();
        let sent = build().send().await;
        duration.record(started.elapsed());
        match sent {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) if !retryable(response.status()) => {
                tracing::warn!(site, status = %response.status(), what, "a backend refused a call");
                return false;
            }
            Ok(response) => {
                tracing::info!(site, status = %response.status(), attempt, what, "a backend call failed; retrying");
            }
            Err(e) => {
                let e = e.without_url();
                match crate::tls::refused_certificate(&e) {
                    Some(reason) => tracing::warn!(site, reason, attempt, what,
                        "a backend's TLS certificate is not trusted (a private CA goes in server.ca_file); retrying"),
                    None => tracing::info!(site, error = %e, attempt, what, "a backend is unreachable; retrying"),
                }
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::warn!(site, what, "gave up on a backend call");
    false
}

fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_hmac_sha256_in_hex() {
        // echo -n 'The quick brown fox jumps over the lazy dog' | openssl dgst -sha256 -hmac key
        assert_eq!(
            signature(
                &Secret::new("key"),
                b"The quick brown fox jumps over the lazy dog"
            ),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
