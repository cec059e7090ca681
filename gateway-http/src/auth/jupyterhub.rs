//! JupyterHub API tokens, checked against the Hub that issued them.
//!
//! A JupyterHub deployment whose single-user servers talk to this gateway (`--gateway-url`)
//! can hand each server its user's Hub token; this authenticator asks the Hub who owns it:
//! `GET {api_url}/user` with `Authorization: token <t>`, JupyterHub's "who am I" endpoint, which
//! every token may call whatever its scopes. The answer's `name` becomes the user and its
//! `groups` (present only when the token may read them, `read:users:groups`) the groups. The
//! Hub's `admin` flag is deliberately **not** turned into our admin role: a Hub administrator is
//! not necessarily meant to see every kernel of this gateway; grant that with `admin_users` or
//! `admin_groups` (a Hub group works, since the groups are passed on). Tokens of Hub *services*
//! (`kind: service`) are refused, so a service can never pass for a user of the same name.
//!
//! **Where the token comes from.** `Authorization: token <t>`, `Authorization: Bearer <t>` or
//! `?token=`, the three places JupyterHub itself accepts ([`Credentials::any_token`]). A request
//! with none of them is not this authenticator's business ([`Outcome::Skip`]).
//!
//! **Caching.** A successful answer is kept for [`JupyterHubSettings::cache_ttl`], keyed by the
//! token's SHA-256 ([`token_hash`]) so the token itself is never stored, in a cache of at most
//! [`JupyterHubSettings::max_cached`] entries (expired ones go first, then the oldest). A token
//! revoked at the Hub therefore keeps working here for at most that long. Failures are never
//! cached: a token the Hub does not know yet, or a Hub that was down, is asked again next time.
//!
//! **Failures.** A token the Hub refuses (401, 403, 404) is [`Outcome::Reject`]ed as invalid or
//! revoked; the chain still tries the authenticators after this one, which may share the
//! `token` scheme. An unreachable Hub, a 5xx, a redirect or an answer that is not a user model
//! is a rejection naming the Hub, within [`JupyterHubSettings::timeout`]; at most
//! [`MAX_IN_FLIGHT`] questions are outstanding at once, so a flood of unknown tokens cannot
//! flood the Hub. Rejections and log lines never contain the token.
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{
    Authenticator, Credentials, Identity, Outcome, Rejection, Roles, error_chain, token_hash,
};

/// The default for [`JupyterHubSettings::cache_ttl`].
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);
/// The default for [`JupyterHubSettings::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default for [`JupyterHubSettings::max_cached`].
pub const DEFAULT_MAX_CACHED: usize = 10_000;
/// Longest accepted [`JupyterHubSettings::cache_ttl`].
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most questions to the Hub outstanding at once; more requests wait (within the timeout).
pub const MAX_IN_FLIGHT: usize = 32;

/// Largest answer accepted from the Hub (a user model with many groups is a few KiB).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Longest token sent to the Hub; a longer one is refused without asking (Hub tokens are short).
const MAX_TOKEN_BYTES: usize = 4096;
/// What a client hears when the Hub does not know its token.
const INVALID: &str = "invalid or revoked JupyterHub token";

/// How the authenticator is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JupyterHubSettings {
    /// The Hub's REST API, e.g. `http://hub:8081/hub/api` (what single-user servers get as
    /// `JUPYTERHUB_API_URL`); tokens are checked at `<api_url>/user`.
    pub api_url: String,
    /// How long a successful answer is reused ([`DEFAULT_CACHE_TTL`]); zero asks every time.
    pub cache_ttl: Duration,
    /// Longest time one question to the Hub may take, connecting included ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// Most tokens cached at once ([`DEFAULT_MAX_CACHED`]); zero disables the cache.
    pub max_cached: usize,
}

impl JupyterHubSettings {
    /// Settings for the Hub API at `api_url`, every other field at its default.
    pub fn new(api_url: impl Into<String>) -> JupyterHubSettings {
        JupyterHubSettings {
            api_url: api_url.into(),
            cache_ttl: DEFAULT_CACHE_TTL,
            timeout: DEFAULT_TIMEOUT,
            max_cached: DEFAULT_MAX_CACHED,
        }
    }
}

/// Why [`JupyterHub::new`] refused its settings.
#[derive(Debug, thiserror::Error)]
pub enum JupyterHubError {
    /// A setting is unusable; the message names it.
    #[error("{0}")]
    Config(String),
    /// The HTTP client for the Hub could not be built.
    #[error("cannot build the HTTP client for JupyterHub: {0}")]
    Client(String),
}

/// Checks JupyterHub API tokens at the Hub. Cheap to share: clones share the cache.
#[derive(Clone)]
pub struct JupyterHub {
    inner: Arc<Inner>,
}

struct Inner {
    settings: JupyterHubSettings,
    /// `<api_url>/user`.
    user_url: String,
    /// The API URL without any credentials in it, for messages.
    shown_url: String,
    client: reqwest::Client,
    in_flight: Semaphore,
    cache: Mutex<Cache>,
}

impl fmt::Debug for JupyterHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JupyterHub")
            .field("api_url", &self.inner.shown_url)
            .field("cache_ttl", &self.inner.settings.cache_ttl)
            .field("timeout", &self.inner.settings.timeout)
            .finish_non_exhaustive()
    }
}

impl JupyterHub {
    /// An authenticator for the Hub in `settings`; the URL and the durations are checked here.
    pub fn new(settings: JupyterHubSettings) -> Result<JupyterHub, JupyterHubError> {
        let trimmed = settings.api_url.trim().trim_end_matches('/');
        let mut parsed = reqwest::Url::parse(trimmed).map_err(|e| {
            JupyterHubError::Config(format!(
                "the JupyterHub API URL {:?} is not a URL: {e}",
                settings.api_url
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
            return Err(JupyterHubError::Config(format!(
                "the JupyterHub API URL {:?} is not an http(s) URL",
                settings.api_url
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(JupyterHubError::Config(format!(
                "the JupyterHub API URL {:?} must not have a query or fragment",
                settings.api_url
            )));
        }
        if settings.timeout.is_zero() {
            return Err(JupyterHubError::Config(
                "the JupyterHub timeout must not be zero".to_owned(),
            ));
        }
        if settings.cache_ttl > MAX_CACHE_TTL {
            return Err(JupyterHubError::Config(format!(
                "the JupyterHub cache TTL must be at most {} s (a revoked token works that long)",
                MAX_CACHE_TTL.as_secs()
            )));
        }
        let user_url = format!("{trimmed}/user");
        // Credentials in the URL stay out of messages and logs.
        let _ = parsed.set_password(None);
        let _ = parsed.set_username("");
        let shown_url = parsed.as_str().trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // The Hub API does not redirect; following one would send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("enterprise-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JupyterHubError::Client(error_chain(&e)))?;
        let cache = Cache::new(settings.max_cached);
        Ok(JupyterHub {
            inner: Arc::new(Inner {
                settings,
                user_url,
                shown_url,
                client,
                in_flight: Semaphore::new(MAX_IN_FLIGHT),
                cache: Mutex::new(cache),
            }),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &JupyterHubSettings {
        &self.inner.settings
    }

    /// Who owns `token`: from the cache while its answer is fresh, else from the Hub.
    pub async fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        let inner = &self.inner;
        let key = token_hash(token);
        let cached = inner.cache.lock().get(&key, Instant::now());
        let owner = match cached {
            Some(owner) => owner,
            None => {
                let owner = inner.ask(token).await?;
                inner.cache.lock().insert(
                    key,
                    owner.clone(),
                    Instant::now(),
                    inner.settings.cache_ttl,
                );
                owner
            }
        };
        Ok(Identity {
            user: owner.user,
            groups: owner.groups,
            roles: Roles::default(),
            method: "jupyterhub",
        })
    }

    /// How many tokens are cached now (expired ones not yet dropped included).
    pub fn cached(&self) -> usize {
        self.inner.cache.lock().len()
    }
}

#[async_trait::async_trait]
impl Authenticator for JupyterHub {
    fn name(&self) -> &'static str {
        "jupyterhub"
    }

    async fn authenticate(&self, credentials: &Credentials<'_>) -> Outcome {
        let Some(token) = credentials.any_token() else {
            return Outcome::Skip;
        };
        match self.verify(token).await {
            Ok(identity) => Outcome::Accept(identity),
            Err(rejection) => Outcome::Reject(rejection),
        }
    }
}

impl Inner {
    /// Asks the Hub, within the timeout (waiting for a free slot included).
    async fn ask(&self, token: &str) -> Result<Owner, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::new(INVALID));
        }
        let Ok(mut authorization) = HeaderValue::from_str(&format!("token {token}")) else {
            // Not sendable in a header, so not a token the Hub could have issued.
            return Err(Rejection::new(INVALID));
        };
        authorization.set_sensitive(true);
        let timeout = self.settings.timeout;
        let asked = tokio::time::timeout(timeout, async {
            let _permit = self.in_flight.acquire().await.map_err(|_| {
                Rejection::new(format!(
                    "JupyterHub at {} cannot be reached: the gateway is shutting down",
                    self.shown_url
                ))
            })?;
            self.get(authorization).await
        })
        .await;
        let (status, body) = match asked {
            Ok(answer) => answer?,
            Err(_) => {
                tracing::warn!(hub = %self.shown_url, "JupyterHub did not answer a token check in time");
                return Err(
                    self.unreachable(&format!("no answer within {} s", timeout.as_secs_f64()))
                );
            }
        };
        interpret(status, &body, &self.shown_url)
    }

    /// One `GET <api_url>/user`: the status and the (bounded) body.
    async fn get(&self, authorization: HeaderValue) -> Result<(StatusCode, Vec<u8>), Rejection> {
        let failed = |e: reqwest::Error| {
            let reason = error_chain(&e);
            tracing::warn!(hub = %self.shown_url, %reason, "JupyterHub cannot be reached");
            self.unreachable(&reason)
        };
        let mut response = self
            .client
            .get(&self.user_url)
            .header(http::header::AUTHORIZATION, authorization)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        let too_large = || {
            Rejection::new(format!(
                "JupyterHub at {} answered with more than {} KiB",
                self.shown_url,
                MAX_ANSWER_BYTES / 1024
            ))
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    fn unreachable(&self, reason: &str) -> Rejection {
        Rejection::new(format!(
            "JupyterHub at {} cannot be reached: {reason}",
            self.shown_url
        ))
    }
}

/// What the Hub said about a token: its owner, or why not.
fn interpret(status: StatusCode, body: &[u8], hub: &str) -> Result<Owner, Rejection> {
    if matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    ) {
        tracing::debug!(%hub, %status, "JupyterHub does not know the token");
        return Err(Rejection::new(INVALID));
    }
    if status.is_server_error() {
        tracing::warn!(%hub, %status, "JupyterHub failed a token check");
        return Err(Rejection::new(format!(
            "JupyterHub at {hub} cannot be reached: it answered {status}"
        )));
    }
    if !status.is_success() {
        tracing::warn!(%hub, %status, "unexpected JupyterHub answer to a token check");
        return Err(Rejection::new(format!(
            "JupyterHub at {hub} answered {status} (is the JupyterHub API URL right?)"
        )));
    }
    let model: UserModel = serde_json::from_slice(body).map_err(|e| {
        tracing::warn!(%hub, error = %e, "JupyterHub's answer to a token check is not a user model");
        Rejection::new(format!(
            "JupyterHub at {hub} answered with something that is not a user model"
        ))
    })?;
    match model.kind.as_deref() {
        None | Some("user") => {}
        Some("service") => {
            return Err(Rejection::new(
                "JupyterHub service tokens are not accepted; use a user's token",
            ));
        }
        Some(_) => {
            return Err(Rejection::new(format!(
                "JupyterHub at {hub} answered with a model that is not a user's"
            )));
        }
    }
    Ok(Owner {
        user: model.name,
        groups: model.groups.unwrap_or_default(),
    })
}

/// The fields of JupyterHub's user model that matter here (`GET /user`).
#[derive(Deserialize)]
struct UserModel {
    name: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
}

/// A token's owner as the Hub reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    user: String,
    groups: Vec<String>,
}

/// Successful answers by token hash, bounded in count, with one TTL for all.
#[derive(Debug)]
struct Cache {
    entries: HashMap<String, Cached>,
    /// Keys in insertion order, which with one TTL is expiry order. A key may appear more than
    /// once (inserted again after it expired); only the item whose expiry matches the entry
    /// owns it. Never longer than `capacity`, so neither is `entries`.
    order: VecDeque<(String, Instant)>,
    capacity: usize,
}

#[derive(Debug)]
struct Cached {
    owner: Owner,
    expires: Instant,
}

impl Cache {
    fn new(capacity: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<Owner> {
        let fresh = self.entries.get(key).map(|c| c.expires > now)?;
        if fresh {
            self.entries.get(key).map(|c| c.owner.clone())
        } else {
            self.entries.remove(key);
            None
        }
    }

    fn insert(&mut self, key: String, owner: Owner, now: Instant, ttl: Duration) {
        if self.capacity == 0 || ttl.is_zero() {
            return;
        }
        let Some(expires) = now.checked_add(ttl) else {
            return;
        };
        while self.order.front().is_some_and(|(_, e)| *e <= now) {
            self.pop_oldest();
        }
        while self.order.len() >= self.capacity {
            self.pop_oldest();
        }
        self.entries.insert(key.clone(), Cached { owner, expires });
        self.order.push_back((key, expires));
    }

    fn pop_oldest(&mut self) {
        if let Some((key, expires)) = self.order.pop_front()
            && self.entries.get(&key).is_some_and(|c| c.expires == expires)
        {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "http://hub:8081/hub/api";

    fn owner(user: &str) -> Owner {
        Owner {
            user: user.to_owned(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn answers_are_interpreted() {
        let ok = interpret(
            StatusCode::OK,
            br#"{"kind": "user", "name": "alice", "admin": true, "groups": ["staff"], "scopes": []}"#,
            HUB,
        );
        assert_eq!(
            ok,
            Ok(Owner {
                user: "alice".to_owned(),
                groups: vec!["staff".to_owned()],
            })
        );
        // A token without read:users:groups gets no groups; older Hubs may send no kind.
        assert_eq!(
            interpret(StatusCode::OK, br#"{"name": "bob"}"#, HUB),
            Ok(owner("bob"))
        );
        assert_eq!(
            interpret(StatusCode::OK, br#"{"name": "bob", "groups": null}"#, HUB),
            Ok(owner("bob"))
        );
        for refused in [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
        ] {
            assert_eq!(interpret(refused, b"{}", HUB), Err(Rejection::new(INVALID)));
        }
        let down = interpret(StatusCode::BAD_GATEWAY, b"", HUB);
        assert!(
            down.is_err_and(|r| r.message
                == "JupyterHub at http://hub:8081/hub/api cannot be reached: it answered 502 Bad Gateway")
        );
        assert!(
            interpret(StatusCode::FOUND, b"", HUB).is_err_and(|r| r.message.contains("302 Found"))
        );
        for garbage in [
            &b"<html>hello</html>"[..],
            b"",
            b"[]",
            br#"{"name": 7}"#,
            br#"{"kind": "user"}"#,
            br#"{"name": "alice", "groups": "staff"}"#,
            br#"{"name": "alice", "groups": [1]}"#,
        ] {
            assert!(
                interpret(StatusCode::OK, garbage, HUB)
                    .is_err_and(|r| r.message.contains("not a user model")),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
        assert!(
            interpret(
                StatusCode::OK,
                br#"{"kind": "service", "name": "alice"}"#,
                HUB
            )
            .is_err_and(|r| r.message.contains("service tokens"))
        );
        assert!(interpret(StatusCode::OK, br#"{"kind": "group", "name": "x"}"#, HUB).is_err());
    }

    #[test]
    fn the_cache_expires_and_is_bounded() {
        let ttl = Duration::from_secs(30);
        let start = Instant::now();
        let mut cache = Cache::new(3);
        cache.insert("a".to_owned(), owner("alice"), start, ttl);
        assert_eq!(cache.get("a", start), Some(owner("alice")));
        assert_eq!(cache.get("a", start + ttl), None, "expired");
        assert_eq!(cache.len(), 0, "an expired entry is dropped when seen");

        // Full: the oldest goes.
        for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let at = start + Duration::from_secs(i as u64);
            cache.insert(key.to_owned(), owner(key), at, ttl);
        }
        assert_eq!(cache.len(), 3);
        let now = start + Duration::from_secs(4);
        assert_eq!(cache.get("a", now), None);
        assert_eq!(cache.get("d", now), Some(owner("d")));

        // Expired entries go first, whatever their number.
        let later = start + Duration::from_secs(100);
        cache.insert("e".to_owned(), owner("e"), later, ttl);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.order.len(), 1);

        // Re-inserting a key keeps one entry; the stale queue item does not evict the new one.
        let mut cache = Cache::new(2);
        cache.insert("a".to_owned(), owner("old"), start, ttl);
        cache.insert(
            "a".to_owned(),
            owner("new"),
            start + Duration::from_secs(1),
            ttl,
        );
        cache.insert(
            "b".to_owned(),
            owner("b"),
            start + Duration::from_secs(2),
            ttl,
        );
        let now = start + Duration::from_secs(3);
        assert_eq!(cache.get("a", now), Some(owner("new")));
        assert_eq!(cache.get("b", now), Some(owner("b")));
        assert!(cache.order.len() <= 2);

        // Zero TTL or zero capacity: nothing is kept.
        let mut cache = Cache::new(0);
        cache.insert("a".to_owned(), owner("a"), start, ttl);
        assert_eq!(cache.len(), 0);
        let mut cache = Cache::new(5);
        cache.insert("a".to_owned(), owner("a"), start, Duration::ZERO);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn settings_are_checked() {
        assert!(JupyterHub::new(JupyterHubSettings::new(HUB)).is_ok());
        assert!(JupyterHub::new(JupyterHubSettings::new("http://hub/hub/api/")).is_ok());
        for bad in [
            "hub:8081/hub/api",
            "ftp://hub/api",
            "http://hub/api?x=1",
            "",
        ] {
            assert!(
                JupyterHub::new(JupyterHubSettings::new(bad)).is_err(),
                "{bad:?}"
            );
        }
        let mut zero = JupyterHubSettings::new(HUB);
        zero.timeout = Duration::ZERO;
        assert!(JupyterHub::new(zero).is_err());
        let mut long = JupyterHubSettings::new(HUB);
        long.cache_ttl = MAX_CACHE_TTL + Duration::from_secs(1);
        assert!(JupyterHub::new(long).is_err());
        let secret = JupyterHub::new(JupyterHubSettings::new("http://u:pw@hub/hub/api"))
            .map(|hub| format!("{hub:?}"))
            .unwrap_or_default();
        assert!(
            secret.contains("http://hub/hub/api") && !secret.contains("pw"),
            "{secret}"
        );
    }

    #[tokio::test]
    async fn credentials_and_an_unreachable_hub() {
        // Port 1 on loopback refuses at once.
        let hub = JupyterHub::new(JupyterHubSettings::new("http://127.0.0.1:1/hub/api"))
            .unwrap_or_else(|e| panic!("{e}"));
        let headers = http::HeaderMap::new();
        let none = Credentials {
            headers: &headers,
            query_token: None,
            client_certificate: None,
        };
        assert_eq!(hub.authenticate(&none).await, Outcome::Skip);

        let token = "0123456789abcdef0123456789abcdef";
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef0123456789abcdef"),
        );
        let bearer = Credentials {
            headers: &headers,
            query_token: None,
            client_certificate: None,
        };
        let Outcome::Reject(rejection) = hub.authenticate(&bearer).await else {
            panic!("an unreachable Hub must reject");
        };
        assert!(
            rejection
                .message
                .starts_with("JupyterHub at http://127.0.0.1:1/hub/api cannot be reached: "),
            "{rejection}"
        );
        assert!(!rejection.message.contains(token));
        assert_eq!(hub.cached(), 0, "failures are not cached");

        // A token that cannot be put into a header is refused without asking.
        assert_eq!(hub.verify("bad\ntoken").await, Err(Rejection::new(INVALID)));
        assert_eq!(
            hub.verify(&"x".repeat(MAX_TOKEN_BYTES + 1)).await,
            Err(Rejection::new(INVALID))
        );
    }
}
