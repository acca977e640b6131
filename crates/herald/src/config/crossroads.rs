//! The sites file in crossroads' format: a map `<site>: {authUrl, authScheme, apiKey, userRoomPrefix,
//! updateUserUrl, publicChannel}`, plus herald's extras (`apiKeys`, `deviceTtl`, `maxConnections`, `auth`).
//!
//! ```yaml
//! shop:
//!   authUrl: https://shop.example/socketrooms   # a webhook site; authScheme defaults to Bearer
//!   authScheme: Bearer
//!   apiKey: 54321                               # a string or a number, as crossroads allowed
//!   userRoomPrefix: user_
//!   updateUserUrl: https://shop.example/users/:id
//! news:
//!   apiKeys: [key-1, key-2]                     # several keys, for rotation
//!   publicChannel: headlines                    # no authUrl and no auth: a public site
//!   deviceTtl: 3600                             # seconds
//!   maxConnections: 5000
//! app:
//!   apiKey: k
//!   auth: {kind: jwt, algorithm: HS256, secret: s}  # herald's AuthConfig shape
//! ```

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::auth::AuthConfig;
use crate::config::env::webhook;
use crate::config::error::redact;
use crate::config::{ConfigError, SiteConfig};
use crate::secret::Secret;

/// One site as `sites.yml` writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CrossroadsSite {
    auth_url: Option<String>,
    auth_scheme: Option<String>,
    api_key: Option<KeyText>,
    api_keys: Option<Vec<KeyText>>,
    user_room_prefix: Option<String>,
    update_user_url: Option<String>,
    public_channel: Option<String>,
    device_ttl: Option<u64>,
    max_connections: Option<usize>,
    auth: Option<AuthConfig>,
    /// herald's own: client event routes, per-socket hooks and their signing secret.
    #[serde(default)]
    events: std::collections::BTreeMap<String, crate::config::EventRoute>,
    #[serde(default)]
    hooks: crate::config::Hooks,
    #[serde(alias = "signing_secret")]
    signing_secret: Option<KeyText>,
}

/// An API key written as a string or, as crossroads' sample does (`apiKey: 54321`), a number.
#[derive(Debug)]
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = KeyText;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an API key (a string or a whole number)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
        Ok(KeyText(v.to_owned()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }
}

/// Parses the text of a sites file into sites, in the file's order; `path` only names it in errors. A site
/// without `deviceTtl` keeps mailboxes for `default_ttl` seconds when given (crossroads' `config.yml` sets it for
/// every site), else for `SiteConfig`'s default.
pub(crate) fn parse_sites(
    path: &Path,
    text: &str,
    default_ttl: Option<u64>,
) -> Result<Vec<SiteConfig>, ConfigError> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        message: redact(&e.to_string()),
    })?;
    sites_from_value(path, value, default_ttl)
}

/// [`parse_sites`] over YAML already read: a sites file, or the `sites:` of a crossroads `config.yml` section.
pub(crate) fn sites_from_value(
    path: &Path,
    value: Value,
    default_ttl: Option<u64>,
) -> Result<Vec<SiteConfig>, ConfigError> {
    let parse_error = |message: String| ConfigError::ParseFile {
        path: path.to_owned(),
        message,
    };
    let mapping = match value {
        // An empty file (or one with only comments) defines no site.
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(mapping) => mapping,
        _ => {
            return Err(parse_error(
                "expected a map of site name to site settings".into(),
            ))
        }
    };
    mapping
        .into_iter()
        .map(|(name, body)| {
            let name = site_name(&name).ok_or_else(|| {
                parse_error("a site name must be a string (a key of the top-level map)".into())
            })?;
            to_site(path, name, body, default_ttl)
        })
        .collect()
}

/// A site name from a YAML key; numbers are accepted because crossroads' YAML loader accepted them.
fn site_name(key: &Value) -> Option<String> {
    match key {
        Value::String(name) => Some(name.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn to_site(
    path: &Path,
    name: String,
    body: Value,
    default_ttl: Option<u64>,
) -> Result<SiteConfig, ConfigError> {
    let body = if body.is_null() {
        Value::Mapping(Default::default())
    } else {
        body
    };
    let parsed: CrossroadsSite =
        serde_yaml_ng::from_value(body).map_err(|e| ConfigError::ParseSite {
            path: path.to_owned(),
            site: name.clone(),
            message: redact(&e.to_string()),
        })?;
    parsed.into_site(path, name, default_ttl)
}

impl CrossroadsSite {
    fn into_site(
        self,
        path: &Path,
        name: String,
        default_ttl: Option<u64>,
    ) -> Result<SiteConfig, ConfigError> {
        let auth = self.auth_config(path, &name)?;
        let mut site = SiteConfig::new(name);
        site.auth = auth;
        site.api_keys = self
            .api_key
            .into_iter()
            .chain(self.api_keys.into_iter().flatten())
            .map(|KeyText(key)| Secret::new(key))
            .collect();
        site.user_room_prefix = self.user_room_prefix;
        site.update_user_url = self.update_user_url;
        site.public_channel = self.public_channel;
        if let Some(ttl) = self.device_ttl.or(default_ttl) {
            site.device_ttl_secs = ttl;
        }
        site.max_connections = self.max_connections;
        site.events = self.events;
        site.hooks = self.hooks;
        site.signing_secret = self.signing_secret.map(|KeyText(key)| Secret::new(key));
        Ok(site)
    }

    /// `authUrl` makes a webhook site, `auth` any kind; with neither the site is public.
    fn auth_config(&self, path: &Path, name: &str) -> Result<AuthConfig, ConfigError> {
        match (&self.auth_url, &self.auth_scheme, &self.auth) {
            (Some(_), _, Some(_)) => Err(ConfigError::SiteConflict {
                path: path.to_owned(),
                site: name.to_owned(),
                first: "authUrl",
                second: "auth",
            }),
            (None, Some(_), _) => Err(ConfigError::SiteFieldNeeds {
                path: path.to_owned(),
                site: name.to_owned(),
                field: "authScheme",
                needs: "authUrl",
            }),
            (Some(url), scheme, None) => {
                Ok(AuthConfig::Webhook(webhook(url.clone(), scheme.clone())))
            }
            (None, None, auth) => Ok(auth.clone().unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::{JwtConfig, WebhookConfig};

    fn parse(text: &str) -> Result<Vec<SiteConfig>, ConfigError> {
        parse_sites(Path::new("sites.yml"), text, None)
    }

    #[test]
    fn crossroads_sample() {
        let sites = parse(
            "newsite:\n  authUrl: http://newsite.com/socketrooms\n  authScheme: Bearer\n  apiKey: 54321\n  \
             userRoomPrefix: user_\n  updateUserUrl: http://newsite.com/users/:id\n",
        )
        .unwrap();
        let mut expected = SiteConfig::new("newsite".into());
        expected.auth = AuthConfig::Webhook(WebhookConfig {
            url: "http://newsite.com/socketrooms".into(),
            scheme: "Bearer".into(),
            forward_cookie: false,
            timeout_ms: 5000,
        });
        expected.api_keys = vec![Secret::new("54321")];
        expected.user_room_prefix = Some("user_".into());
        expected.update_user_url = Some("http://newsite.com/users/:id".into());
        assert_eq!(sites, vec![expected]);
    }

    #[test]
    fn herald_extras_and_order() {
        let sites = parse(
            "zeta:\n  apiKeys: [k1, 2]\n  apiKey: k0\n  publicChannel: news\n  deviceTtl: 60\n  maxConnections: 10\n\
             alpha:\n  apiKey: k\n  auth: {kind: jwt, algorithm: HS256, secret: s3}\n\
             beta:\n  apiKey: k\n  authUrl: https://b.test/rooms\n",
        )
        .unwrap();
        let names: Vec<_> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha", "beta"]);
        let zeta = &sites[0];
        assert_eq!(
            zeta.api_keys,
            vec![Secret::new("k0"), Secret::new("k1"), Secret::new("2")]
        );
        assert_eq!(zeta.auth, AuthConfig::Public);
        assert_eq!(zeta.public_channel.as_deref(), Some("news"));
        assert_eq!((zeta.device_ttl_secs, zeta.max_connections), (60, Some(10)));
        let AuthConfig::Jwt(JwtConfig {
            algorithm, secret, ..
        }) = &sites[1].auth
        else {
            panic!("alpha is a JWT site: {:?}", sites[1].auth)
        };
        assert_eq!(
            (algorithm.as_str(), secret.as_ref().map(Secret::expose)),
            ("HS256", Some("s3"))
        );
        let AuthConfig::Webhook(hook) = &sites[2].auth else {
            panic!("beta is a webhook site")
        };
        assert_eq!(hook.scheme, "Bearer");
        assert_eq!(sites[2].device_ttl_secs, 86_400);
    }

    #[test]
    fn empty_file_and_empty_site() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("# nothing yet\n").unwrap(), vec![]);
        assert_eq!(
            parse("bare:\n").unwrap(),
            vec![SiteConfig::new("bare".into())]
        );
    }

    #[test]
    fn errors_name_the_file_and_site() {
        let cases = [
            (
                "shop:\n  authurl: http://x/\n",
                "sites.yml: site 'shop': unknown field `authurl`, expected one of `authUrl`, `authScheme`, \
                 `apiKey`, `apiKeys`, `userRoomPrefix`, `updateUserUrl`, `publicChannel`, `deviceTtl`, \
                 `maxConnections`, `auth`, `events`, `hooks`, `signingSecret`, `signing_secret`",
            ),
            (
                "shop:\n  authUrl: http://x/\n  auth: {kind: public}\n",
                "sites.yml: site 'shop': authUrl and auth are both set; use one",
            ),
            (
                "shop:\n  authScheme: Token\n",
                "sites.yml: site 'shop': authScheme needs authUrl",
            ),
            (
                "shop:\n  apiKey: {nested: s3cret}\n",
                "sites.yml: site 'shop': invalid type: map, expected an API key (a string or a whole number)",
            ),
            (
                "shop:\n  apiKey: 1.5\n",
                "sites.yml: site 'shop': invalid type: floating point, expected an API key (a string or a \
                 whole number)",
            ),
            (
                "shop:\n  deviceTtl: s3cret\n",
                "sites.yml: site 'shop': invalid type: string, expected u64",
            ),
            (
                "- shop\n",
                "sites.yml: expected a map of site name to site settings",
            ),
            (
                "[a]: {}\n",
                "sites.yml: a site name must be a string (a key of the top-level map)",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert_eq!(err, expected, "{text}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn a_site_named_twice_is_an_error() {
        let err = parse("shop:\n  apiKey: a\nshop:\n  apiKey: b\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "sites.yml: duplicate entry with key \"shop\"");
    }

    #[test]
    fn yaml_syntax_errors_name_the_file() {
        let err = parse("shop:\n  apiKey: [unclosed\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sites.yml: "), "{err}");
        assert!(err.contains("line"), "{err}");
    }
}
