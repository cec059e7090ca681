//! The authenticator chain from the options: which authenticators, in which order, with what
//! settings. Validated here once; the library only runs the chain.

use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use gateway_http::auth::jupyterhub::{JupyterHub, JupyterHubSettings};
use gateway_http::auth::jwt::{Jwt, JwtSettings};
use gateway_http::auth::mtls::ClientCertificate;
use gateway_http::auth::{Authenticator, Authenticators, Roles, SharedToken, validate_user_name};

use crate::options::Values;

/// The authenticator names `--authenticators` accepts, in the default order.
pub(crate) const KINDS: &[&str] = &["mtls", "token", "token_file", "jwt", "jupyterhub"];

/// Which authenticators run, in which order: `--authenticators` when given, else every one
/// whose settings are present, in [`KINDS`] order.
fn chosen(o: &Values) -> anyhow::Result<Vec<String>> {
    let listed = o.authenticators.clone();
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
        "mtls" => o.client_ca.is_some(),
        "token" => o.auth_token.is_some(),
        "token_file" => o.token_file.is_some(),
        "jwt" => o.oidc_issuer.is_some(),
        "jupyterhub" => o.jupyterhub_api_url.is_some(),
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
pub(crate) fn build(o: &Values) -> anyhow::Result<(Authenticators, bool)> {
    let kinds = chosen(o)?;
    let mut chain: Vec<Arc<dyn Authenticator>> = Vec::new();
    for kind in &kinds {
        chain.push(match kind.as_str() {
            "mtls" => {
                if o.client_ca.is_none() {
                    bail!("the mtls authenticator needs --client_ca");
                }
                Arc::new(ClientCertificate::new(o.mtls_user_field))
            }
            "token" => {
                let token = o
                    .auth_token
                    .clone()
                    .context("the token authenticator needs --auth_token")?;
                let user = o.auth_token_user.clone();
                validate_user_name(&user).map_err(|e| anyhow!("--auth_token_user: {e}"))?;
                let roles = Roles::parse(&o.auth_token_roles)
                    .map_err(|e| anyhow!("--auth_token_roles: {e}"))?;
                Arc::new(SharedToken::new(token, user, roles))
            }
            "jwt" => Arc::new(jwt(o)?),
            "token_file" => {
                let path = o
                    .token_file
                    .clone()
                    .context("the token_file authenticator needs --token_file")?;
                let file = gateway_http::auth::token_file::TokenFile::open(path)
                    .map_err(|e| anyhow!("--token_file: {e}"))?;
                Arc::new(file)
            }
            "jupyterhub" => Arc::new(jupyterhub(o)?),
            other => bail!("the {other} authenticator is not available in this build"),
        });
    }
    let mut auth = Authenticators::new(chain);
    auth.admin_users = o.admin_users.clone();
    auth.admin_groups = o.admin_groups.clone();
    for user in &auth.admin_users {
        validate_user_name(user).map_err(|e| anyhow!("--admin_users: {user:?}: {e}"))?;
    }
    // EG's client_ca alone requires a certificate; beside other authenticators it is optional.
    let certificate_optional =
        kinds.iter().any(|k| k == "mtls") && kinds.iter().any(|k| k != "mtls");
    Ok((auth, certificate_optional))
}

/// The JupyterHub authenticator from the `jupyterhub_*` options.
fn jupyterhub(o: &Values) -> anyhow::Result<JupyterHub> {
    let api_url = o
        .jupyterhub_api_url
        .clone()
        .context("the jupyterhub authenticator needs --jupyterhub_api_url")?;
    let mut settings = JupyterHubSettings::new(api_url);
    settings.cache_ttl = o.jupyterhub_cache_ttl;
    JupyterHub::new(settings).map_err(|e| anyhow!("the jupyterhub authenticator: {e}"))
}

/// The OIDC bearer-JWT authenticator from the `oidc_*` options.
fn jwt(o: &Values) -> anyhow::Result<Jwt> {
    let issuer = o
        .oidc_issuer
        .clone()
        .context("the jwt authenticator needs --oidc_issuer")?;
    let audiences = o.oidc_audience.clone();
    if audiences.is_empty() {
        bail!(
            "--oidc_audience is required with --oidc_issuer: the `aud` values of tokens meant for \
             this gateway (often its OIDC client id)"
        );
    }
    let mut settings = JwtSettings::new(issuer, audiences);
    settings.jwks_url = o.oidc_jwks_url.clone();
    settings.user_claim = o.oidc_user_claim.clone();
    settings.groups_claim = o.oidc_groups_claim.clone();
    settings.leeway = o.oidc_leeway;
    settings.refresh_interval = o.oidc_jwks_refresh_interval;
    Jwt::new(settings).map_err(|e| anyhow!("--oidc_issuer: {e}"))
}
