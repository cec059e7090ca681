//! The authenticator chain from the options: which authenticators, in which order, with what
//! settings. Validated here once; the library only runs the chain.

use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use gateway_http::auth::jupyterhub::{JupyterHub, JupyterHubSettings};
use gateway_http::auth::jwt::{Jwt, JwtSettings};
use gateway_http::auth::mtls::{ClientCertificate, UserField};
use gateway_http::auth::{Authenticator, Authenticators, Roles, SharedToken, validate_user_name};

use crate::settings::Reader;

/// The authenticator names `--authenticators` accepts, in the default order.
pub(crate) const KINDS: &[&str] = &["mtls", "token", "token_file", "jwt", "jupyterhub"];

/// Which authenticators run, in which order: `--authenticators` when given, else every one
/// whose settings are present, in [`KINDS`] order.
fn chosen(r: &Reader<'_>) -> anyhow::Result<Vec<String>> {
    let listed = r.list("authenticators");
    if !listed.is_empty() {
        for name in &listed {
            if !KINDS.contains(&name.as_str()) {
                bail!(
                    "--authenticators: unknown authenticator {name:?} (known: {})",
                    KINDS.join(", ")
                );
            }
        }
        return Ok(listed);
    }
    let configured = |kind: &str| match kind {
        "mtls" => r.text("client_ca").is_some(),
        "token" => r.text("auth_token").is_some(),
        "token_file" => r.text("token_file").is_some(),
        "jwt" => r.text("oidc_issuer").is_some(),
        "jupyterhub" => r.text("jupyterhub_api_url").is_some(),
        _ => false,
    };
    Ok(KINDS
        .iter()
        .filter(|kind| configured(kind))
        .map(|kind| (*kind).to_owned())
        .collect())
}

/// The chain, and whether a client certificate is optional at the TLS level (it is when other
/// authenticators can stand in for it).
pub(crate) fn build(r: &Reader<'_>) -> anyhow::Result<(Authenticators, bool)> {
    let kinds = chosen(r)?;
    let mut chain: Vec<Arc<dyn Authenticator>> = Vec::new();
    for kind in &kinds {
        chain.push(match kind.as_str() {
            "mtls" => {
                if r.text("client_ca").is_none() {
                    bail!("the mtls authenticator needs --client_ca");
                }
                let field = r
                    .text("mtls_user_field")
                    .unwrap_or_else(|| "cn".to_owned())
                    .parse::<UserField>()
                    .map_err(|e| anyhow!("--mtls_user_field: {e}"))?;
                Arc::new(ClientCertificate::new(field))
            }
            "token" => {
                let token = r
                    .text("auth_token")
                    .context("the token authenticator needs --auth_token")?;
                let user = r
                    .text("auth_token_user")
                    .unwrap_or_else(|| SharedToken::DEFAULT_USER.to_owned());
                validate_user_name(&user).map_err(|e| anyhow!("--auth_token_user: {e}"))?;
                let roles = Roles::parse(&r.list("auth_token_roles"))
                    .map_err(|e| anyhow!("--auth_token_roles: {e}"))?;
                Arc::new(SharedToken::new(token, user, roles))
            }
            "jwt" => Arc::new(jwt(r)?),
            "token_file" => {
                let path = r
                    .text("token_file")
                    .context("the token_file authenticator needs --token_file")?;
                let file = gateway_http::auth::token_file::TokenFile::open(path)
                    .map_err(|e| anyhow!("--token_file: {e}"))?;
                Arc::new(file)
            }
            "jupyterhub" => Arc::new(jupyterhub(r)?),
            other => bail!("the {other} authenticator is not available in this build"),
        });
    }
    let mut auth = Authenticators::new(chain);
    auth.admin_users = r.list("admin_users");
    auth.admin_groups = r.list("admin_groups");
    for user in &auth.admin_users {
        validate_user_name(user).map_err(|e| anyhow!("--admin_users: {user:?}: {e}"))?;
    }
    // EG's client_ca alone requires a certificate; beside other authenticators it is optional.
    let certificate_optional =
        kinds.iter().any(|k| k == "mtls") && kinds.iter().any(|k| k != "mtls");
    Ok((auth, certificate_optional))
}

/// The JupyterHub authenticator from the `jupyterhub_*` options.
fn jupyterhub(r: &Reader<'_>) -> anyhow::Result<JupyterHub> {
    let api_url = r
        .text("jupyterhub_api_url")
        .context("the jupyterhub authenticator needs --jupyterhub_api_url")?;
    let mut settings = JupyterHubSettings::new(api_url);
    settings.cache_ttl = r.secs("jupyterhub_cache_ttl")?;
    JupyterHub::new(settings).map_err(|e| anyhow!("the jupyterhub authenticator: {e}"))
}

/// The OIDC bearer-JWT authenticator from the `oidc_*` options.
fn jwt(r: &Reader<'_>) -> anyhow::Result<Jwt> {
    let issuer = r
        .text("oidc_issuer")
        .context("the jwt authenticator needs --oidc_issuer")?;
    let audiences = r.list("oidc_audience");
    if audiences.is_empty() {
        bail!(
            "--oidc_audience is required with --oidc_issuer: the `aud` values of tokens meant for \
             this gateway (often its OIDC client id)"
        );
    }
    let mut settings = JwtSettings::new(issuer, audiences);
    settings.jwks_url = r.text("oidc_jwks_url");
    if let Some(claim) = r.text("oidc_user_claim") {
        settings.user_claim = claim;
    }
    if let Some(claim) = r.text("oidc_groups_claim") {
        settings.groups_claim = claim;
    }
    settings.leeway = r.secs("oidc_leeway")?;
    settings.refresh_interval = r.secs("oidc_jwks_refresh_interval")?;
    Jwt::new(settings).map_err(|e| anyhow!("--oidc_issuer: {e}"))
}
