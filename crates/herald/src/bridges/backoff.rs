//! What the broker bridges share about failing: how long to wait before the next attempt (a reconnection, or a
//! message herald could not publish yet), and how to say what failed without the broker's URL, which may hold a
//! password.

use std::time::Duration;

/// The first wait after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest wait: a broker back up is found again within this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Waits that double from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], back to the start after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The wait before this attempt; the one after it is twice as long, up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }

    /// It worked: the next failure waits the least again.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// Sleeps for [`Backoff::next_wait`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }
}

/// `text` (a client library's error) with `url` and its password cut out: the libraries may quote either.
pub fn redact(text: &str, url: &str) -> String {
    let mut text = text.replace(url, "<url>");
    if let Some(password) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        let decoded = percent_decode(&password);
        for secret in [password, decoded] {
            if !secret.is_empty() {
                text = text.replace(&secret, "<password>");
            }
        }
    }
    text
}

/// A URL's percent-encoded user or password part, decoded (`p%40ss` is `p@ss`).
pub fn percent_decode(part: &str) -> String {
    form_urlencoded::parse(format!("x={}", part.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_maximum_and_reset() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = (0..7)
            .map(|_| backoff.next_wait().as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), BACKOFF_MIN);
    }

    #[test]
    fn redaction_removes_the_url_and_the_password() {
        let url = "amqp://herald:s3cr%40t@rabbit:5672/%2f";
        let text =
            format!("cannot connect to {url}: login as herald with s3cr@t or s3cr%40t refused");
        assert_eq!(
            redact(&text, url),
            "cannot connect to <url>: login as herald with <password> or <password> refused"
        );
        assert_eq!(
            redact("IO error: connection refused", "mqtt://127.0.0.1"),
            "IO error: connection refused"
        );
        assert_eq!(percent_decode("a+b%2Fc"), "a+b/c");
    }
}
