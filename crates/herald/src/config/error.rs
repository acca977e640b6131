//! `ConfigError`: every way a configuration can be wrong, each a single line naming the file, variable or field.
//! No variant holds a secret, and messages taken from the YAML parser have their literal values removed.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why herald cannot run with the configuration it was given. `Display` is one line that names where the problem
/// is (file, environment variable, site, field) and what is wrong; secrets never appear in it.
///
/// IO errors are part of the line rather than a `source()`, so printing the error with its chain does not repeat
/// them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {error}", one_line(path.display()))]
    ReadFile { path: PathBuf, error: io::Error },
    /// The file is not valid YAML of the expected shape; `message` is the parser's, without literal values.
    #[error("{}: {message}", one_line(path.display()), message = one_line(message))]
    ParseFile { path: PathBuf, message: String },
    /// One site of a `sites.yml` is not of crossroads' (or herald's extended) shape.
    #[error(
        "{}: site '{site}': {message}",
        one_line(path.display()),
        site = one_line(site),
        message = one_line(message)
    )]
    ParseSite {
        path: PathBuf,
        site: String,
        message: String,
    },
    #[error(
        "{}: site '{site}' is already defined in {}",
        one_line(path.display()),
        one_line(first.display()),
        site = one_line(site)
    )]
    SiteDefinedTwice {
        path: PathBuf,
        site: String,
        first: PathBuf,
    },
    #[error(
        "{}: site '{site}': {first} and {second} are both set; use one",
        one_line(path.display()),
        site = one_line(site)
    )]
    SiteConflict {
        path: PathBuf,
        site: String,
        first: &'static str,
        second: &'static str,
    },
    #[error(
        "{}: site '{site}': {field} needs {needs}",
        one_line(path.display()),
        site = one_line(site)
    )]
    SiteFieldNeeds {
        path: PathBuf,
        site: String,
        field: &'static str,
        needs: &'static str,
    },
    /// An environment variable whose value does not parse. Only variables that never hold secrets use it.
    #[error("environment {var}: '{value}' is not {expected}", value = one_line(value))]
    EnvValue {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A crossroads `config.yml` without the section of the environment herald reads.
    #[error(
        "{}: no `{environment}` section (NODE_ENV picks the section, production by default); {}",
        one_line(path.display()),
        SectionList(found),
        environment = one_line(environment)
    )]
    CrossroadsNoSection {
        path: PathBuf,
        environment: String,
        found: Vec<String>,
    },
    /// A key of a crossroads `config.yml` whose value herald cannot use; the value (maybe a secret) is not shown.
    #[error("{}: {key}: expected {expected}", one_line(path.display()), key = one_line(key))]
    CrossroadsValue {
        path: PathBuf,
        key: String,
        expected: &'static str,
    },
    #[error(
        "environment AUTH_SCHEME: site '{site}' has no auth webhook; set AUTH_URL too",
        site = one_line(site)
    )]
    EnvSchemeWithoutWebhook { site: String },
    #[error("environment {set} is set without {missing}: set both, or neither")]
    EnvTlsHalf {
        set: &'static str,
        missing: &'static str,
    },

    #[error("site '{site}': the name must match [A-Za-z0-9_-]+", site = one_line(site))]
    InvalidSiteName { site: String },
    #[error("site '{site}' is defined more than once", site = one_line(site))]
    DuplicateSite { site: String },
    #[error("site '{site}': apiKey is missing", site = one_line(site))]
    MissingApiKey { site: String },
    #[error("site '{site}': an API key is empty", site = one_line(site))]
    EmptyApiKey { site: String },
    #[error(
        "site '{site}': {what} must be an http:// or https:// URL with a host",
        site = one_line(site)
    )]
    NotHttpUrl { site: String, what: &'static str },
    #[error("site '{site}': {field} is empty", site = one_line(site))]
    EmptySiteField { site: String, field: &'static str },
    #[error(
        "site '{site}': the auth scheme '{scheme}' must be one word",
        site = one_line(site),
        scheme = one_line(scheme)
    )]
    BadAuthScheme { site: String, scheme: String },
    #[error(
        "site '{site}': events.{event} {problem}",
        site = one_line(site),
        event = one_line(event)
    )]
    BadEventRoute {
        site: String,
        event: String,
        problem: String,
    },
    #[error("site '{site}': {field} must be greater than 0", site = one_line(site))]
    SiteZero { site: String, field: &'static str },
    #[error(
        "site '{site}': jwt needs exactly one of secret, public_key_pem, jwks_url ({found})",
        site = one_line(site)
    )]
    JwtKeyCount { site: String, found: KeysFound },
    #[error(
        "site '{site}': jwt algorithm '{algorithm}' is not supported (expected one of {})",
        crate::config::validate::JWT_ALGORITHMS.join(", "),
        site = one_line(site),
        algorithm = one_line(algorithm)
    )]
    JwtUnknownAlgorithm { site: String, algorithm: String },
    #[error(
        "site '{site}': jwt algorithm {algorithm} needs {needs}, not {given}",
        site = one_line(site),
        algorithm = one_line(algorithm)
    )]
    JwtKeyMismatch {
        site: String,
        algorithm: String,
        needs: &'static str,
        given: &'static str,
    },
    #[error(
        "site '{site}': jwt public_key_pem is not {expected} public key in PEM form",
        site = one_line(site)
    )]
    JwtBadPem {
        site: String,
        expected: &'static str,
    },

    #[error("bridges[{index}] ({label}): {problem}", label = one_line(label), problem = one_line(problem))]
    BadBridge {
        index: usize,
        label: String,
        problem: String,
    },
    #[error("{field} must be greater than 0")]
    ServerZero { field: &'static str },
    /// An optional limit set to 0, which might have been meant as "off".
    #[error("{field} must be greater than 0 (leave it out for no limit)")]
    ServerZeroLimit { field: &'static str },
    #[error("{field} is set without {needs}")]
    ServerNeeds {
        field: &'static str,
        needs: &'static str,
    },
    #[error("server.mailbox.store is redis but no redis_url (REDIS_URL) is set")]
    MailboxNeedsRedis,
    #[error("server.redis_url must start with redis:// or rediss://")]
    RedisUrl,
    #[error("server.cluster.node_ttl_ms ({value}) must be at least 1000 and under 20000")]
    NodeTtl { value: u64 },
    #[error("server.cluster.node_url (HERALD_NODE_URL) must start with http:// or https://")]
    NodeUrl,
    #[error("server.cluster.emitter_prefix must be non-empty and hold no '#'")]
    EmitterPrefix,
    #[error(
        "server.metrics_token (HERALD_METRICS_TOKEN) must hold no whitespace and not be empty"
    )]
    MetricsToken,
    #[error(
        "server.admin_token (HERALD_ADMIN_TOKEN) must be at least {min} characters, without whitespace",
        min = crate::config::MIN_ADMIN_TOKEN
    )]
    AdminToken,
    #[error("server.engine.path '{path}' must start and end with '/'", path = one_line(path))]
    EnginePath { path: String },
    #[error("{field} ({value} ms) must be {relation} {other} ({other_value} ms)")]
    ServerOrder {
        field: &'static str,
        value: u64,
        relation: &'static str,
        other: &'static str,
        other_value: u64,
    },
    #[error(
        "site '{site}' authenticates by forwarded cookie, so without an origin list any web page could connect \
         as its logged-in users: set server.engine.allowed_origins to the origins of your pages"
    )]
    CookieSiteNeedsOrigins { site: String },
    #[error(
        "site '{site}': the auth URL carries a user or password, which would be sent in a second Authorization \
         header beside the client's token; remove it from the URL (protect the webhook by network, or by a \
         secret in its path or query, which herald never logs)"
    )]
    AuthUrlCredentials { site: String },

    /// A validation error located in the source that defined the site or setting (a file, the environment).
    #[error("{origin}: {inner}", origin = one_line(origin))]
    In {
        origin: String,
        inner: Box<ConfigError>,
    },

    #[error("{}: cannot create the data directory: {error}", one_line(path.display()))]
    DataDir { path: PathBuf, error: io::Error },
    #[error("{}: cannot read the demo API key: {error}", one_line(path.display()))]
    DemoKeyRead { path: PathBuf, error: io::Error },
    #[error("{}: cannot write the demo API key: {error}", one_line(path.display()))]
    DemoKeyWrite { path: PathBuf, error: io::Error },
}

impl ConfigError {
    /// The site a validation error is about, if it is about one.
    pub(crate) fn site(&self) -> Option<&str> {
        match self {
            ConfigError::InvalidSiteName { site }
            | ConfigError::DuplicateSite { site }
            | ConfigError::MissingApiKey { site }
            | ConfigError::EmptyApiKey { site }
            | ConfigError::NotHttpUrl { site, .. }
            | ConfigError::EmptySiteField { site, .. }
            | ConfigError::BadAuthScheme { site, .. }
            | ConfigError::SiteZero { site, .. }
            | ConfigError::JwtKeyCount { site, .. }
            | ConfigError::JwtUnknownAlgorithm { site, .. }
            | ConfigError::JwtKeyMismatch { site, .. }
            | ConfigError::JwtBadPem { site, .. }
            | ConfigError::CookieSiteNeedsOrigins { site }
            | ConfigError::AuthUrlCredentials { site } => Some(site),
            _ => None,
        }
    }

    /// Whether a validation error is about a server-wide setting.
    pub(crate) fn is_server_setting(&self) -> bool {
        matches!(
            self,
            ConfigError::ServerZero { .. }
                | ConfigError::ServerZeroLimit { .. }
                | ConfigError::ServerNeeds { .. }
                | ConfigError::EnginePath { .. }
                | ConfigError::ServerOrder { .. }
        )
    }
}

/// Text from a file, the environment or the command line (a site name, a value, a path, a field name in a
/// parser's message) as an error shows it: control characters, line breaks among them, are escaped (`\n`,
/// `\u{1b}`), so the error stays one line.
pub(crate) fn one_line<T: fmt::Display>(text: T) -> OneLine<T> {
    OneLine(text)
}

pub(crate) struct OneLine<T>(T);

impl<T: fmt::Display> fmt::Display for OneLine<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Escaped<'a, 'b>(&'a mut fmt::Formatter<'b>);

        impl fmt::Write for Escaped<'_, '_> {
            fn write_str(&mut self, text: &str) -> fmt::Result {
                for c in text.chars() {
                    if c.is_control() {
                        write!(self.0, "{}", c.escape_default())?;
                    } else {
                        fmt::Write::write_char(self.0, c)?;
                    }
                }
                Ok(())
            }
        }

        fmt::Write::write_fmt(&mut Escaped(f), format_args!("{}", self.0))
    }
}

/// The sections a crossroads `config.yml` has, for [`ConfigError::CrossroadsNoSection`].
struct SectionList<'a>(&'a [String]);

impl fmt::Display for SectionList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((first, rest)) = self.0.split_first() else {
            return f.write_str("it has none");
        };
        write!(f, "its sections: {}", one_line(first))?;
        for name in rest {
            write!(f, ", {}", one_line(name))?;
        }
        Ok(())
    }
}

/// Which JWT keys a site sets, for [`ConfigError::JwtKeyCount`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysFound(pub Vec<&'static str>);

impl fmt::Display for KeysFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("none is set"),
            keys => write!(f, "{} are set", keys.join(" and ")),
        }
    }
}

/// A serde message without the literal values serde quotes after "invalid type:" and "invalid value:". A value
/// in the wrong place may be a secret (a numeric key where a map was expected), so none is repeated.
pub(crate) fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((before, kind, after)) = next_invalid(rest) {
        out.push_str(before);
        out.push_str(kind);
        // The unexpected value runs to ", expected"; keep only its kind ("string", "integer").
        let end = after.find(", expected").unwrap_or(after.len());
        let unexpected = &after[..end];
        let word_end = unexpected
            .find(['`', '"', '\''])
            .unwrap_or(unexpected.len());
        out.push_str(unexpected[..word_end].trim_end());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Splits at the next "invalid type: " or "invalid value: ": (text before, the marker, text after).
fn next_invalid(text: &str) -> Option<(&str, &str, &str)> {
    ["invalid type: ", "invalid value: "]
        .iter()
        .filter_map(|marker| text.find(marker).map(|at| (at, *marker)))
        .min_by_key(|(at, _)| *at)
        .map(|(at, marker)| (&text[..at], marker, &text[at + marker.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line() {
        let error = ConfigError::In {
            origin: "sites\n.yml".into(),
            inner: Box::new(ConfigError::BadAuthScheme {
                site: "a\nb".into(),
                scheme: "Bearer\r\n\u{1b}x".into(),
            }),
        };
        assert_eq!(
            error.to_string(),
            "sites\\n.yml: site 'a\\nb': the auth scheme 'Bearer\\r\\n\\u{1b}x' must be one word"
        );
        let error = ConfigError::ParseFile {
            path: "dir\n/herald.yml".into(),
            message: "unknown field `li\nsten`".into(),
        };
        assert_eq!(
            error.to_string(),
            "dir\\n/herald.yml: unknown field `li\\nsten`"
        );
        // Other text is shown as it is.
        let error = ConfigError::InvalidSiteName {
            site: "caf\u{e9} '\\".into(),
        };
        assert_eq!(
            error.to_string(),
            "site 'caf\u{e9} '\\': the name must match [A-Za-z0-9_-]+"
        );
    }

    #[test]
    fn redact_removes_literal_values() {
        let cases = [
            (
                "sites[0]: invalid type: string \"s3cret\", expected a map at line 3 column 5",
                "sites[0]: invalid type: string, expected a map at line 3 column 5",
            ),
            (
                "invalid type: integer `12345`, expected a boolean",
                "invalid type: integer, expected a boolean",
            ),
            (
                "invalid value: floating point `1.5`, expected u64; invalid type: boolean `true`, expected x",
                "invalid value: floating point, expected u64; invalid type: boolean, expected x",
            ),
            (
                "unknown field `listn`, expected one of `listen`",
                "unknown field `listn`, expected one of `listen`",
            ),
            (
                "invalid type: map, expected a string",
                "invalid type: map, expected a string",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input), expected, "{input}");
        }
    }
}
