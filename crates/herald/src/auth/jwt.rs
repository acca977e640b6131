//! JWT authentication: verifying a client's token against a site's secret, public key or JWKS, and minting
//! tokens for `herald token`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::{AuthError, AuthRequest, Identity, JwtConfig};

/// Seconds of clock difference tolerated between the token's issuer and herald when checking `exp`.
const LEEWAY_SECS: u64 = 60;

/// Tokens longer than this are refused before any parsing: a real token is well under 8 KiB, and the bound keeps
/// a hostile client from making herald decode megabytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The least time between two JWKS fetches, so tokens with made-up `kid`s cannot turn herald into a request
/// amplifier against the key server.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);

/// How long one JWKS fetch may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS document read; key sets are a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The claims herald reads. `exp` (and `iss`, `aud` when configured) are checked by `jsonwebtoken`.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// The claims `mint` writes.
#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    rooms: &'a [String],
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// The part of a token's header read before verification, to refuse a wrong `alg` by name (including `none`,
/// which `jsonwebtoken` cannot even represent) and to pick a JWKS key.
#[derive(Debug, Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// One site's JWT rule, ready to verify tokens.
#[derive(Debug)]
pub(crate) struct JwtVerifier {
    algorithm: Algorithm,
    /// The configured name, compared exactly with the token header's `alg`.
    algorithm_name: String,
    keys: Keys,
    validation: Validation,
}

#[derive(Debug)]
enum Keys {
    /// A secret or PEM public key given in the config.
    Fixed(DecodingKey),
    /// Boxed: the cache is large next to a fixed key, and a site has one rule for its lifetime.
    Jwks(Box<Jwks>),
}

impl JwtVerifier {
    pub(crate) fn new(config: &JwtConfig, http: reqwest::Client) -> Result<JwtVerifier, AuthError> {
        let algorithm = parse_algorithm(&config.algorithm)?;
        let family = algorithm.family();
        let keys = match family {
            AlgorithmFamily::Hmac => {
                if config.public_key_pem.is_some() || config.jwks_url.is_some() {
                    return Err(AuthError::Config(format!(
                        "{} uses `secret`; `public_key_pem` and `jwks_url` are for RS, PS and ES algorithms",
                        config.algorithm
                    )));
                }
                match &config.secret {
                    Some(secret) if !secret.expose().is_empty() => Keys::Fixed(
                        DecodingKey::from_secret(secret.expose().as_bytes()).map_err(|e| {
                            AuthError::Config(format!(
                                "{}: the secret is not usable: {e}",
                                config.algorithm
                            ))
                        })?,
                    ),
                    _ => {
                        return Err(AuthError::Config(format!(
                            "{} needs a non-empty `secret`",
                            config.algorithm
                        )))
                    }
                }
            }
            _ => {
                if config.secret.is_some() {
                    return Err(AuthError::Config(format!(
                        "{} verifies with a public key: use `public_key_pem` or `jwks_url`, not `secret`",
                        config.algorithm
                    )));
                }
                match (&config.public_key_pem, &config.jwks_url) {
                    (Some(pem), None) => Keys::Fixed(public_key(pem, family, &config.algorithm)?),
                    (None, Some(url)) => {
                        Keys::Jwks(Box::new(Jwks::new(url, config, algorithm, http)?))
                    }
                    (Some(_), Some(_)) => {
                        return Err(AuthError::Config(
                            "give either `public_key_pem` or `jwks_url`, not both".into(),
                        ))
                    }
                    (None, None) => {
                        return Err(AuthError::Config(format!(
                            "{} needs `public_key_pem` or `jwks_url`",
                            config.algorithm
                        )))
                    }
                }
            }
        };
        Ok(JwtVerifier {
            algorithm,
            algorithm_name: config.algorithm.clone(),
            keys,
            validation: validation(config, algorithm),
        })
    }

    pub(crate) async fn authenticate(&self, request: &AuthRequest) -> Result<Identity, AuthError> {
        let token = match request.token.as_deref() {
            Some(token) if !token.is_empty() => token,
            _ => return Err(AuthError::MissingToken),
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken);
        }
        let header = raw_header(token)?;
        // Exact equality, before any key is chosen: this is what refuses `none`, and an HS token presented to
        // an RS or ES site (the public key must never be used as an HMAC secret).
        if header.alg != self.algorithm_name {
            return Err(AuthError::WrongAlgorithm);
        }
        let claims = match &self.keys {
            Keys::Fixed(key) => self.verify(token, key)?,
            Keys::Jwks(jwks) => {
                let key = jwks.key(header.kid.as_deref()).await?;
                self.verify(token, &key)?
            }
        };
        Ok(Identity {
            user: claims.sub.filter(|sub| !sub.is_empty()),
            rooms: claims.rooms.unwrap_or_default(),
        })
    }

    fn verify(&self, token: &str, key: &DecodingKey) -> Result<Claims, AuthError> {
        // The key's family was fixed when it was loaded; checking it again here keeps a JWKS `oct` key (or any
        // key of another family) from ever verifying a token, whatever the header says.
        if key.family() != self.algorithm.family() {
            return Err(AuthError::InvalidToken);
        }
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
                _ => AuthError::InvalidToken,
            })
    }
}

/// The algorithms a site may configure. EdDSA is left out until a site needs it.
pub(crate) fn parse_algorithm(name: &str) -> Result<Algorithm, AuthError> {
    let algorithm = match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        other => {
            return Err(AuthError::Config(format!(
                "unsupported JWT algorithm '{other}' (use HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, \
                 PS512, ES256 or ES384)"
            )))
        }
    };
    Ok(algorithm)
}

fn public_key(
    pem: &str,
    family: AlgorithmFamily,
    algorithm: &str,
) -> Result<DecodingKey, AuthError> {
    let key = match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem.as_bytes()),
        _ => {
            return Err(AuthError::Config(format!(
                "{algorithm} does not use a public key"
            )))
        }
    };
    key.map_err(|e| {
        AuthError::Config(format!(
            "public_key_pem is not a PEM public key for {algorithm}: {e}"
        ))
    })
}

fn validation(config: &JwtConfig, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &config.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Without a configured audience a token's `aud` is not herald's concern; `jsonwebtoken` would otherwise
        // refuse every token that carries one.
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn raw_header(token: &str) -> Result<RawHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::InvalidToken);
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::InvalidToken)?;
    serde_json::from_slice(&json).map_err(|_| AuthError::InvalidToken)
}

/// A JWKS URL and the keys last fetched from it.
///
/// The cached keys sit under a `parking_lot::Mutex` that is only held to read or replace the map, never across
/// the fetch. Fetches themselves are serialized by an async `fetching` lock, so a burst of connects after the
/// cache expires costs one request to the key server, not one per client.
struct Jwks {
    url: Url,
    host: String,
    algorithm: Algorithm,
    ttl: Duration,
    http: reqwest::Client,
    cache: parking_lot::Mutex<JwksCache>,
    fetching: tokio::sync::Mutex<()>,
}

/// Shows the host only, like the logs: the URL's path or query may carry a key.
impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("host", &self.host)
            .field("algorithm", &self.algorithm)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct JwksCache {
    keys: HashMap<String, Arc<DecodingKey>>,
    /// Keys without a `kid`, usable only by tokens without one, and only when there is exactly one.
    anonymous: Vec<Arc<DecodingKey>>,
    /// When the keys above were fetched successfully.
    fetched: Option<Instant>,
    /// When a fetch was last tried, successful or not.
    attempted: Option<Instant>,
}

impl JwksCache {
    fn find(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        match kid {
            Some(kid) => self.keys.get(kid).cloned(),
            None if self.anonymous.len() == 1 && self.keys.is_empty() => {
                self.anonymous.first().cloned()
            }
            None if self.anonymous.is_empty() && self.keys.len() == 1 => {
                self.keys.values().next().cloned()
            }
            None => None,
        }
    }

    fn fresh(&self, ttl: Duration, now: Instant) -> bool {
        self.fetched.is_some_and(|at| now.duration_since(at) < ttl)
    }

    fn may_fetch(&self, now: Instant) -> bool {
        self.attempted
            .is_none_or(|at| now.duration_since(at) >= JWKS_MIN_REFETCH)
    }
}

impl Jwks {
    fn new(
        url: &str,
        config: &JwtConfig,
        algorithm: Algorithm,
        http: reqwest::Client,
    ) -> Result<Jwks, AuthError> {
        let url = Url::parse(url)
            .map_err(|e| AuthError::Config(format!("jwks_url is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AuthError::Config(format!(
                "jwks_url must be http or https, not '{}'",
                url.scheme()
            )));
        }
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(AuthError::Config("jwks_url has no host".into())),
        };
        Ok(Jwks {
            url,
            host,
            algorithm,
            ttl: Duration::from_secs(config.jwks_cache_secs),
            http,
            cache: parking_lot::Mutex::new(JwksCache::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The key for `kid`: from the cache while it is fresh; otherwise, or when the kid is unknown (the issuer
    /// may have rotated keys), after one fetch, at most one per [`JWKS_MIN_REFETCH`].
    async fn key(&self, kid: Option<&str>) -> Result<Arc<DecodingKey>, AuthError> {
        if let Some(key) = self.cached(kid, Instant::now()) {
            return Ok(key);
        }
        let _fetching = self.fetching.lock().await;
        // Another task may have fetched while this one waited for the lock.
        let now = Instant::now();
        if let Some(key) = self.cached(kid, now) {
            return Ok(key);
        }
        let may_fetch = self.cache.lock().may_fetch(now);
        if may_fetch {
            self.cache.lock().attempted = Some(now);
            match self.fetch().await {
                Ok((keys, anonymous)) => {
                    let mut cache = self.cache.lock();
                    cache.keys = keys;
                    cache.anonymous = anonymous;
                    cache.fetched = Some(Instant::now());
                }
                Err(reason) => {
                    tracing::warn!(host = %self.host, reason, "JWKS fetch failed; keeping the keys fetched before");
                }
            }
        }
        let cache = self.cache.lock();
        match cache.find(kid) {
            Some(key) => Ok(key),
            // No keys at all means the key server was never reached: that is herald's problem, not the token's.
            None if cache.fetched.is_none() => Err(AuthError::Unavailable),
            None => Err(AuthError::InvalidToken),
        }
    }

    /// The key for `kid` if the cache is fresh and holds it. A stale cache still answers while refetching is
    /// not allowed yet, so a key server outage does not refuse tokens signed with keys herald already knows.
    fn cached(&self, kid: Option<&str>, now: Instant) -> Option<Arc<DecodingKey>> {
        let cache = self.cache.lock();
        let key = cache.find(kid)?;
        (cache.fresh(self.ttl, now) || !cache.may_fetch(now)).then_some(key)
    }

    /// Fetches the key set and keeps the keys usable with the site's algorithm. The error is a reason for the
    /// log, without the URL's path or query.
    async fn fetch(&self) -> Result<KeySet, &'static str> {
        let body = tokio::time::timeout(JWKS_TIMEOUT, async {
            let mut response = self.http.get(self.url.clone()).send().await.map_err(|e| {
                if crate::tls::refused_certificate(&e).is_some() {
                    "the key server's TLS certificate is not trusted (a private CA goes in server.ca_file)"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                }
            })?;
            if !response.status().is_success() {
                return Err("the key server answered an error status");
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|_| "reading the answer failed")?
            {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err("the key set is too large");
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
        .await
        .map_err(|_| "timed out")??;
        parse_jwks(&body, self.algorithm)
    }
}

/// The keys of a JWK set: by `kid`, and those without one.
pub(crate) type KeySet = (HashMap<String, Arc<DecodingKey>>, Vec<Arc<DecodingKey>>);

/// Parses a JWKS document and keeps the keys usable with `algorithm`: signature keys of its family, whose `alg`
/// (when given) is `algorithm`. Keys that do not load are skipped. The error is a reason for the log.
pub(crate) fn parse_jwks(body: &[u8], algorithm: Algorithm) -> Result<KeySet, &'static str> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|_| "the answer is not a JWK set")?;
    let mut keys = HashMap::new();
    let mut anonymous = Vec::new();
    for jwk in &set.keys {
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|usage| *usage != PublicKeyUse::Signature)
        {
            continue;
        }
        if jwk
            .common
            .key_algorithm
            .is_some_and(|alg| !key_algorithm_is(alg, algorithm))
        {
            continue;
        }
        // Only key types of the configured family are loaded: an `oct` (HMAC) key in the set must never
        // become a verifier.
        let usable = matches!(
            (&jwk.algorithm, algorithm.family()),
            (AlgorithmParameters::RSA(_), AlgorithmFamily::Rsa)
                | (AlgorithmParameters::EllipticCurve(_), AlgorithmFamily::Ec)
        );
        if !usable {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match &jwk.common.key_id {
            Some(kid) => {
                keys.insert(kid.clone(), Arc::new(key));
            }
            None => anonymous.push(Arc::new(key)),
        }
    }
    Ok((keys, anonymous))
}

fn key_algorithm_is(key: KeyAlgorithm, algorithm: Algorithm) -> bool {
    matches!(
        (key, algorithm),
        (KeyAlgorithm::RS256, Algorithm::RS256)
            | (KeyAlgorithm::RS384, Algorithm::RS384)
            | (KeyAlgorithm::RS512, Algorithm::RS512)
            | (KeyAlgorithm::PS256, Algorithm::PS256)
            | (KeyAlgorithm::PS384, Algorithm::PS384)
            | (KeyAlgorithm::PS512, Algorithm::PS512)
            | (KeyAlgorithm::ES256, Algorithm::ES256)
            | (KeyAlgorithm::ES384, Algorithm::ES384)
    )
}

/// Mints a token for an HS site, signed with its secret: `sub` = `user`, `rooms`, `iat`, `exp` = now + `ttl`,
/// and `iss`/`aud` when the site checks them. RS, PS and ES sites need the private key: see [`mint_signed`].
pub fn mint(
    config: &JwtConfig,
    user: &str,
    rooms: &[String],
    ttl: Duration,
) -> Result<String, AuthError> {
    let algorithm = parse_algorithm(&config.algorithm)?;
    if algorithm.family() != AlgorithmFamily::Hmac {
        return Err(AuthError::Config(format!(
            "{} tokens are signed with a private key, which herald's config does not hold; pass one to sign",
            config.algorithm
        )));
    }
    let secret = match &config.secret {
        Some(secret) if !secret.expose().is_empty() => secret,
        _ => {
            return Err(AuthError::Config(format!(
                "{} needs a non-empty `secret`",
                config.algorithm
            )))
        }
    };
    let key = EncodingKey::from_secret(secret.expose().as_bytes()).map_err(|e| {
        AuthError::Config(format!(
            "{}: the secret is not usable: {e}",
            config.algorithm
        ))
    })?;
    encode(config, algorithm, None, &key, user, rooms, ttl)
}

/// Mints a token for an RS, PS or ES site with a PEM private key (PKCS#8, or PKCS#1 for RSA), with `kid` in
/// the header when given so a JWKS site can pick the key. HS sites use [`mint`].
pub fn mint_signed(
    config: &JwtConfig,
    private_key_pem: &str,
    kid: Option<&str>,
    user: &str,
    rooms: &[String],
    ttl: Duration,
) -> Result<String, AuthError> {
    let algorithm = parse_algorithm(&config.algorithm)?;
    let key = match algorithm.family() {
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(private_key_pem.as_bytes()),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(private_key_pem.as_bytes()),
        _ => {
            return Err(AuthError::Config(format!(
                "{} tokens are signed with the site's secret, not a private key",
                config.algorithm
            )))
        }
    }
    .map_err(|e| {
        AuthError::Config(format!(
            "not a PEM private key for {}: {e}",
            config.algorithm
        ))
    })?;
    encode(config, algorithm, kid, &key, user, rooms, ttl)
}

fn encode(
    config: &JwtConfig,
    algorithm: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    user: &str,
    rooms: &[String],
    ttl: Duration,
) -> Result<String, AuthError> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintedClaims {
        sub: user,
        rooms,
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
        iss: config.issuer.as_deref(),
        aud: config.audience.as_deref(),
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key)
        .map_err(|e| AuthError::Config(format!("cannot sign the token: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::secret::Secret;

    const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/rsa_private.pem");
    const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/rsa_public.pem");
    const EC256_PRIVATE: &str = include_str!("../../tests/fixtures/ec256_private.pem");
    const EC256_PUBLIC: &str = include_str!("../../tests/fixtures/ec256_public.pem");
    const EC256_OTHER_PRIVATE: &str = include_str!("../../tests/fixtures/ec256_other_private.pem");
    const EC384_PRIVATE: &str = include_str!("../../tests/fixtures/ec384_private.pem");
    const EC384_PUBLIC: &str = include_str!("../../tests/fixtures/ec384_public.pem");

    const HOUR: Duration = Duration::from_secs(3600);

    fn hs(algorithm: &str, secret: &str) -> JwtConfig {
        JwtConfig {
            algorithm: algorithm.into(),
            secret: Some(Secret::new(secret)),
            public_key_pem: None,
            jwks_url: None,
            jwks_cache_secs: 300,
            issuer: None,
            audience: None,
        }
    }

    fn with_key(algorithm: &str, pem: &str) -> JwtConfig {
        JwtConfig {
            secret: None,
            public_key_pem: Some(pem.into()),
            ..hs(algorithm, "")
        }
    }

    fn verifier(config: &JwtConfig) -> JwtVerifier {
        JwtVerifier::new(config, reqwest::Client::new()).unwrap()
    }

    async fn check(config: &JwtConfig, token: &str) -> Result<Identity, AuthError> {
        verifier(config)
            .authenticate(&AuthRequest {
                token: Some(token.into()),
                ..AuthRequest::default()
            })
            .await
    }

    fn rooms() -> Vec<String> {
        vec!["user_1".into(), "news".into()]
    }

    fn expected() -> Identity {
        Identity {
            user: Some("u1".into()),
            rooms: rooms(),
        }
    }

    /// A token with arbitrary header and claims, signed with HMAC `secret` as `alg` says (or unsigned).
    fn forge(
        header: &str,
        claims: &serde_json::Value,
        secret: &[u8],
        alg: Option<Algorithm>,
    ) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match alg {
            Some(alg) => jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(secret).unwrap(),
                alg,
            )
            .unwrap(),
            None => String::new(),
        };
        format!("{message}.{signature}")
    }

    fn claims(exp_offset: i64) -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        serde_json::json!({"sub": "u1", "rooms": ["user_1", "news"], "exp": now + exp_offset})
    }

    #[tokio::test]
    async fn hs_tokens() {
        for alg in ["HS256", "HS384", "HS512"] {
            let config = hs(alg, "a site secret of some length");
            let token = mint(&config, "u1", &rooms(), HOUR).unwrap();
            assert_eq!(check(&config, &token).await, Ok(expected()), "{alg}");
        }
    }

    #[tokio::test]
    async fn hs_refusals() {
        let config = hs("HS256", "secret-one");
        let other = hs("HS256", "secret-two");
        let token = mint(&config, "u1", &rooms(), HOUR).unwrap();

        assert_eq!(
            check(&other, &token).await,
            Err(AuthError::InvalidToken),
            "wrong secret"
        );
        assert_eq!(
            check(&hs("HS512", "secret-one"), &token).await,
            Err(AuthError::WrongAlgorithm),
            "HS256 token on an HS512 site"
        );

        let expired = forge(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &claims(-3600),
            b"secret-one",
            Some(Algorithm::HS256),
        );
        assert_eq!(check(&config, &expired).await, Err(AuthError::Expired));

        let no_exp = forge(
            r#"{"alg":"HS256"}"#,
            &serde_json::json!({"sub": "u1", "rooms": []}),
            b"secret-one",
            Some(Algorithm::HS256),
        );
        assert_eq!(
            check(&config, &no_exp).await,
            Err(AuthError::InvalidToken),
            "exp is required"
        );

        // A signed token whose header names a critical extension herald does not understand (RFC 7515
        // 4.1.11) is refused: jsonwebtoken 12 checks `crit`.
        let critical = forge(
            r#"{"alg":"HS256","crit":["x-herald-unknown"],"x-herald-unknown":1}"#,
            &claims(3600),
            b"secret-one",
            Some(Algorithm::HS256),
        );
        assert_eq!(
            check(&config, &critical).await,
            Err(AuthError::InvalidToken),
            "unknown critical extension"
        );

        for none in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"hs256"}"#,
        ] {
            let token = forge(none, &claims(3600), b"", None);
            assert_eq!(
                check(&config, &token).await,
                Err(AuthError::WrongAlgorithm),
                "{none}"
            );
        }

        // Tampering with the claims (here: granting a room) breaks the signature.
        let (head, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let mut granted = claims(3600);
        granted["rooms"] = serde_json::json!(["admin"]);
        let tampered = format!(
            "{head}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(granted.to_string())
        );
        assert_eq!(
            check(&config, &tampered).await,
            Err(AuthError::InvalidToken)
        );

        for garbage in ["", "abc", "a.b", "a.b.c", "a.b.c.d", "...."] {
            let result = check(&config, garbage).await;
            let want = if garbage.is_empty() {
                AuthError::MissingToken
            } else {
                AuthError::InvalidToken
            };
            assert_eq!(result, Err(want), "{garbage:?}");
        }
        let missing = verifier(&config)
            .authenticate(&AuthRequest::default())
            .await;
        assert_eq!(missing, Err(AuthError::MissingToken));
        assert_eq!(
            check(&config, &"a".repeat(MAX_TOKEN_BYTES + 1)).await,
            Err(AuthError::InvalidToken)
        );
    }

    #[tokio::test]
    async fn claims_are_optional_but_typed() {
        let config = hs("HS256", "s");
        let now = jsonwebtoken::get_current_timestamp();
        let bare = forge(
            r#"{"alg":"HS256"}"#,
            &serde_json::json!({"exp": now + 60}),
            b"s",
            Some(Algorithm::HS256),
        );
        assert_eq!(check(&config, &bare).await, Ok(Identity::default()));
        let bad_rooms = forge(
            r#"{"alg":"HS256"}"#,
            &serde_json::json!({"exp": now + 60, "rooms": "news"}),
            b"s",
            Some(Algorithm::HS256),
        );
        assert_eq!(
            check(&config, &bad_rooms).await,
            Err(AuthError::InvalidToken)
        );
    }

    #[tokio::test]
    async fn issuer_and_audience() {
        let mut config = hs("HS256", "s");
        config.issuer = Some("https://issuer.example".into());
        config.audience = Some("herald".into());
        let token = mint(&config, "u1", &rooms(), HOUR).unwrap();
        assert_eq!(check(&config, &token).await, Ok(expected()));

        let plain = mint(&hs("HS256", "s"), "u1", &rooms(), HOUR).unwrap();
        assert_eq!(
            check(&config, &plain).await,
            Err(AuthError::InvalidToken),
            "iss and aud required"
        );

        let mut other = config.clone();
        other.audience = Some("someone-else".into());
        let token = mint(&other, "u1", &rooms(), HOUR).unwrap();
        assert_eq!(
            check(&config, &token).await,
            Err(AuthError::InvalidToken),
            "wrong audience"
        );

        // A site without an audience accepts tokens that carry one.
        assert_eq!(check(&hs("HS256", "s"), &token).await, Ok(expected()));

        // `iss` and `aud` of the wrong JSON type are refused, not skipped.
        let now = jsonwebtoken::get_current_timestamp();
        for (iss, aud) in [
            (serde_json::json!(1234), serde_json::json!("herald")),
            (
                serde_json::json!("https://issuer.example"),
                serde_json::json!(1234),
            ),
        ] {
            let token = forge(
                r#"{"alg":"HS256"}"#,
                &serde_json::json!({"sub": "u1", "exp": now + 3600, "iss": iss, "aud": aud}),
                b"s",
                Some(Algorithm::HS256),
            );
            assert_eq!(
                check(&config, &token).await,
                Err(AuthError::InvalidToken),
                "iss {iss}, aud {aud}"
            );
        }
    }

    #[tokio::test]
    async fn rs_ps_es_with_public_keys() {
        for (alg, private, public) in [
            ("RS256", RSA_PRIVATE, RSA_PUBLIC),
            ("RS384", RSA_PRIVATE, RSA_PUBLIC),
            ("RS512", RSA_PRIVATE, RSA_PUBLIC),
            ("PS256", RSA_PRIVATE, RSA_PUBLIC),
            ("PS384", RSA_PRIVATE, RSA_PUBLIC),
            ("PS512", RSA_PRIVATE, RSA_PUBLIC),
            ("ES256", EC256_PRIVATE, EC256_PUBLIC),
            ("ES384", EC384_PRIVATE, EC384_PUBLIC),
        ] {
            let config = with_key(alg, public);
            let token = mint_signed(&config, private, None, "u1", &rooms(), HOUR).unwrap();
            assert_eq!(check(&config, &token).await, Ok(expected()), "{alg}");
        }

        // RS256 and PS256 share the key but not the algorithm.
        let rs = mint_signed(
            &with_key("RS256", RSA_PUBLIC),
            RSA_PRIVATE,
            None,
            "u1",
            &rooms(),
            HOUR,
        )
        .unwrap();
        assert_eq!(
            check(&with_key("PS256", RSA_PUBLIC), &rs).await,
            Err(AuthError::WrongAlgorithm)
        );

        // A token signed by another P-256 key does not verify; an ES384 token is the wrong algorithm.
        let config = with_key("ES256", EC256_PUBLIC);
        let other = mint_signed(&config, EC256_OTHER_PRIVATE, None, "u1", &rooms(), HOUR).unwrap();
        assert_eq!(check(&config, &other).await, Err(AuthError::InvalidToken));
        let es384 = mint_signed(
            &with_key("ES384", EC384_PUBLIC),
            EC384_PRIVATE,
            None,
            "u1",
            &rooms(),
            HOUR,
        )
        .unwrap();
        assert_eq!(check(&config, &es384).await, Err(AuthError::WrongAlgorithm));

        let expired = {
            let key = EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap();
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(-3600), &key).unwrap()
        };
        assert_eq!(check(&config, &expired).await, Err(AuthError::Expired));
    }

    #[tokio::test]
    async fn hs_token_never_verifies_with_a_public_key() {
        // The classic confusion: an HS256 token whose secret is the site's public key PEM.
        for (alg, public) in [("RS256", RSA_PUBLIC), ("ES256", EC256_PUBLIC)] {
            let config = with_key(alg, public);
            for hs_alg in [Algorithm::HS256, Algorithm::HS512] {
                let header = format!(r#"{{"alg":"{hs_alg:?}"}}"#);
                let token = forge(&header, &claims(3600), public.as_bytes(), Some(hs_alg));
                assert_eq!(
                    check(&config, &token).await,
                    Err(AuthError::WrongAlgorithm),
                    "{alg} {hs_alg:?}"
                );
            }
            // Even a header claiming the right alg over an HMAC signature fails verification.
            let header = format!(r#"{{"alg":"{alg}"}}"#);
            let token = forge(
                &header,
                &claims(3600),
                public.as_bytes(),
                Some(Algorithm::HS256),
            );
            assert_eq!(check(&config, &token).await, Err(AuthError::InvalidToken));
        }
    }

    /// A JWKS server whose key set the test can replace, counting fetches.
    async fn jwks_server() -> (
        String,
        Arc<parking_lot::Mutex<String>>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let body = Arc::new(parking_lot::Mutex::new(String::from(r#"{"keys":[]}"#)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (body.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().clone();
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, body, fetches)
    }

    fn jwk_set(entries: &[(&str, &str, Algorithm)]) -> String {
        let keys = entries
            .iter()
            .map(|(kid, pem, alg)| {
                let private = match alg.family() {
                    AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem.as_bytes()),
                    _ => EncodingKey::from_ec_pem(pem.as_bytes()),
                }
                .unwrap();
                let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&private, *alg).unwrap();
                jwk.common.key_id = Some((*kid).to_owned());
                jwk
            })
            .collect();
        serde_json::to_string(&JwkSet { keys }).unwrap()
    }

    #[tokio::test]
    async fn jwks_refetches_on_an_unknown_kid_at_most_every_ten_seconds() {
        use std::sync::atomic::Ordering;
        let (url, served, fetches) = jwks_server().await;
        *served.lock() = jwk_set(&[("old", EC256_OTHER_PRIVATE, Algorithm::ES256)]);
        let config = JwtConfig {
            public_key_pem: None,
            jwks_url: Some(url),
            ..with_key("ES256", "")
        };
        let jwt = verifier(&config);
        let request = |token: &str| AuthRequest {
            token: Some(token.into()),
            ..AuthRequest::default()
        };
        let old = mint_signed(
            &config,
            EC256_OTHER_PRIVATE,
            Some("old"),
            "u1",
            &rooms(),
            HOUR,
        )
        .unwrap();
        let new = mint_signed(&config, EC256_PRIVATE, Some("new"), "u1", &rooms(), HOUR).unwrap();
        assert_eq!(jwt.authenticate(&request(&old)).await, Ok(expected()));

        // The issuer rotates its key. Within ten seconds of the last fetch, the new kid is refused unfetched.
        *served.lock() = jwk_set(&[("new", EC256_PRIVATE, Algorithm::ES256)]);
        assert_eq!(
            jwt.authenticate(&request(&new)).await,
            Err(AuthError::InvalidToken)
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // Ten seconds later, the unknown kid triggers one fetch, which finds it.
        let Keys::Jwks(jwks) = &jwt.keys else {
            panic!("a JWKS rule")
        };
        let past = Instant::now().checked_sub(JWKS_MIN_REFETCH).unwrap();
        jwks.cache.lock().attempted = Some(past);
        assert_eq!(jwt.authenticate(&request(&new)).await, Ok(expected()));
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // The old key left the set with the rotation.
        assert_eq!(
            jwt.authenticate(&request(&old)).await,
            Err(AuthError::InvalidToken)
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn jwks_concurrent_connects_share_one_fetch() {
        use std::sync::atomic::Ordering;
        let (url, served, fetches) = jwks_server().await;
        *served.lock() = jwk_set(&[("k1", RSA_PRIVATE, Algorithm::PS256)]);
        let config = JwtConfig {
            public_key_pem: None,
            jwks_url: Some(url),
            ..with_key("PS256", "")
        };
        let jwt = Arc::new(verifier(&config));
        let token = mint_signed(&config, RSA_PRIVATE, Some("k1"), "u1", &rooms(), HOUR).unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (jwt, token) = (jwt.clone(), token.clone());
                tokio::spawn(async move {
                    jwt.authenticate(&AuthRequest {
                        token: Some(token),
                        ..AuthRequest::default()
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(expected()));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        let key = |n: u8| Arc::new(DecodingKey::from_secret(&[n]).unwrap());
        let mut cache = JwksCache::default();
        assert!(cache.find(Some("a")).is_none());
        assert!(cache.find(None).is_none());
        cache.keys.insert("a".into(), key(1));
        assert!(cache.find(Some("a")).is_some());
        assert!(cache.find(Some("b")).is_none());
        // A token without a kid is accepted only when the set leaves no choice.
        assert!(cache.find(None).is_some());
        cache.keys.insert("b".into(), key(2));
        assert!(cache.find(None).is_none());
    }

    #[test]
    fn bad_configs() {
        let http = reqwest::Client::new();
        let refused = |config: JwtConfig| match JwtVerifier::new(&config, http.clone()) {
            Err(AuthError::Config(message)) => message,
            other => panic!("{config:?} gave {other:?}"),
        };
        refused(hs("none", "s"));
        refused(hs("EdDSA", "s"));
        refused(hs("hs256", "s"));
        refused(hs("HS256", ""));
        refused(JwtConfig {
            secret: None,
            ..hs("HS256", "")
        });
        refused(JwtConfig {
            public_key_pem: Some(RSA_PUBLIC.into()),
            ..hs("HS256", "s")
        });
        refused(hs("RS256", "s"));
        refused(with_key("RS256", "not a pem"));
        refused(with_key("RS256", EC256_PUBLIC));
        refused(with_key("ES256", RSA_PUBLIC));
        refused(JwtConfig {
            public_key_pem: None,
            ..with_key("RS256", "")
        });
        refused(JwtConfig {
            jwks_url: Some("https://keys.example/jwks.json".into()),
            ..with_key("RS256", RSA_PUBLIC)
        });
        refused(JwtConfig {
            public_key_pem: None,
            jwks_url: Some("file:///etc/keys".into()),
            ..with_key("RS256", "")
        });
        let message = refused(hs("HS256", ""));
        assert!(message.contains("secret"), "{message}");

        assert!(JwtVerifier::new(&with_key("RS256", RSA_PUBLIC), http.clone()).is_ok());
        assert!(JwtVerifier::new(
            &JwtConfig {
                public_key_pem: None,
                jwks_url: Some("https://keys.example/jwks.json".into()),
                ..with_key("ES256", "")
            },
            http,
        )
        .is_ok());
    }

    #[test]
    fn minting() {
        assert!(matches!(
            mint(&with_key("RS256", RSA_PUBLIC), "u", &[], HOUR),
            Err(AuthError::Config(message)) if message.contains("private key")
        ));
        assert!(matches!(
            mint_signed(&hs("HS256", "s"), RSA_PRIVATE, None, "u", &[], HOUR),
            Err(AuthError::Config(_))
        ));
        assert!(matches!(
            mint_signed(&with_key("RS256", RSA_PUBLIC), "junk", None, "u", &[], HOUR),
            Err(AuthError::Config(_))
        ));
        let token = mint_signed(
            &with_key("RS256", RSA_PUBLIC),
            RSA_PRIVATE,
            Some("k1"),
            "u",
            &[],
            HOUR,
        )
        .unwrap();
        assert_eq!(raw_header(&token).unwrap().kid.as_deref(), Some("k1"));
    }
}
