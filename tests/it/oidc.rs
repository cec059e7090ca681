//! Bearer JWTs from an OIDC issuer, against the built gateway.
//!
//! [`Issuer`] is a small OpenID Connect issuer run by the test on loopback: it serves a discovery
//! document and a JWKS holding an RSA (RS256) and an EC P-256 (ES256) key it generated, and
//! mints tokens signed with them (aws-lc-rs signs; the JWT is assembled here, independently of
//! the gateway's JWT library). The gateway runs with `--oidc_issuer` pointing at it, and every
//! case of the issue is sent as `Authorization: Bearer …` over plain HTTP/1.1.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
    RsaPublicKeyComponents,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::support::{Gateway, GatewayConfig, Impl, http_request};

/// The audience the gateway is configured with and [`Issuer::mint`] puts into `aud`.
pub(crate) const AUDIENCE: &str = "eg-test";

/// The kid of the issuer's RSA key.
pub(crate) const RSA_KID: &str = "rsa-1";
/// The kid of the issuer's EC key.
pub(crate) const EC_KID: &str = "ec-1";

/// A signing key of the test issuer.
pub(crate) struct SigningKey {
    kid: String,
    pair: Pair,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl SigningKey {
    /// A fresh RSA-2048 key for RS256.
    pub(crate) fn rsa(kid: &str) -> Result<SigningKey> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|e| anyhow!("RSA key: {e}"))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            pair: Pair::Rsa(pair),
        })
    }

    /// A fresh P-256 key for ES256.
    pub(crate) fn ec(kid: &str) -> Result<SigningKey> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|e| anyhow!("EC key: {e}"))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            pair: Pair::Ec(pair),
        })
    }

    /// `RS256` or `ES256`.
    pub(crate) fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::Ec(_) => "ES256",
        }
    }

    /// The public key as a JWK.
    pub(crate) fn jwk(&self) -> Value {
        match &self.pair {
            Pair::Rsa(pair) => {
                let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                    "n": URL_SAFE_NO_PAD.encode(&public.n),
                    "e": URL_SAFE_NO_PAD.encode(&public.e),
                })
            }
            Pair::Ec(pair) => {
                // Uncompressed point: 0x04, x (32 bytes), y (32 bytes).
                let point = pair.public_key().as_ref();
                let x = point.get(1..33).unwrap_or_default();
                let y = point.get(33..65).unwrap_or_default();
                json!({
                    "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(x),
                    "y": URL_SAFE_NO_PAD.encode(y),
                })
            }
        }
    }

    /// A compact JWS of `claims` with header `{"alg", "typ", "kid"}`.
    pub(crate) fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid});
        let message = format!("{}.{}", b64_json(&header), b64_json(claims));
        let rng = SystemRandom::new();
        let signature = match &self.pair {
            Pair::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut signature)
                    .map_err(|e| anyhow!("RSA signing: {e}"))?;
                signature
            }
            Pair::Ec(pair) => pair
                .sign(&rng, message.as_bytes())
                .map_err(|e| anyhow!("EC signing: {e}"))?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the issuer's server thread shares with the test.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    published: Mutex<Vec<Value>>,
    discovery_requests: AtomicUsize,
    jwks_requests: AtomicUsize,
}

/// A minimal OIDC issuer on loopback (discovery document at
/// `/.well-known/openid-configuration`, JWKS at `/jwks`), stopped when dropped.
pub(crate) struct Issuer {
    url: String,
    addr: SocketAddr,
    rsa: SigningKey,
    ec: SigningKey,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Generates the RSA and EC keys, publishes both, and serves on a free loopback port.
    pub(crate) fn start() -> Result<Issuer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the issuer")?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let rsa = SigningKey::rsa(RSA_KID)?;
        let ec = SigningKey::ec(EC_KID)?;
        let shared = Arc::new(Shared::default());
        shared
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([rsa.jwk(), ec.jwk()]);
        let thread = {
            let shared = Arc::clone(&shared);
            let url = url.clone();
            std::thread::spawn(move || serve(&listener, &url, &shared))
        };
        Ok(Issuer {
            url,
            addr,
            rsa,
            ec,
            shared,
            thread: Some(thread),
        })
    }

    /// The issuer identifier (what `--oidc_issuer` and the tokens' `iss` say).
    pub(crate) fn url(&self) -> String {
        self.url.clone()
    }

    /// The JWKS URL (what `--oidc_jwks_url` would say).
    pub(crate) fn jwks_url(&self) -> String {
        format!("{}/jwks", self.url)
    }

    /// The issuer's RS256 key.
    pub(crate) fn rsa_key(&self) -> &SigningKey {
        &self.rsa
    }

    /// The issuer's ES256 key.
    pub(crate) fn ec_key(&self) -> &SigningKey {
        &self.ec
    }

    /// Valid claims for `user` in `groups`: this issuer, [`AUDIENCE`], five minutes to live.
    pub(crate) fn claims(&self, user: &str, groups: &[&str]) -> Value {
        let now = unix_now();
        json!({
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": format!("id-{user}"),
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "preferred_username": user,
            "groups": groups,
        })
    }

    /// A valid RS256 token for `user` in `groups`.
    pub(crate) fn mint(&self, user: &str, groups: &[&str]) -> Result<String> {
        self.rsa.sign(&self.claims(user, groups))
    }

    /// Adds `key` to the served JWKS.
    pub(crate) fn publish(&self, key: &SigningKey) {
        self.shared
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key.jwk());
    }

    /// How often the JWKS was fetched.
    pub(crate) fn jwks_requests(&self) -> usize {
        self.shared.jwks_requests.load(Ordering::SeqCst)
    }

    /// How often the discovery document was fetched.
    pub(crate) fn discovery_requests(&self) -> usize {
        self.shared.discovery_requests.load(Ordering::SeqCst)
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The issuer's accept loop: one request per connection, answered and closed.
fn serve(listener: &TcpListener, url: &str, shared: &Shared) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if let Ok(stream) = stream {
            let _ = answer(stream, url, shared);
        }
    }
}

fn answer(mut stream: TcpStream, url: &str, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let (status, body) = match path {
        "/.well-known/openid-configuration" => {
            shared.discovery_requests.fetch_add(1, Ordering::SeqCst);
            let doc = json!({
                "issuer": url,
                "jwks_uri": format!("{url}/jwks"),
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            });
            ("200 OK", doc.to_string())
        }
        "/jwks" => {
            shared.jwks_requests.fetch_add(1, Ordering::SeqCst);
            let keys = shared
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            ("200 OK", json!({ "keys": keys }).to_string())
        }
        _ => ("404 Not Found", "{}".to_owned()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// `GET path` with an optional `Authorization` header value; the status and the body.
fn get(gateway: &Gateway, path: &str, authorization: Option<&str>) -> Result<(u16, String)> {
    let headers: Vec<(&str, &str)> = authorization
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    let response = http_request(gateway.port, "GET", path, &headers, b"")?;
    Ok((response.status, response.text()))
}

/// Sends `token` as a bearer token and expects a 401 whose message contains `expected`.
fn expect_unauthorized(gateway: &Gateway, token: &str, expected: &str) -> Result<()> {
    let (status, body) = get(
        gateway,
        "/api/kernelspecs",
        Some(&format!("Bearer {token}")),
    )?;
    if status != 401 {
        bail!("expected 401 ({expected}), got {status}: {body}");
    }
    let json: Value =
        serde_json::from_str(&body).with_context(|| format!("401 body is not JSON: {body}"))?;
    let message = json
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if json.get("reason").and_then(Value::as_str) != Some("Unauthorized")
        || !message.contains(expected)
    {
        bail!("expected {{\"reason\":\"Unauthorized\",\"message\":…{expected}…}}, got {body}");
    }
    if message.contains(token) {
        bail!("the 401 message repeats the token: {body}");
    }
    Ok(())
}

fn expect_ok(gateway: &Gateway, path: &str, token: &str) -> Result<String> {
    let (status, body) = get(gateway, path, Some(&format!("Bearer {token}")))?;
    if status != 200 {
        bail!("GET {path} with a valid token answered {status}: {body}");
    }
    Ok(body)
}

fn oidc_gateway(issuer: &Issuer, extra: &[String]) -> Result<Gateway> {
    let mut args = vec![
        format!("--oidc_issuer={}", issuer.url()),
        format!("--oidc_audience={AUDIENCE}"),
    ];
    args.extend_from_slice(extra);
    Gateway::start(
        Impl::Ours,
        &GatewayConfig {
            args,
            ..GatewayConfig::default()
        },
    )
}

#[test]
fn e2e_oidc_bearer_tokens() -> Result<()> {
    let issuer = Issuer::start()?;
    // Refresh on every unknown kid, so the rotation below needs no waiting.
    let mut gateway = oidc_gateway(&issuer, &["--oidc_jwks_refresh_interval=0".to_owned()])?;
    let mut sent = Vec::new();

    // Valid RS256 and ES256 tokens.
    let rs256 = issuer.mint("alice", &["staff"])?;
    expect_ok(&gateway, "/api/kernelspecs", &rs256)?;
    let kernels = expect_ok(&gateway, "/api/kernels", &rs256)?;
    if serde_json::from_str::<Value>(&kernels)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        != Some(0)
    {
        bail!("alice's kernel list is not empty: {kernels}");
    }
    let es256 = issuer.ec_key().sign(&issuer.claims("bob", &[]))?;
    expect_ok(&gateway, "/api/kernelspecs", &es256)?;
    if issuer.discovery_requests() != 1 || issuer.jwks_requests() != 1 {
        bail!(
            "known keys were fetched again: {} discovery and {} JWKS requests",
            issuer.discovery_requests(),
            issuer.jwks_requests()
        );
    }
    sent.extend([rs256.clone(), es256]);

    // No credentials, and a bearer value that is no JWT (passed on, so nobody accepts).
    let (status, body) = get(&gateway, "/api/kernelspecs", None)?;
    assert_eq!(status, 401, "{body}");
    expect_unauthorized(&gateway, "0123456789abcdef", "no valid credentials")?;

    let with = |field: &str, value: Value| {
        let mut claims = issuer.claims("alice", &["staff"]);
        claims[field] = value;
        claims
    };
    let now = unix_now();
    let cases = [
        (with("exp", json!(now - 3600)), "token expired"),
        (with("nbf", json!(now + 3600)), "token not valid yet"),
        (with("aud", json!("another-service")), "wrong audience"),
        (with("iss", json!("http://evil.example")), "wrong issuer"),
        (
            with("preferred_username", json!("a;rm -rf /")),
            "not acceptable",
        ),
        (
            with("preferred_username", json!(null)),
            "claim preferred_username missing",
        ),
    ];
    for (claims, expected) in cases {
        let token = issuer.rsa_key().sign(&claims)?;
        expect_unauthorized(&gateway, &token, expected)?;
        sent.push(token);
    }

    // Unsigned (`alg: none`) and HMAC tokens are refused by algorithm.
    let claims = b64_json(&issuer.claims("alice", &[]));
    let unsigned = format!(
        "{}.{claims}.",
        b64_json(&json!({"alg": "none", "typ": "JWT"}))
    );
    expect_unauthorized(
        &gateway,
        &unsigned,
        "unsupported algorithm none (RS256 and ES256 are accepted)",
    )?;
    let hs256 = format!(
        "{}.{claims}.{}",
        b64_json(&json!({"alg": "HS256", "kid": RSA_KID})),
        URL_SAFE_NO_PAD.encode([7u8; 32])
    );
    expect_unauthorized(&gateway, &hs256, "unsupported algorithm HS256")?;

    // A tampered payload keeps the signature of the original.
    let mut parts: Vec<String> = rs256.split('.').map(str::to_owned).collect();
    if let Some(payload) = parts.get_mut(1) {
        *payload = b64_json(&issuer.claims("root", &["admin"]));
    }
    let tampered = parts.join(".");
    expect_unauthorized(&gateway, &tampered, "invalid signature")?;
    sent.extend([unsigned, hs256, tampered]);

    // A key the issuer has not published yet: refused, naming the kid; once published, the
    // same token is accepted (the unknown kid made the gateway fetch the JWKS again).
    let rotated = SigningKey::rsa("rotated-2")?;
    let token = rotated.sign(&issuer.claims("carol", &[]))?;
    let before = issuer.jwks_requests();
    expect_unauthorized(
        &gateway,
        &token,
        "no key with kid \"rotated-2\" at the issuer",
    )?;
    issuer.publish(&rotated);
    expect_ok(&gateway, "/api/kernelspecs", &token)?;
    if issuer.jwks_requests() < before + 2 {
        bail!("the unknown kid did not make the gateway fetch the JWKS");
    }
    sent.push(token);

    let log = gateway.proc.log_text();
    for token in &sent {
        let signature = token.rsplit('.').next().unwrap_or_default();
        if log.contains(token.as_str()) || (!signature.is_empty() && log.contains(signature)) {
            bail!("the gateway log contains a token:\n{log}");
        }
    }
    if !log.contains("authentication failed") {
        bail!("no audit line for the refused tokens:\n{log}");
    }
    gateway.proc.mark_passed();
    Ok(())
}

#[test]
fn e2e_oidc_configured_jwks_url_and_refresh_rate_limit() -> Result<()> {
    let issuer = Issuer::start()?;
    let mut gateway = oidc_gateway(
        &issuer,
        &[
            format!("--oidc_jwks_url={}", issuer.jwks_url()),
            "--oidc_jwks_refresh_interval=3600".to_owned(),
            "--oidc_user_claim=sub".to_owned(),
        ],
    )?;
    let token = issuer.mint("dave", &[])?;
    expect_ok(&gateway, "/api/kernelspecs", &token)?;
    if issuer.discovery_requests() != 0 || issuer.jwks_requests() != 1 {
        bail!(
            "with --oidc_jwks_url: {} discovery and {} JWKS requests (want 0 and 1)",
            issuer.discovery_requests(),
            issuer.jwks_requests()
        );
    }
    // Unknown kids within the refresh interval fetch nothing more.
    let stranger = SigningKey::ec("unknown-ec")?;
    for _ in 0..3 {
        let token = stranger.sign(&issuer.claims("eve", &[]))?;
        expect_unauthorized(&gateway, &token, "no key with kid \"unknown-ec\"")?;
    }
    let fetches = issuer.jwks_requests();
    if fetches != 1 {
        bail!("{fetches} JWKS requests: unknown kids were not rate-limited");
    }

    // Once the issuer is gone, known keys keep working without it.
    drop(issuer);
    expect_ok(&gateway, "/api/kernelspecs", &token)?;
    gateway.proc.mark_passed();
    Ok(())
}

#[test]
fn e2e_oidc_unreachable_issuer_and_missing_audience() -> Result<()> {
    // A port nobody listens on: requests fail with the reason, promptly, and the gateway lives.
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let issuer_url = format!("http://{closed}");
    let mut gateway = Gateway::start(
        Impl::Ours,
        &GatewayConfig {
            args: vec![
                format!("--oidc_issuer={issuer_url}"),
                format!("--oidc_audience={AUDIENCE}"),
            ],
            ..GatewayConfig::default()
        },
    )?;
    let unsigned_but_shaped = format!(
        "{}.{}.{}",
        b64_json(&json!({"alg": "RS256", "kid": "k"})),
        b64_json(&json!({"iss": issuer_url})),
        URL_SAFE_NO_PAD.encode([1u8; 256])
    );
    expect_unauthorized(
        &gateway,
        &unsigned_but_shaped,
        "the issuer's keys cannot be fetched",
    )?;
    let (status, body) = get(&gateway, "/api", None)?;
    assert!(
        matches!(status, 200 | 401),
        "the gateway still answers: {status} {body}"
    );
    gateway.proc.mark_passed();
    drop(gateway);

    let refused = Gateway::start(
        Impl::Ours,
        &GatewayConfig {
            args: vec![format!("--oidc_issuer={issuer_url}")],
            ..GatewayConfig::default()
        },
    );
    match refused {
        Ok(_) => bail!("the gateway started with --oidc_issuer but no --oidc_audience"),
        Err(error) => {
            let text = format!("{error:#}");
            if !text.contains("--oidc_audience is required") {
                bail!("the configuration error does not name --oidc_audience: {text}");
            }
        }
    }
    Ok(())
}
