//! Bearer JWTs from an OpenID Connect issuer.
//!
//! A request carrying `Authorization: Bearer <jwt>` is checked against the issuer's published
//! keys (its JWKS): the signature (RS256 or ES256 only; `none`, HMAC and every other algorithm
//! are refused before any key is looked at), then `iss`, `aud`, `exp` and `nbf` with the
//! configured leeway. The user is read from one configured claim and the groups from another.
//!
//! **Keys.** The JWKS URL comes from the settings or, by default, from the `jwks_uri` of the
//! issuer's discovery document (`<issuer>/.well-known/openid-configuration`, whose `issuer` must
//! be the configured one). Keys are fetched lazily, by the first token that needs them, and kept:
//! a request whose key is known costs one header parse and one signature check, with no network
//! and no lock held across an `await`. A token naming a `kid` the cache does not know triggers a
//! refresh, at most one per [`JwtSettings::refresh_interval`] (the first one after start always
//! happens), one at a time; concurrent requests wait for that one fetch instead of starting their
//! own. Keys older than [`JwtSettings::max_age`] are refreshed in the background while the old
//! ones stay in use, so keys the issuer withdrew stop working within that time. Every fetch is
//! bounded by [`JwtSettings::fetch_timeout`]; an unreachable issuer makes requests fail with a
//! clear reason, never hang.
//!
//! **Outcomes.** No bearer header, or a bearer value that is not shaped like a JWT (three
//! dot-separated base64url parts), is somebody else's credential ([`Outcome::Skip`]). A JWT that
//! fails any check is [`Outcome::Reject`]ed with a short reason; reasons and log lines never
//! contain the token.
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::{Authenticator, Credentials, Identity, Outcome, Rejection, Roles, error_chain};

/// The default for [`JwtSettings::refresh_interval`].
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// The default for [`JwtSettings::fetch_timeout`].
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The default for [`JwtSettings::max_age`].
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// The default user claim.
pub const DEFAULT_USER_CLAIM: &str = "preferred_username";
/// The default groups claim.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";

/// Largest discovery document or JWKS accepted from the issuer.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Most keys taken from one JWKS.
const MAX_KEYS: usize = 64;
/// Longest `kid` or `alg` quoted back in a rejection.
const MAX_QUOTED: usize = 64;
/// Background refreshes of old keys are attempted at most this often, whatever the interval.
const MIN_STALE_RETRY: Duration = Duration::from_secs(30);

/// How the authenticator is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// The issuer, exactly as tokens name it in `iss` (e.g. `https://idp.example/realms/x`).
    pub issuer: String,
    /// The JWKS URL; `None` reads `jwks_uri` from the issuer's discovery document.
    pub jwks_url: Option<String>,
    /// Accepted `aud` values (at least one; a token must name one of them).
    pub audiences: Vec<String>,
    /// The claim naming the user ([`DEFAULT_USER_CLAIM`]).
    pub user_claim: String,
    /// The claim listing the user's groups, an array of strings ([`DEFAULT_GROUPS_CLAIM`]);
    /// a token without it has no groups.
    pub groups_claim: String,
    /// Clock skew allowed when checking `exp` and `nbf` (whole seconds count).
    pub leeway: Duration,
    /// Least time between two key fetches caused by tokens naming unknown keys.
    pub refresh_interval: Duration,
    /// Longest time one key fetch (discovery and JWKS together) may take.
    pub fetch_timeout: Duration,
    /// Age after which the keys are fetched again in the background.
    pub max_age: Duration,
}

impl JwtSettings {
    /// Settings for `issuer` and `audiences` with every other field at its default.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> JwtSettings {
        JwtSettings {
            issuer: issuer.into(),
            jwks_url: None,
            audiences,
            user_claim: DEFAULT_USER_CLAIM.to_owned(),
            groups_claim: DEFAULT_GROUPS_CLAIM.to_owned(),
            leeway: Duration::from_secs(60),
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// Why [`Jwt::new`] refused its settings.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// A setting is unusable; the message names it.
    #[error("{0}")]
    Config(String),
    /// The HTTP client for the issuer could not be built.
    #[error("cannot build the HTTP client for the issuer: {0}")]
    Client(String),
}

/// The two accepted signature algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// The parts of a token header this authenticator reads.
#[derive(Debug, PartialEq, Eq)]
struct TokenHeader<'a> {
    alg: Alg,
    kid: Option<Cow<'a, str>>,
}

/// One usable verification key from the JWKS.
struct VerifyKey {
    kid: Option<String>,
    alg: Alg,
    key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The keys in force and when they were fetched.
#[derive(Debug, Default)]
struct KeySet {
    keys: Vec<VerifyKey>,
    fetched_at: Option<Instant>,
}

impl KeySet {
    /// The keys that may have signed a token with this header: the one with its `kid`, or
    /// every key of its algorithm when it names none.
    fn candidates<'s>(
        &'s self,
        header: &'s TokenHeader<'_>,
    ) -> impl Iterator<Item = &'s VerifyKey> {
        self.keys.iter().filter(move |key| {
            key.alg == header.alg
                && header
                    .kid
                    .as_deref()
                    .is_none_or(|kid| key.kid.as_deref() == Some(kid))
        })
    }
}

/// What the one fetcher at a time remembers.
#[derive(Debug, Default)]
struct FetchState {
    /// Why the last fetch failed (cleared by a successful one).
    last_error: Option<String>,
    /// The `jwks_uri` found in the discovery document.
    discovered_jwks_url: Option<String>,
}

/// What a refresh did.
enum Refresh {
    /// Fetched: the key set was replaced.
    Fetched,
    /// Not fetched now (rate limit, or another request just fetched); the last error, if the
    /// last fetch failed.
    Skipped(Option<String>),
    /// The fetch failed.
    Failed(String),
}

/// Verifies bearer JWTs of one OIDC issuer. Cheap to share: clones share the key cache.
#[derive(Clone)]
pub struct Jwt {
    inner: Arc<Inner>,
}

struct Inner {
    settings: JwtSettings,
    discovery_url: String,
    client: reqwest::Client,
    rs256: Validation,
    es256: Validation,
    keys: RwLock<Arc<KeySet>>,
    fetch: tokio::sync::Mutex<FetchState>,
    /// When the process-local clock started, for the atomics below.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last fetch attempt plus one (0: never).
    last_attempt_ms: AtomicU64,
    /// Fetch attempts so far (a waiter that sees it change knows somebody fetched).
    attempts: AtomicU64,
    /// A background refresh of old keys is running.
    background: AtomicBool,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("Jwt")
            .field("issuer", &s.issuer)
            .field("jwks_url", &s.jwks_url)
            .field("audiences", &s.audiences)
            .field("user_claim", &s.user_claim)
            .field("groups_claim", &s.groups_claim)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// Checks the settings and builds the authenticator (no network until the first token).
    pub fn new(settings: JwtSettings) -> Result<Jwt, JwtError> {
        check_url("the issuer", &settings.issuer)?;
        if let Some(url) = &settings.jwks_url {
            check_url("the JWKS URL", url)?;
        }
        let audiences: Vec<&str> = settings
            .audiences
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .collect();
        if audiences.is_empty() {
            return Err(JwtError::Config(
                "at least one audience is required (the `aud` value tokens for this gateway carry, often its OIDC client id)"
                    .to_owned(),
            ));
        }
        if settings.user_claim.trim().is_empty() || settings.groups_claim.trim().is_empty() {
            return Err(JwtError::Config(
                "the user and groups claims must be named".to_owned(),
            ));
        }
        if settings.user_claim == settings.groups_claim {
            return Err(JwtError::Config(format!(
                "the user claim and the groups claim are both {:?}",
                settings.user_claim
            )));
        }
        if settings.fetch_timeout.is_zero() {
            return Err(JwtError::Config(
                "the fetch timeout must not be zero".to_owned(),
            ));
        }
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = settings.leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = true;
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v.set_issuer(&[settings.issuer.as_str()]);
            v.set_audience(&audiences);
            v
        };
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .connect_timeout(settings.fetch_timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("enterprise-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JwtError::Client(error_chain(&e)))?;
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            settings.issuer.trim_end_matches('/')
        );
        Ok(Jwt {
            inner: Arc::new(Inner {
                rs256: validation(Algorithm::RS256),
                es256: validation(Algorithm::ES256),
                settings,
                discovery_url,
                client,
                keys: RwLock::new(Arc::new(KeySet::default())),
                fetch: tokio::sync::Mutex::new(FetchState::default()),
                epoch: Instant::now(),
                last_attempt_ms: AtomicU64::new(0),
                attempts: AtomicU64::new(0),
                background: AtomicBool::new(false),
            }),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &JwtSettings {
        &self.inner.settings
    }

    /// Verifies one token: the identity it names, or why it is refused. A value that is not
    /// JWT-shaped is refused here too (the [`Authenticator`] passes on it instead).
    pub async fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        if !is_jwt_shaped(token) {
            return Err(Rejection::new("the bearer token is not a JWT"));
        }
        let (user, groups) = Inner::verify(&self.inner, token).await?;
        Ok(Identity {
            user,
            groups,
            roles: Roles::default(),
            method: "jwt",
        })
    }
}

#[async_trait::async_trait]
impl Authenticator for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    async fn authenticate(&self, credentials: &Credentials<'_>) -> Outcome {
        // Another authenticator (JupyterHub, a token file) may own bearer values that are not JWTs.
        let Some(token) = credentials.bearer().filter(|t| is_jwt_shaped(t)) else {
            return Outcome::Skip;
        };
        match self.verify(token).await {
            Ok(identity) => Outcome::Accept(identity),
            Err(rejection) => Outcome::Reject(rejection),
        }
    }
}

impl Inner {
    async fn verify(this: &Arc<Inner>, token: &str) -> Result<(String, Vec<String>), Rejection> {
        let header = parse_header(token)?;
        let mut keys = this.current_keys();
        if keys.candidates(&header).next().is_none() {
            let refresh = this.refresh().await;
            keys = this.current_keys();
            if keys.candidates(&header).next().is_none() {
                let fetch_error = match refresh {
                    Refresh::Failed(error) | Refresh::Skipped(Some(error)) => Some(error),
                    Refresh::Fetched | Refresh::Skipped(None) => None,
                };
                return Err(match (fetch_error, &header.kid) {
                    (Some(error), _) => {
                        Rejection::new(format!("the issuer's keys cannot be fetched: {error}"))
                    }
                    (None, Some(kid)) => {
                        Rejection::new(format!("no key with kid {} at the issuer", quoted(kid)))
                    }
                    (None, None) => Rejection::new(format!(
                        "the token names no kid and the issuer has no {} key",
                        header.alg.name()
                    )),
                });
            }
        } else if this.is_stale(&keys) {
            Inner::refresh_in_background(this);
        }
        let validation = match header.alg {
            Alg::Rs256 => &this.rs256,
            Alg::Es256 => &this.es256,
        };
        let mut outcome = Err(Rejection::new("invalid signature"));
        for key in keys.candidates(&header) {
            match jsonwebtoken::decode::<IgnoredAny>(token, &key.key, validation) {
                Ok(_) => {
                    outcome = Ok(());
                    break;
                }
                // Without a kid every key of the algorithm is tried.
                Err(error) if matches!(error.kind(), ErrorKind::InvalidSignature) => {}
                Err(error) => {
                    outcome = Err(rejection_for(error.kind()));
                    break;
                }
            }
        }
        outcome?;
        let payload = token
            .split('.')
            .nth(1)
            .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
            .ok_or_else(|| Rejection::new("malformed token"))?;
        identity_from_claims(
            &payload,
            &this.settings.user_claim,
            &this.settings.groups_claim,
        )
    }

    fn current_keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read())
    }

    fn is_stale(&self, keys: &KeySet) -> bool {
        keys.fetched_at
            .is_some_and(|at| at.elapsed() >= self.settings.max_age)
    }

    /// Time since the last fetch attempt (`None`: never attempted).
    fn since_last_attempt(&self) -> Option<Duration> {
        match self.last_attempt_ms.load(Ordering::Acquire) {
            0 => None,
            ms => {
                let at = Duration::from_millis(ms - 1);
                Some(self.epoch.elapsed().saturating_sub(at))
            }
        }
    }

    fn refresh_in_background(this: &Arc<Inner>) {
        let retry_after = this.settings.refresh_interval.max(MIN_STALE_RETRY);
        if this.since_last_attempt().is_some_and(|d| d < retry_after)
            || this.background.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let inner = Arc::clone(this);
        tokio::spawn(async move {
            let _ = inner.refresh().await;
            inner.background.store(false, Ordering::Release);
        });
    }

    /// Fetches the keys again unless the rate limit forbids it or another request fetched while
    /// this one waited for its turn.
    async fn refresh(&self) -> Refresh {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut state = self.fetch.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen
            || self
                .since_last_attempt()
                .is_some_and(|d| d < self.settings.refresh_interval)
        {
            return Refresh::Skipped(state.last_error.clone());
        }
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_attempt_ms.store(now_ms + 1, Ordering::Release);
        let timeout = self.settings.fetch_timeout;
        let fetched = match tokio::time::timeout(timeout, self.fetch_keys(&mut state)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", timeout.as_secs_f64())),
        };
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match fetched {
            Ok(keys) => {
                if keys.is_empty() {
                    tracing::warn!(
                        issuer = %self.settings.issuer,
                        "the issuer's JWKS holds no RS256 or ES256 signing key"
                    );
                } else {
                    tracing::debug!(issuer = %self.settings.issuer, keys = keys.len(), "fetched the issuer's keys");
                }
                *self.keys.write() = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                });
                state.last_error = None;
                Refresh::Fetched
            }
            Err(error) => {
                tracing::warn!(issuer = %self.settings.issuer, %error, "cannot fetch the issuer's keys");
                state.last_error = Some(error.clone());
                Refresh::Failed(error)
            }
        }
    }

    async fn fetch_keys(&self, state: &mut FetchState) -> Result<Vec<VerifyKey>, String> {
        let jwks_url = match (&self.settings.jwks_url, &state.discovered_jwks_url) {
            (Some(url), _) | (None, Some(url)) => url.clone(),
            (None, None) => {
                let url = self.discover().await?;
                state.discovered_jwks_url = Some(url.clone());
                url
            }
        };
        let body = match self.get(&jwks_url).await {
            Ok(body) => body,
            Err(error) => {
                // The issuer may have moved its keys: read the discovery document again next time.
                state.discovered_jwks_url = None;
                return Err(error);
            }
        };
        parse_jwks(&body).map_err(|e| format!("{jwks_url} is not a usable JWKS: {e}"))
    }

    /// The `jwks_uri` of the discovery document.
    async fn discover(&self) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: Option<String>,
            jwks_uri: Option<String>,
        }
        let url = &self.discovery_url;
        let body = self.get(url).await?;
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("{url} is not an OpenID Connect discovery document: {e}"))?;
        if let Some(issuer) = &doc.issuer
            && *issuer != self.settings.issuer
        {
            return Err(format!(
                "the discovery document at {url} is for issuer {issuer:?}, not {:?}",
                self.settings.issuer
            ));
        }
        let jwks_uri = doc
            .jwks_uri
            .ok_or_else(|| format!("the discovery document at {url} has no jwks_uri"))?;
        check_url("jwks_uri", &jwks_uri).map_err(|e| format!("{url}: {e}"))?;
        Ok(jwks_uri)
    }

    /// GET `url` as JSON, bounded in size.
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .client
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}"));
        }
        let too_large = || {
            format!(
                "GET {url}: the answer is larger than {} KiB",
                MAX_DOCUMENT_BYTES / 1024
            )
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Whether `value` looks like a compact JWS: three dot-separated base64url parts, the first
/// two not empty (the signature may be, as in an unsigned `alg: none` token, which is then
/// refused rather than passed on).
pub fn is_jwt_shaped(value: &str) -> bool {
    let base64url = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = value.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            !header.is_empty()
                && !payload.is_empty()
                && base64url(header)
                && base64url(payload)
                && base64url(signature)
        }
        _ => false,
    }
}

/// Reads the token header: the algorithm (RS256 or ES256, anything else refused with its name)
/// and the `kid`.
fn parse_header(token: &str) -> Result<TokenHeader<'static>, Rejection> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        alg: Option<Cow<'a, str>>,
        #[serde(borrow)]
        kid: Option<Cow<'a, str>>,
        crit: Option<IgnoredAny>,
    }
    let malformed = || Rejection::new("malformed token header (not base64url-encoded JSON)");
    let encoded = token.split('.').next().ok_or_else(malformed)?;
    let json = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed())?;
    let raw: Raw<'_> = serde_json::from_slice(&json).map_err(|_| malformed())?;
    if raw.crit.is_some() {
        return Err(Rejection::new(
            "the token header names critical extensions (crit), which are not supported",
        ));
    }
    let alg = match raw.alg.as_deref() {
        Some("RS256") => Alg::Rs256,
        Some("ES256") => Alg::Es256,
        Some(other) => {
            return Err(Rejection::new(format!(
                "unsupported algorithm {} (RS256 and ES256 are accepted)",
                shown(other)
            )));
        }
        None => return Err(Rejection::new("the token header names no algorithm")),
    };
    Ok(TokenHeader {
        alg,
        kid: raw.kid.map(|kid| Cow::Owned(kid.into_owned())),
    })
}

/// The user and groups from a verified token's payload (its JSON), by claim name.
fn identity_from_claims(
    payload: &[u8],
    user_claim: &str,
    groups_claim: &str,
) -> Result<(String, Vec<String>), Rejection> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let picked = ClaimPicker {
        user_claim,
        groups_claim,
    }
    .deserialize(&mut de)
    .map_err(|e| Rejection::new(format!("malformed token claims: {e}")))?;
    let user = match picked.user {
        Some(serde_json::Value::String(user)) => user,
        None | Some(serde_json::Value::Null) => {
            return Err(Rejection::new(format!("claim {user_claim} missing")));
        }
        Some(_) => {
            return Err(Rejection::new(format!(
                "claim {user_claim} is not a string"
            )));
        }
    };
    let not_strings = || Rejection::new(format!("claim {groups_claim} is not an array of strings"));
    let groups = match picked.groups {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(group) => Ok(group),
                _ => Err(not_strings()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(not_strings()),
    };
    Ok((user, groups))
}

/// The two claims of interest, taken from a JSON object without building a map of the rest.
#[derive(Default)]
struct PickedClaims {
    user: Option<serde_json::Value>,
    groups: Option<serde_json::Value>,
}

struct ClaimPicker<'s> {
    user_claim: &'s str,
    groups_claim: &'s str,
}

impl<'de> DeserializeSeed<'de> for ClaimPicker<'_> {
    type Value = PickedClaims;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<PickedClaims, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimPicker<'_> {
    type Value = PickedClaims;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PickedClaims, A::Error> {
        #[derive(Deserialize)]
        struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

        let mut picked = PickedClaims::default();
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            let slot = if name == self.user_claim {
                &mut picked.user
            } else if name == self.groups_claim {
                &mut picked.groups
            } else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if slot.is_some() {
                return Err(de::Error::custom(format_args!(
                    "claim {name} appears twice"
                )));
            }
            *slot = Some(map.next_value()?);
        }
        Ok(picked)
    }
}

/// The RS256 and ES256 signing keys of a JWKS document; other keys (encryption keys, other
/// algorithms and curves, unknown types) are left out.
fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyKey>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for value in document.keys {
        if keys.len() == MAX_KEYS {
            tracing::warn!(
                "the issuer's JWKS has more than {MAX_KEYS} usable keys; using the first {MAX_KEYS}"
            );
            break;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some(key) = verify_key(&jwk) {
            keys.push(key);
        }
    }
    Ok(keys)
}

fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Alg::Rs256,
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Alg::Es256
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// The client-facing reason for a failed check.
fn rejection_for(kind: &ErrorKind) -> Rejection {
    Rejection::new(match kind {
        ErrorKind::ExpiredSignature => "token expired".to_owned(),
        ErrorKind::ImmatureSignature => "token not valid yet".to_owned(),
        ErrorKind::InvalidAudience => "wrong audience".to_owned(),
        ErrorKind::InvalidIssuer => "wrong issuer".to_owned(),
        ErrorKind::InvalidSignature => "invalid signature".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("claim {} missing", shown(claim)),
        ErrorKind::InvalidClaimFormat(claim) => {
            format!("claim {} has the wrong type", shown(claim))
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => {
            "the token's algorithm does not fit the issuer's key".to_owned()
        }
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidKeyFormat => {
            "the issuer's key cannot be used".to_owned()
        }
        _ => "malformed token".to_owned(),
    })
}

/// A token-supplied name quoted for a rejection: short, escaped.
fn quoted(text: &str) -> String {
    let cut = text
        .char_indices()
        .nth(MAX_QUOTED)
        .map_or(text, |(at, _)| text.get(..at).unwrap_or(text));
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// An algorithm or claim name for a rejection: as it is when plain, quoted otherwise.
fn shown(text: &str) -> String {
    let plain = !text.is_empty()
        && text.len() <= MAX_QUOTED
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'.'));
    if plain { text.to_owned() } else { quoted(text) }
}

fn check_url(what: &str, url: &str) -> Result<(), JwtError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(()),
        Ok(_) => Err(JwtError::Config(format!(
            "{what} {url:?} is not an http(s) URL"
        ))),
        Err(e) => Err(JwtError::Config(format!(
            "{what} {url:?} is not a URL: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://idp.example/realms/test";

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    /// An ES256 signing key (P-256, PKCS#8 from rcgen) and its public JWK.
    fn es256_key(kid: &str) -> (EncodingKey, serde_json::Value) {
        let pair = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk = serde_json::to_value(
            Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_default();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        (key, jwk)
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims() -> serde_json::Value {
        json!({
            "iss": ISSUER,
            "aud": "eg-test",
            "exp": now() + 300,
            "iat": now(),
            "preferred_username": "alice",
            "groups": ["staff", "ml"],
        })
    }

    fn sign(key: &EncodingKey, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An authenticator whose cache already holds `jwks` and whose rate limit forbids fetching:
    /// no network in these tests.
    fn with_keys(jwks: &serde_json::Value) -> Jwt {
        let jwt = Jwt::new(JwtSettings::new(ISSUER, vec!["eg-test".to_owned()]))
            .unwrap_or_else(|e| panic!("{e}"));
        let keys = parse_jwks(jwks.to_string().as_bytes()).unwrap_or_default();
        *jwt.inner.keys.write() = Arc::new(KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        });
        jwt.inner.last_attempt_ms.store(1, Ordering::Release);
        jwt
    }

    #[test]
    fn jwt_shape() {
        assert!(is_jwt_shaped("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(
            is_jwt_shaped("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
            "unsigned"
        );
        for not in [
            "",
            "0123456789abcdef0123456789abcdef",
            "a.b",
            "a.b.c.d",
            ".b.c",
            "a..c",
            "a.b+c.d",
            "a.b.c=",
            "a b.c.d",
        ] {
            assert!(!is_jwt_shaped(not), "{not:?}");
        }
    }

    #[test]
    fn header_algorithms() {
        let token = |header: serde_json::Value| format!("{}.{}.", b64(&header), b64(&json!({})));
        let rs = parse_header(&token(json!({"alg": "RS256", "kid": "k1"})));
        assert_eq!(
            rs,
            Ok(TokenHeader {
                alg: Alg::Rs256,
                kid: Some(Cow::Borrowed("k1"))
            })
        );
        let es = parse_header(&token(json!({"alg": "ES256", "typ": "JWT"})));
        assert_eq!(
            es,
            Ok(TokenHeader {
                alg: Alg::Es256,
                kid: None
            })
        );
        let refused = |header| parse_header(&token(header)).err().map(|r| r.message);
        assert_eq!(
            refused(json!({"alg": "none"})).as_deref(),
            Some("unsupported algorithm none (RS256 and ES256 are accepted)")
        );
        for alg in [
            "HS256", "HS512", "RS512", "PS256", "ES384", "EdDSA", "NONE", "rs256",
        ] {
            let message = refused(json!({ "alg": alg })).unwrap_or_default();
            assert!(
                message.starts_with(&format!("unsupported algorithm {alg} ")),
                "{message}"
            );
        }
        let hostile = refused(json!({"alg": "a\"; rm -rf /\n"})).unwrap_or_default();
        assert!(
            hostile.contains(r#""a\"; rm -rf /\n""#),
            "quoted and escaped: {hostile}"
        );
        assert!(refused(json!({})).is_some_and(|m| m.contains("no algorithm")));
        assert!(
            refused(json!({"alg": "RS256", "crit": ["exp"]})).is_some_and(|m| m.contains("crit"))
        );
        assert!(parse_header("bm90IGpzb24.e30.").is_err_and(|r| r.message.contains("malformed")));
    }

    #[test]
    fn claims_give_user_and_groups() {
        let pick = |claims: serde_json::Value, user: &str, groups: &str| {
            identity_from_claims(claims.to_string().as_bytes(), user, groups).map_err(|r| r.message)
        };
        assert_eq!(
            pick(claims(), "preferred_username", "groups"),
            Ok((
                "alice".to_owned(),
                vec!["staff".to_owned(), "ml".to_owned()]
            ))
        );
        assert_eq!(
            pick(
                json!({"email": "a@example.org", "roles": null}),
                "email",
                "roles"
            ),
            Ok(("a@example.org".to_owned(), Vec::new()))
        );
        assert_eq!(
            pick(json!({"sub": "x"}), "preferred_username", "groups"),
            Err("claim preferred_username missing".to_owned())
        );
        assert_eq!(
            pick(
                json!({"preferred_username": 7}),
                "preferred_username",
                "groups"
            ),
            Err("claim preferred_username is not a string".to_owned())
        );
        for bad in [json!("staff"), json!(["a", 1]), json!({"a": 1})] {
            assert_eq!(
                pick(json!({"u": "bob", "g": bad}), "u", "g"),
                Err("claim g is not an array of strings".to_owned())
            );
        }
        let twice = br#"{"u": "bob", "u": "root"}"#;
        assert!(identity_from_claims(twice, "u", "g").is_err_and(|r| r.message.contains("twice")));
        assert!(identity_from_claims(b"[1]", "u", "g").is_err());
    }

    #[test]
    fn jwks_keeps_only_rs256_and_es256_signing_keys() {
        let (_, es) = es256_key("ec1");
        let jwks = json!({"keys": [
            es,
            {"kty": "RSA", "kid": "rsa1", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "sXch", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AA"},
            {"kty": "weird"},
            "not an object",
        ]});
        let keys = parse_jwks(jwks.to_string().as_bytes()).unwrap_or_default();
        let kept: Vec<_> = keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect();
        assert_eq!(
            kept,
            [(Some("ec1"), Alg::Es256), (Some("rsa1"), Alg::Rs256)]
        );
        assert!(parse_jwks(b"{}").is_err());
    }

    #[tokio::test]
    async fn tokens_are_checked() {
        let (key, jwk) = es256_key("k1");
        let (other, _) = es256_key("k2");
        let jwt = with_keys(&json!({ "keys": [jwk] }));
        let check = |token: String| {
            let jwt = jwt.clone();
            async move { jwt.verify(&token).await.map_err(|r| r.message) }
        };

        let identity = check(sign(&key, Some("k1"), &claims())).await;
        assert_eq!(
            identity,
            Ok(Identity {
                user: "alice".to_owned(),
                groups: vec!["staff".to_owned(), "ml".to_owned()],
                roles: Roles::default(),
                method: "jwt",
            })
        );
        assert!(
            check(sign(&key, None, &claims())).await.is_ok(),
            "no kid: keys of the algorithm are tried"
        );

        let with = |field: &str, value: serde_json::Value| {
            let mut c = claims();
            c[field] = value;
            c
        };
        let cases = [
            (with("exp", json!(now() - 3600)), "token expired"),
            (with("nbf", json!(now() + 3600)), "token not valid yet"),
            (with("aud", json!("someone-else")), "wrong audience"),
            (with("aud", json!(["x", "y"])), "wrong audience"),
            (with("iss", json!("https://evil.example")), "wrong issuer"),
            (
                with("preferred_username", json!(null)),
                "claim preferred_username missing",
            ),
            (
                with("nbf", json!("tomorrow")),
                "claim nbf has the wrong type",
            ),
            (with("exp", json!("tomorrow")), "claim exp missing"),
        ];
        for (claims, want) in cases {
            assert_eq!(
                check(sign(&key, Some("k1"), &claims)).await,
                Err(want.to_owned())
            );
        }
        let mut no_aud = claims();
        no_aud.as_object_mut().map(|c| c.remove("aud"));
        assert_eq!(
            check(sign(&key, Some("k1"), &no_aud)).await,
            Err("claim aud missing".to_owned())
        );
        // Within the leeway (60 s by default) an expired token still passes.
        assert!(
            check(sign(&key, Some("k1"), &with("exp", json!(now() - 30))))
                .await
                .is_ok()
        );

        assert_eq!(
            check(sign(&other, Some("k1"), &claims())).await,
            Err("invalid signature".to_owned()),
            "right kid, wrong key"
        );
        assert_eq!(
            check(sign(&other, Some("k2"), &claims())).await,
            Err(r#"no key with kid "k2" at the issuer"#.to_owned())
        );
        let valid = sign(&key, Some("k1"), &claims());
        let mut parts: Vec<&str> = valid.split('.').collect();
        let forged = b64(&with("preferred_username", json!("root")));
        parts[1] = &forged;
        assert_eq!(
            check(parts.join(".")).await,
            Err("invalid signature".to_owned()),
            "tampered"
        );
        let unsigned = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims()));
        assert_eq!(
            check(unsigned).await,
            Err("unsupported algorithm none (RS256 and ES256 are accepted)".to_owned())
        );
        // An RS256 header over the EC key's kid: no RS256 key of that name.
        let confused = format!(
            "{}.{}.{}",
            b64(&json!({"alg": "RS256", "kid": "k1"})),
            parts[1],
            parts[2]
        );
        assert!(check(confused).await.is_err());
    }

    #[tokio::test]
    async fn skips_what_is_not_a_jwt() {
        let jwt = with_keys(&json!({ "keys": [] }));
        let mut headers = http::HeaderMap::new();
        let outcome = |headers: &http::HeaderMap| {
            let jwt = jwt.clone();
            let headers = headers.clone();
            async move {
                jwt.authenticate(&Credentials {
                    headers: &headers,
                    query_token: None,
                    client_certificate: None,
                })
                .await
            }
        };
        assert_eq!(outcome(&headers).await, Outcome::Skip);
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer 0123abcd"),
        );
        assert_eq!(
            outcome(&headers).await,
            Outcome::Skip,
            "a JupyterHub-style token"
        );
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("token a.b.c"),
        );
        assert_eq!(outcome(&headers).await, Outcome::Skip, "EG's token scheme");
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer a.b.c"),
        );
        assert!(matches!(outcome(&headers).await, Outcome::Reject(_)));
    }

    #[tokio::test]
    async fn an_unreachable_issuer_is_a_clear_rejection_and_is_asked_once_per_interval() {
        // Port 1 on loopback refuses at once.
        let jwt = Jwt::new(JwtSettings::new(
            "http://127.0.0.1:1",
            vec!["eg-test".to_owned()],
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let (key, _) = es256_key("k1");
        let token = sign(&key, Some("k1"), &claims());
        for _ in 0..3 {
            let message = jwt
                .verify(&token)
                .await
                .err()
                .map(|r| r.message)
                .unwrap_or_default();
            assert!(
                message.starts_with("the issuer's keys cannot be fetched: GET http://127.0.0.1:1/.well-known/openid-configuration"),
                "{message}"
            );
            assert!(!message.contains(&token));
        }
        assert_eq!(
            jwt.inner.attempts.load(Ordering::Acquire),
            1,
            "rate-limited"
        );
    }

    #[test]
    fn settings_are_checked() {
        let new = |issuer: &str, audiences: &[&str]| {
            Jwt::new(JwtSettings::new(
                issuer,
                audiences.iter().map(|a| (*a).to_owned()).collect(),
            ))
        };
        assert!(new(ISSUER, &["eg"]).is_ok());
        assert!(new(ISSUER, &[]).is_err_and(|e| e.to_string().contains("audience")));
        assert!(new(ISSUER, &[" "]).is_err());
        assert!(new("idp.example", &["eg"]).is_err_and(|e| e.to_string().contains("not a URL")));
        assert!(new("ftp://idp.example", &["eg"]).is_err());
        let mut same = JwtSettings::new(ISSUER, vec!["eg".to_owned()]);
        same.groups_claim = same.user_claim.clone();
        assert!(Jwt::new(same).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quoted("k1"), r#""k1""#);
        assert_eq!(
            quoted(&"x".repeat(100)),
            format!("\"{}\"…", "x".repeat(MAX_QUOTED))
        );
        assert_eq!(shown("RS384"), "RS384");
        assert_eq!(shown("a b"), r#""a b""#);
    }
}
