//! Entry points for the fuzz targets in `crates/herald/fuzz`: the parsers that read what other parties hand herald
//! (an auth webhook's answer, a client's JWT, a JWKS document, the configuration files), each reached without
//! network or disk. Not an API: hidden from the docs, and changed along with the targets.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::FutureExt as _;

pub use jsonwebtoken::AlgorithmFamily;

use crate::auth::{jwt, AuthRequest, JwtConfig};
pub use crate::auth::{AuthError, Identity};
use crate::config::{Config, ConfigError, Overrides, SiteConfig, Sources};
use crate::secret::Secret;

/// The auth webhook's answer parser, on a 200 answer's body.
pub fn webhook_answer(body: &[u8]) -> Result<Identity, AuthError> {
    crate::auth::webhook::parse_answer(body)
}

/// An event route's answer parser (`{reply, publish, join, leave}`), on a 2xx answer's body.
pub fn event_answer(body: &[u8]) -> Result<crate::events::answer::RouteAnswer, String> {
    crate::events::answer::parse(body)
}

/// What the gateway lets a client have once its site's auth rule has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub user: Option<String>,
    pub user_room: Option<String>,
    pub rooms: Vec<String>,
}

/// The gateway's rules over an auth rule's `identity`, for a site with this user-room prefix and public channel.
/// The error is the refusal the client would get.
pub fn admit(
    identity: Identity,
    user_room_prefix: Option<&str>,
    public_channel: Option<&str>,
) -> Result<Admitted, String> {
    let mut site = SiteConfig::new("fuzz".into());
    site.user_room_prefix = user_room_prefix.map(str::to_owned);
    site.public_channel = public_channel.map(str::to_owned);
    crate::gateway::admit(&site, identity)
        .map(|admission| Admitted {
            user: admission.user,
            user_room: admission.user_room,
            rooms: admission.rooms,
        })
        .map_err(|refusal| refusal.0)
}

/// A JWT site verifying with an HS256 secret, as a site configures it.
#[derive(Debug)]
pub struct Hs256Site(jwt::JwtVerifier);

impl Hs256Site {
    pub fn new(secret: &str) -> Result<Hs256Site, AuthError> {
        let config = JwtConfig {
            algorithm: "HS256".into(),
            secret: Some(Secret::new(secret)),
            public_key_pem: None,
            jwks_url: None,
            jwks_cache_secs: 300,
            issuer: None,
            audience: None,
        };
        let http = crate::tls::Trust::system()
            .http_client()
            .build()
            .map_err(|e| AuthError::Config(e.to_string()))?;
        jwt::JwtVerifier::new(&config, http).map(Hs256Site)
    }

    /// Verifies `token` as a client presents it, through the path every connect takes. A secret answers without
    /// waiting, so this is `Some`; `None` would mean verification waited for something.
    pub fn verify(&self, token: &str) -> Option<Result<Identity, AuthError>> {
        let request = AuthRequest {
            token: Some(token.to_owned()),
            ..AuthRequest::default()
        };
        self.0.authenticate(&request).now_or_never()
    }
}

/// The keys a JWKS document gives a site verifying with `algorithm` (a name from
/// [`JWT_ALGORITHMS`](crate::config::JWT_ALGORITHMS)): each key's `kid` and family, the keys with a `kid` first.
/// The error is the reason herald would log.
pub fn jwks(
    body: &[u8],
    algorithm: &str,
) -> Result<Vec<(Option<String>, AlgorithmFamily)>, String> {
    let algorithm = jwt::parse_algorithm(algorithm).map_err(|e| e.to_string())?;
    let (keys, anonymous) = jwt::parse_jwks(body, algorithm).map_err(str::to_owned)?;
    Ok(keys
        .into_iter()
        .map(|(kid, key)| (Some(kid), key.family()))
        .chain(anonymous.into_iter().map(|key| (None, key.family())))
        .collect())
}

/// [`load`](crate::config::load) with a server file (`herald.yml`), a crossroads sites file (`sites.yml`) and
/// environment variables given as text; a file that is `None` is not given. Validated like every load.
pub fn load_config(
    server_file: Option<&str>,
    sites_file: Option<&str>,
    env: BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    const SERVER: &str = "herald.yml";
    const SITES: &str = "sites.yml";
    let sources = Sources {
        server_file: server_file.map(|_| SERVER.into()),
        sites_file: sites_file.map(|_| SITES.into()),
        env,
        flags: Overrides::default(),
        ..Sources::default()
    };
    crate::config::load_from(&sources, |path: &Path| {
        let text = if path == Path::new(SERVER) {
            server_file
        } else {
            sites_file
        };
        Ok(text.unwrap_or_default().to_owned())
    })
    .map(|loaded| loaded.config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn webhook_answers_and_admission() {
        let identity = webhook_answer(br#"{"user":7,"rooms":["user_7","news"]}"#).unwrap();
        let admitted = admit(identity, Some("user_"), Some("public")).unwrap();
        assert_eq!(
            admitted,
            Admitted {
                user: Some("7".into()),
                user_room: Some("user_7".into()),
                rooms: vec!["user_7".into(), "news".into(), "public".into()],
            }
        );
        let identity = webhook_answer(br#"["news"]"#).unwrap();
        assert!(admit(identity, Some("user_"), None).is_err());
        let identity = webhook_answer(b"[\"a\\u0000\"]").unwrap();
        assert!(admit(identity, None, None).is_err(), "a control character");
    }

    #[test]
    fn hs256_tokens_verify_without_waiting() {
        let site = Hs256Site::new("fuzz secret").unwrap();
        let config = JwtConfig {
            algorithm: "HS256".into(),
            secret: Some(Secret::new("fuzz secret")),
            public_key_pem: None,
            jwks_url: None,
            jwks_cache_secs: 300,
            issuer: None,
            audience: None,
        };
        let rooms = ["news".to_owned()];
        let token = jwt::mint(&config, "u1", &rooms, std::time::Duration::from_secs(60)).unwrap();
        let identity = site.verify(&token).unwrap().unwrap();
        assert_eq!(
            (identity.user.as_deref(), &identity.rooms[..]),
            (Some("u1"), &rooms[..])
        );
        assert_eq!(site.verify("a.b.c"), Some(Err(AuthError::InvalidToken)));
    }

    #[test]
    fn jwks_documents() {
        assert_eq!(jwks(br#"{"keys":[]}"#, "RS256"), Ok(vec![]));
        assert!(jwks(b"[]", "RS256").is_err());
        assert!(jwks(br#"{"keys":[]}"#, "none").is_err());
        // An HMAC key never becomes a verifier, even for an HS site.
        let oct = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        assert_eq!(jwks(oct, "HS256"), Ok(vec![]));
        assert_eq!(jwks(oct, "RS256"), Ok(vec![]));
    }

    #[test]
    fn configuration_from_text() {
        let config = load_config(
            Some("sites: [{name: shop, api_keys: [k]}]\n"),
            Some("two:\n  apiKey: k\n"),
            BTreeMap::from([("PORT".to_owned(), "4000".to_owned())]),
        )
        .unwrap();
        let names: Vec<_> = config.sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["shop", "two"]);
        assert_eq!(config.server.listen.port(), 4000);
        assert_eq!(
            load_config(None, None, BTreeMap::new()).unwrap(),
            Config::default()
        );
        let err = load_config(
            None,
            Some("shop:\n  apiKey: k\n  authScheme: T\n"),
            BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sites.yml: site 'shop': authScheme needs authUrl"
        );
    }
}
