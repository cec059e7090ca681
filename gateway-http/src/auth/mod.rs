//! Who is asking: authenticators, the identity they establish, and the user-name rule.
//!
//! Every API request passes through an [`Authenticators`] chain. Each [`Authenticator`] looks at
//! the request's [`Credentials`] and either claims them ([`Outcome::Accept`] with an
//! [`Identity`], or [`Outcome::Reject`] with a reason the client may read) or passes
//! ([`Outcome::Skip`]: not its kind of credential). The first acceptance wins; when nobody
//! accepts, the request is a 401 carrying the first rejection's reason.
//!
//! The backends:
//!
//! * [`SharedToken`]: Enterprise Gateway's one `auth_token`. It authenticates a *service*
//!   identity whose name and roles are configured; by default it may act for any user and sees
//!   every kernel, which is what existing EG deployments rely on.
//! * [`token_file::TokenFile`]: per-user tokens stored only as SHA-256 hashes in a TOML or JSON
//!   file, reloaded when the file changes.
//! * [`jwt::Jwt`]: bearer JWTs from an OIDC issuer, checked against its JWKS.
//! * [`jupyterhub::JupyterHub`]: JupyterHub API tokens, checked against the Hub's REST API.
//! * [`mtls::ClientCertificate`]: the verified TLS client certificate's subject.
//!
//! With no authenticator configured at all, every request is [`Identity::anonymous`]: Enterprise
//! Gateway's behaviour without `auth_token` (trusted to name any user, sees everything).
//!
//! **User names** are checked once, at the edge, by [`validate_user_name`]; everything past the
//! API (impersonation, SSH users, YARN's proxy user, log lines) can rely on the pattern.
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use http::header;
use rustls_pki_types::CertificateDer;

pub mod jupyterhub;
pub mod jwt;
pub mod mtls;
pub mod token_file;

/// What an identity may do beyond using its own kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    /// Sees and manages every user's kernels and sessions (the owner is shown).
    pub admin: bool,
    /// May start kernels for another user by sending `KERNEL_USERNAME` (a trusted service such
    /// as a Jupyter Server that serves several users through one token).
    pub impersonate: bool,
}

/// The role names accepted in configuration and token files.
pub const ROLE_NAMES: &[&str] = &["admin", "impersonate"];

impl Roles {
    /// Every role.
    pub const ALL: Roles = Roles {
        admin: true,
        impersonate: true,
    };

    /// Parses role names (`admin`, `impersonate`); an unknown name is an error naming it.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Roles, String> {
        let mut roles = Roles::default();
        for name in names {
            match name.as_ref().trim() {
                "" => {}
                "admin" => roles.admin = true,
                "impersonate" => roles.impersonate = true,
                other => {
                    return Err(format!(
                        "unknown role {other:?} (known roles: {})",
                        ROLE_NAMES.join(", ")
                    ));
                }
            }
        }
        Ok(roles)
    }

    /// The role names held, for listings and logs.
    pub fn names(self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.admin {
            names.push("admin");
        }
        if self.impersonate {
            names.push("impersonate");
        }
        names
    }

    /// Both sets together.
    pub fn union(self, other: Roles) -> Roles {
        Roles {
            admin: self.admin || other.admin,
            impersonate: self.impersonate || other.impersonate,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name (valid by [`validate_user_name`], except the legacy anonymous identity).
    pub user: String,
    /// Groups the authenticator reported (used by `authorized_users` entries `group:<name>` and
    /// by `admin_groups`).
    pub groups: Vec<String>,
    /// What the identity may do beyond its own kernels.
    pub roles: Roles,
    /// Which authenticator established it (`token`, `token-file`, `jwt`, `jupyterhub`, `mtls`,
    /// `none`), for audit lines.
    pub method: &'static str,
}

impl Identity {
    /// The caller when no authenticator is configured: Enterprise Gateway's trust-everyone mode.
    pub fn anonymous() -> Identity {
        Identity {
            user: "anonymous".to_owned(),
            groups: Vec::new(),
            roles: Roles::ALL,
            method: "none",
        }
    }

    /// Whether this caller may see and act on something owned by `owner`.
    pub fn may_access(&self, owner: &str) -> bool {
        self.roles.admin || self.user == owner
    }

    /// Whether this caller is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// A rejected credential: the message is safe to show the client (never the credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What was wrong, e.g. `token expired`.
    pub message: String,
}

impl Rejection {
    /// A rejection with this message.
    pub fn new(message: impl Into<String>) -> Rejection {
        Rejection {
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What one authenticator made of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not this authenticator's kind of credential (or none at all): ask the next one.
    Skip,
    /// The credential is valid and names this identity.
    Accept(Identity),
    /// The credential is of this authenticator's kind but not valid.
    Reject(Rejection),
}

/// What the server knows about the connection a request came on; the server puts it into every
/// request's extensions.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's TLS certificate (leaf, DER), verified against the client CA, if it sent one.
    pub client_certificate: Option<Arc<CertificateDer<'static>>>,
}

/// The parts of a request authenticators look at.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The `token` query argument, if present (EG accepts `?token=`).
    pub query_token: Option<&'a str>,
    /// The connection's verified client certificate.
    pub client_certificate: Option<&'a CertificateDer<'static>>,
}

impl<'a> Credentials<'a> {
    /// The token of `Authorization: token <t>` (EG's scheme, case-sensitive as in EG) or, when
    /// there is none, of `?token=`.
    pub fn token(&self) -> Option<&'a str> {
        self.query_token.or_else(|| self.scheme("token "))
    }

    /// The token of `Authorization: Bearer <t>` (scheme case-insensitive, RFC 6750).
    pub fn bearer(&self) -> Option<&'a str> {
        let value = self.authorization()?;
        let (scheme, rest) = value.split_at_checked(7)?;
        scheme
            .eq_ignore_ascii_case("bearer ")
            .then(|| rest.trim())
            .filter(|t| !t.is_empty())
    }

    /// The token of either scheme, or of `?token=` (JupyterHub accepts all three).
    pub fn any_token(&self) -> Option<&'a str> {
        self.token().or_else(|| self.bearer())
    }

    fn authorization(&self) -> Option<&'a str> {
        self.headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
    }

    fn scheme(&self, prefix: &str) -> Option<&'a str> {
        self.authorization()?.strip_prefix(prefix)
    }
}

/// One way of authenticating requests. Implementations must be cheap to call per request (cache
/// what they fetch) and must never put the credential into a rejection or a log line.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// A short name for logs (`token`, `jwt`, ...).
    fn name(&self) -> &'static str;
    /// Looks at one request's credentials.
    async fn authenticate(&self, credentials: &Credentials<'_>) -> Outcome;
    /// Re-reads whatever the authenticator loaded from disk (SIGHUP). The default does nothing.
    fn reload(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The gateway's authenticators, tried in order, and the role grants applied to whoever they
/// accept.
#[derive(Debug, Clone, Default)]
pub struct Authenticators {
    chain: Vec<Arc<dyn Authenticator>>,
    /// Users given the admin role whatever the authenticator said.
    pub admin_users: Vec<String>,
    /// Members of these groups get the admin role.
    pub admin_groups: Vec<String>,
}

impl Authenticators {
    /// No authenticator: every request is [`Identity::anonymous`].
    pub fn none() -> Authenticators {
        Authenticators::default()
    }

    /// A chain tried in the given order.
    pub fn new(chain: Vec<Arc<dyn Authenticator>>) -> Authenticators {
        Authenticators {
            chain,
            ..Authenticators::default()
        }
    }

    /// Enterprise Gateway's `auth_token` alone: the token authenticates the service identity
    /// [`SharedToken::DEFAULT_USER`] with every role (it may name any user and sees every kernel).
    pub fn shared_token(token: impl Into<String>) -> Authenticators {
        Authenticators::new(vec![Arc::new(SharedToken::new(
            token,
            SharedToken::DEFAULT_USER,
            Roles::ALL,
        ))])
    }

    /// Whether any authenticator is configured.
    pub fn is_enabled(&self) -> bool {
        !self.chain.is_empty()
    }

    /// The configured authenticators, in order.
    pub fn chain(&self) -> &[Arc<dyn Authenticator>] {
        &self.chain
    }

    /// Who sent `credentials`: the first authenticator that accepts, with the configured role
    /// grants added; otherwise the first rejection (or a generic one when every authenticator
    /// passed).
    pub async fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Identity, Rejection> {
        if self.chain.is_empty() {
            return Ok(Identity::anonymous());
        }
        let mut first_rejection = None;
        for authenticator in &self.chain {
            match authenticator.authenticate(credentials).await {
                Outcome::Accept(mut identity) => {
                    if let Err(message) = validate_user_name(&identity.user) {
                        tracing::warn!(
                            target: "audit",
                            authenticator = authenticator.name(),
                            "authentication refused: the identity's user name is not acceptable ({message})"
                        );
                        return Err(Rejection::new(format!(
                            "the user name given by the {} authenticator is not acceptable: {message}",
                            authenticator.name()
                        )));
                    }
                    self.grant(&mut identity);
                    return Ok(identity);
                }
                Outcome::Reject(rejection) => {
                    tracing::debug!(authenticator = authenticator.name(), %rejection, "credential rejected");
                    first_rejection.get_or_insert(rejection);
                }
                Outcome::Skip => {}
            }
        }
        Err(first_rejection.unwrap_or_else(|| Rejection::new("no valid credentials were sent")))
    }

    /// Re-reads every authenticator's files; returns the errors (the old state stays in force
    /// for an authenticator whose reload failed).
    pub fn reload(&self) -> Vec<String> {
        self.chain
            .iter()
            .filter_map(|a| a.reload().err().map(|e| format!("{}: {e}", a.name())))
            .collect()
    }

    fn grant(&self, identity: &mut Identity) {
        if self.admin_users.contains(&identity.user)
            || self.admin_groups.iter().any(|g| identity.in_group(g))
        {
            identity.roles.admin = true;
        }
    }
}

/// Longest accepted user name, realm included.
pub const MAX_USER_NAME_LEN: usize = 64;

/// The user-name rule, applied at the edge to every name a client sends or an authenticator
/// reports:
///
/// * a POSIX portable name: letters, digits, `.`, `_`, `-`, not starting with `-` or `.`;
/// * optionally followed by `@` and a realm or domain of letters, digits, `.` and `-` (Kerberos
///   principals `alice@EXAMPLE.COM`, e-mail style OIDC names);
/// * at most [`MAX_USER_NAME_LEN`] characters.
///
/// Everything else (shell syntax, quotes, slashes, spaces, NUL and control characters, non-ASCII)
/// is refused; the error says why without echoing the name.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".to_owned());
    }
    if name.len() > MAX_USER_NAME_LEN {
        return Err(format!("it is longer than {MAX_USER_NAME_LEN} characters"));
    }
    let (local, realm) = match name.split_once('@') {
        Some((local, realm)) => (local, Some(realm)),
        None => (name, None),
    };
    let portable = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if local.is_empty() || local.starts_with(['-', '.']) || !local.chars().all(portable) {
        return Err(
            "it must be a POSIX portable name (letters, digits, '.', '_', '-', not starting with '-' or '.')"
                .to_owned(),
        );
    }
    if let Some(realm) = realm {
        let realm_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-');
        if realm.is_empty()
            || realm.starts_with(['-', '.'])
            || realm.ends_with(['-', '.'])
            || !realm.chars().all(realm_char)
        {
            return Err(
                "the part after '@' must be a realm or domain (letters, digits, '.', '-')"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

/// Enterprise Gateway's shared `auth_token`, authenticating one service identity.
pub struct SharedToken {
    token: String,
    identity: Identity,
}

impl fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedToken")
            .field("user", &self.identity.user)
            .field("roles", &self.identity.roles)
            .finish_non_exhaustive()
    }
}

impl SharedToken {
    /// The default service user name of the shared token.
    pub const DEFAULT_USER: &'static str = "gateway-service";

    /// Accepts `token` as `user` with `roles` (EG's behaviour: [`Roles::ALL`]).
    pub fn new(token: impl Into<String>, user: impl Into<String>, roles: Roles) -> SharedToken {
        SharedToken {
            token: token.into(),
            identity: Identity {
                user: user.into(),
                groups: Vec::new(),
                roles,
                method: "token",
            },
        }
    }
}

#[async_trait::async_trait]
impl Authenticator for SharedToken {
    fn name(&self) -> &'static str {
        "token"
    }

    async fn authenticate(&self, credentials: &Credentials<'_>) -> Outcome {
        // EG's schemes only (`Authorization: token`, `?token=`). A token that is not this one
        // is refused, but the chain still asks the authenticators after this one.
        match credentials.token() {
            Some(given) if constant_time_eq(given.as_bytes(), self.token.as_bytes()) => {
                Outcome::Accept(self.identity.clone())
            }
            Some(_) => Outcome::Reject(Rejection::new("invalid token")),
            None => Outcome::Skip,
        }
    }
}

/// Equality whose time does not depend on where the inputs differ (only on their lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error and its sources, joined (an HTTP client's own message alone rarely
/// says what failed); the authenticators that ask a server over HTTP explain failures with it.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// SHA-256 of a token as lower-case hex: how token files store tokens and caches key them.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in [
            "alice",
            "bob.smith",
            "svc_1",
            "a-b",
            "alice@EXAMPLE.COM",
            "first.last@example.org",
            "x",
        ] {
            assert!(validate_user_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-rf",
            ".hidden",
            "a b",
            "a;rm -rf /",
            "$(id)",
            "`id`",
            "a'b",
            "a\"b",
            "../etc",
            "a/b",
            "a\0b",
            "a\nb",
            "ä",
            "a@",
            "a@-x",
            "a@b@c",
            "@realm",
            &"a".repeat(MAX_USER_NAME_LEN + 1),
        ] {
            assert!(validate_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles_parse_and_name() {
        assert_eq!(Roles::parse(&["admin", " impersonate", ""]), Ok(Roles::ALL));
        assert_eq!(Roles::parse::<&str>(&[]), Ok(Roles::default()));
        assert!(Roles::parse(&["root"]).is_err_and(|e| e.contains("root")));
        assert_eq!(Roles::ALL.names(), ["admin", "impersonate"]);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                *name,
                value.parse().unwrap_or(http::HeaderValue::from_static("")),
            );
        }
        map
    }

    #[test]
    fn credentials_find_tokens() {
        let h = headers(&[("authorization", "token abc")]);
        let c = Credentials {
            headers: &h,
            query_token: None,
            client_certificate: None,
        };
        assert_eq!(c.token(), Some("abc"));
        assert_eq!(c.bearer(), None);
        let h = headers(&[("authorization", "bearer xyz")]);
        let c = Credentials {
            headers: &h,
            query_token: Some("q"),
            client_certificate: None,
        };
        assert_eq!(c.token(), Some("q"));
        assert_eq!(c.bearer(), Some("xyz"));
        let h = headers(&[("authorization", "Token abc")]);
        let c = Credentials {
            headers: &h,
            query_token: None,
            client_certificate: None,
        };
        assert_eq!(c.any_token(), None, "EG's `token` scheme is case-sensitive");
    }

    #[tokio::test]
    async fn chain_order_grants_and_rejections() {
        let chain = Authenticators {
            admin_users: vec!["ops".to_owned()],
            ..Authenticators::new(vec![
                Arc::new(SharedToken::new("s3cret", "ops", Roles::default())),
                Arc::new(SharedToken::new("other", "svc", Roles::ALL)),
            ])
        };
        let h = HeaderMap::new();
        let creds = |token| Credentials {
            headers: &h,
            query_token: token,
            client_certificate: None,
        };
        let ops = chain.authenticate(&creds(Some("s3cret"))).await;
        assert!(
            ops.as_ref()
                .is_ok_and(|i| i.user == "ops" && i.roles.admin && !i.roles.impersonate)
        );
        let svc = chain.authenticate(&creds(Some("other"))).await;
        assert!(svc.is_ok_and(|i| i.user == "svc"));
        let wrong = chain.authenticate(&creds(Some("nope"))).await;
        assert_eq!(wrong, Err(Rejection::new("invalid token")));
        let none = chain.authenticate(&creds(None)).await;
        assert!(none.is_err());
        assert_eq!(
            Authenticators::none().authenticate(&creds(None)).await,
            Ok(Identity::anonymous())
        );
    }

    #[tokio::test]
    async fn an_authenticator_naming_a_hostile_user_is_refused() {
        let chain = Authenticators::new(vec![Arc::new(SharedToken::new(
            "t",
            "bad user",
            Roles::default(),
        ))]);
        let h = HeaderMap::new();
        let result = chain
            .authenticate(&Credentials {
                headers: &h,
                query_token: Some("t"),
                client_certificate: None,
            })
            .await;
        assert!(result.is_err_and(|r| r.message.contains("not acceptable")));
    }
}
