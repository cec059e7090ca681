//! What each authenticator costs per request: one `Authenticators::authenticate` call, the way
//! the guard makes it for every API request, with the credential each one accepts.
//!
//! `cargo bench -p gateway-http --bench auth`
//!
//! The JWT authenticator reads its keys from a JWKS served on loopback by this program and the
//! JupyterHub authenticator asks a loopback stand-in for the Hub's `GET /user` (the real Hub is
//! exercised by the integration tests; here only our side of the exchange is timed). After the
//! first request both answer from their caches, which is the per-request cost that matters;
//! `jupyterhub_uncached` times the round trip to the stand-in on every request.
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use divan::Bencher;
use gateway_http::auth::jupyterhub::{JupyterHub, JupyterHubSettings};
use gateway_http::auth::jwt::{Jwt, JwtSettings};
use gateway_http::auth::mtls::{ClientCertificate, UserField};
use gateway_http::auth::token_file::TokenFile;
use gateway_http::auth::{
    Authenticator, Authenticators, Credentials, Roles, SharedToken, token_hash,
};
use http::HeaderMap;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

fn main() {
    divan::main();
}

const AUDIENCE: &str = "eg-bench";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

/// Times `chain.authenticate` for a request with `authorization` (and a client certificate).
fn run(
    bencher: Bencher<'_, '_>,
    rt: &tokio::runtime::Runtime,
    chain: &Authenticators,
    authorization: Option<&str>,
    certificate: Option<&CertificateDer<'static>>,
) {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(
            http::header::AUTHORIZATION,
            value.parse().unwrap_or_else(|e| panic!("header: {e}")),
        );
    }
    let credentials = Credentials {
        headers: &headers,
        query_token: None,
        client_certificate: certificate,
    };
    // Warm caches (JWKS, Hub answers) outside the timing.
    let first = rt.block_on(chain.authenticate(&credentials));
    assert!(
        first.is_ok(),
        "the benchmark's credential is refused: {first:?}"
    );
    bencher.bench_local(|| rt.block_on(chain.authenticate(divan::black_box(&credentials))));
}

fn single(authenticator: impl Authenticator + 'static) -> Authenticators {
    Authenticators::new(vec![Arc::new(authenticator)])
}

#[divan::bench]
fn none(bencher: Bencher<'_, '_>) {
    run(bencher, &runtime(), &Authenticators::none(), None, None);
}

#[divan::bench]
fn shared_token(bencher: Bencher<'_, '_>) {
    let chain = Authenticators::shared_token("0123456789abcdef0123456789abcdef");
    run(
        bencher,
        &runtime(),
        &chain,
        Some("token 0123456789abcdef0123456789abcdef"),
        None,
    );
}

#[divan::bench(args = [1, 10_000])]
fn token_file(bencher: Bencher<'_, '_>, entries: usize) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("tokens.toml");
    let mut text = String::new();
    for i in 0..entries {
        let token = format!("token-{i:08}");
        text.push_str(&format!(
            "[[tokens]]\nid = \"t{i}\"\nuser = \"user{i}\"\nsha256 = \"{}\"\n\n",
            token_hash(&token)
        ));
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write: {e}"));
    let file = TokenFile::open(&path).unwrap_or_else(|e| panic!("token file: {e}"));
    let last = format!("token token-{:08}", entries - 1);
    run(bencher, &runtime(), &single(file), Some(&last), None);
}

#[divan::bench]
fn mtls(bencher: Bencher<'_, '_>) {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
    let cert = params
        .self_signed(&key)
        .unwrap_or_else(|e| panic!("cert: {e}"));
    let der = CertificateDer::from(cert.der().to_vec());
    let chain = single(ClientCertificate::new(UserField::CommonName));
    run(bencher, &runtime(), &chain, None, Some(&der));
}

#[divan::bench(args = ["RS256", "ES256"])]
fn jwt(bencher: Bencher<'_, '_>, alg: &str) {
    let rt = runtime();
    let (jwk, token) = signed_token(alg);
    let server = rt.block_on(serve(move |issuer| {
        axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get({
                    let issuer = issuer.clone();
                    move || async move {
                        axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}))
                    }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let jwk = jwk.clone();
                    async move { axum::Json(json!({"keys": [jwk]})) }
                }),
            )
    }));
    let token = token(&server);
    let jwt = Jwt::new(JwtSettings::new(server.clone(), vec![AUDIENCE.to_owned()]))
        .unwrap_or_else(|e| panic!("jwt: {e}"));
    run(
        bencher,
        &rt,
        &single(jwt),
        Some(&format!("Bearer {token}")),
        None,
    );
}

#[divan::bench(args = [true, false])]
fn jupyterhub(bencher: Bencher<'_, '_>, cached: bool) {
    let rt = runtime();
    let hub = rt.block_on(serve(|_| {
        axum::Router::new().route(
            "/hub/api/user",
            axum::routing::get(|| async {
                axum::Json(
                    json!({"kind": "user", "name": "alice", "admin": false, "groups": ["staff"]}),
                )
            }),
        )
    }));
    let mut settings = JupyterHubSettings::new(format!("{hub}/hub/api"));
    if !cached {
        settings.cache_ttl = Duration::ZERO;
    }
    let authenticator = JupyterHub::new(settings).unwrap_or_else(|e| panic!("hub: {e}"));
    run(
        bencher,
        &rt,
        &single(authenticator),
        Some("token 0123456789abcdef0123456789abcdef"),
        None,
    );
}

/// A chain as a JupyterHub deployment with a service token might run it: the token tried first.
#[divan::bench]
fn chain_token_then_jupyterhub(bencher: Bencher<'_, '_>) {
    let rt = runtime();
    let hub = rt.block_on(serve(|_| {
        axum::Router::new().route(
            "/hub/api/user",
            axum::routing::get(|| async { axum::Json(json!({"kind": "user", "name": "alice"})) }),
        )
    }));
    let chain = Authenticators::new(vec![
        Arc::new(SharedToken::new("service-token", "service", Roles::ALL)),
        Arc::new(
            JupyterHub::new(JupyterHubSettings::new(format!("{hub}/hub/api")))
                .unwrap_or_else(|e| panic!("hub: {e}")),
        ),
    ]);
    run(bencher, &rt, &chain, Some("token user-token-123"), None);
}

/// Serves the router `make(base_url)` on a loopback port for the rest of the process; returns
/// its base URL.
async fn serve(make: impl FnOnce(String) -> axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"))
    );
    let app = make(base.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

/// Signs a valid token for the issuer it is given.
type Mint = Box<dyn Fn(&str) -> String>;

/// A fresh key for `alg` as a JWK, and a function signing a valid token for a given issuer.
fn signed_token(alg: &str) -> (Value, Mint) {
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let claims = |issuer: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        json!({"iss": issuer, "aud": AUDIENCE, "exp": now + 3600, "iat": now,
               "preferred_username": "alice", "groups": ["staff"]})
    };
    let header = json!({"alg": alg, "typ": "JWT", "kid": "k1"});
    let rng = SystemRandom::new();
    if alg == "RS256" {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap_or_else(|e| panic!("rsa: {e}"));
        let public = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let jwk = json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
                         "n": b64(&public.n), "e": b64(&public.e)});
        let sign = move |issuer: &str| {
            let message = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims(issuer).to_string().as_bytes())
            );
            let mut signature = vec![0; pair.public_modulus_len()];
            pair.sign(&RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut signature)
                .unwrap_or_else(|e| panic!("sign: {e}"));
            format!("{message}.{}", b64(&signature))
        };
        (jwk, Box::new(sign))
    } else {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .unwrap_or_else(|e| panic!("ec: {e}"));
        let point = pair.public_key().as_ref().to_vec();
        let jwk = json!({"kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": "k1",
                         "x": b64(point.get(1..33).unwrap_or_default()),
                         "y": b64(point.get(33..65).unwrap_or_default())});
        let sign = move |issuer: &str| {
            let message = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims(issuer).to_string().as_bytes())
            );
            let signature = pair
                .sign(&rng, message.as_bytes())
                .unwrap_or_else(|e| panic!("sign: {e}"));
            format!("{message}.{}", b64(signature.as_ref()))
        };
        (jwk, Box::new(sign))
    }
}
