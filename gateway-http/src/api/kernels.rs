//! `/api/kernels` and its sub-routes.
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::LOCATION;
use serde_json::Value;

use super::AppState;
use super::dto::KernelModel;
use super::extract::{JsonBody, PathParam, QueryParams};
use super::guard::Caller;
use crate::auth::validate_user_name;
use crate::manager::{KernelSnapshot, StartRequest};
use crate::{Error, Identity};

/// `GET /api/kernels`: the caller's kernels that finished starting (an admin's: everybody's),
/// when listing is enabled.
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Vec<KernelModel>>, Error> {
    if !state.config.list_kernels {
        return Err(listing_disabled());
    }
    Ok(Json(
        state
            .manager
            .list_all()
            .await
            .into_iter()
            .filter(|kernel| caller.may_access(&kernel.username))
            .map(KernelModel::from)
            .collect(),
    ))
}

/// The kernel, if it exists and the caller may see it; a kernel of somebody else is answered
/// exactly as an unknown id, so ids cannot be probed.
pub(crate) fn visible(
    state: &AppState,
    caller: &Identity,
    kernel_id: &str,
) -> Result<KernelSnapshot, Error> {
    owned(caller, kernel_id, state.manager.get(kernel_id)?)
}

/// [`visible`] for a kernel any gateway sharing the kernel store supervises.
pub(crate) async fn reachable(
    state: &AppState,
    caller: &Identity,
    kernel_id: &str,
) -> Result<KernelSnapshot, Error> {
    owned(caller, kernel_id, state.manager.find(kernel_id).await?)
}

fn owned(
    caller: &Identity,
    kernel_id: &str,
    kernel: KernelSnapshot,
) -> Result<KernelSnapshot, Error> {
    if caller.may_access(&kernel.username) {
        Ok(kernel)
    } else {
        tracing::info!(target: "audit", user = %caller.user, %kernel_id, owner = %kernel.username, "refused access to another user's kernel");
        Err(Error::NoSuchKernel(kernel_id.to_owned()))
    }
}

/// The owner of a kernel the caller starts, from the authenticated identity and the request's
/// `KERNEL_USERNAME`: a caller with the `impersonate` role may name anyone (EG's trust), anybody
/// else only themselves (403 otherwise). A name that breaks the user-name rule is a 400.
pub(crate) fn kernel_owner(
    caller: &Identity,
    env: Option<&serde_json::Map<String, Value>>,
) -> Result<Option<String>, Error> {
    let requested = match env.and_then(|env| env.get("KERNEL_USERNAME")) {
        None => None,
        Some(Value::String(name)) if name.is_empty() => None,
        Some(Value::String(name)) => Some(name.as_str()),
        // The env filter answers a non-string with EG's text.
        Some(_) => return Ok(None),
    };
    if let Some(name) = requested {
        validate_user_name(name).map_err(|why| Error::BadRequest {
            message: format!("KERNEL_USERNAME is not an acceptable user name: {why}"),
        })?;
    }
    match requested {
        Some(name) if caller.roles.impersonate => Ok(Some(name.to_owned())),
        None if caller.roles.impersonate => Ok(None),
        Some(name) if name != caller.user => {
            tracing::warn!(target: "audit", user = %caller.user, requested = name, "refused a start for another user");
            Err(Error::Forbidden {
                reason: format!(
                    "User '{}' may not start kernels as user '{name}'. Leave KERNEL_USERNAME unset or set it to your own user name.",
                    caller.user
                ),
                message: String::new(),
            })
        }
        _ => Ok(Some(caller.user.clone())),
    }
}

/// EG's answer when `list_kernels` is off.
pub(crate) fn listing_disabled() -> Error {
    Error::Forbidden {
        reason: "Forbidden".to_owned(),
        message: "Forbidden".to_owned(),
    }
}

/// `POST /api/kernels`: starts a kernel; 201 with `Location` and the model.
pub(crate) async fn start(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let mut request = start_request(body)?;
    request.user = kernel_owner(&caller, request.env.as_ref())?;
    request.groups = caller.groups.clone();
    let kernelspec = request
        .name
        .clone()
        .unwrap_or_else(|| state.config.default_kernel_name.clone());
    tracing::debug!(%kernelspec, "starting a kernel");
    // The one line a failed start logs (the supervisor and the error response stay at debug).
    let snapshot = state.manager.start(request).await.inspect_err(|error| {
        tracing::warn!(target: "audit", user = %caller.user, %kernelspec, %error, "kernel start failed");
    })?;
    tracing::info!(target: "audit", user = %caller.user, owner = %snapshot.username, kernel_id = %snapshot.id, name = %snapshot.name, "kernel started");
    let location = format!("{}api/kernels/{}", state.base, snapshot.id);
    Ok((
        StatusCode::CREATED,
        [(LOCATION, location)],
        Json(KernelModel::from(snapshot)),
    )
        .into_response())
}

/// Reads EG's start body: `name` (string or null), `env` (object), `path` (string); other keys are ignored.
fn start_request(body: Option<Value>) -> Result<StartRequest, Error> {
    let bad = |message: &str| Error::BadRequest {
        message: message.to_owned(),
    };
    let mut fields = match body {
        None => return Ok(StartRequest::default()),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Err(bad("The request body must be a JSON object")),
    };
    let name = match fields.remove("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name),
        Some(_) => return Err(bad("The kernel name must be a string")),
    };
    let env = match fields.remove("env") {
        None => None,
        Some(Value::Object(env)) => Some(env),
        Some(_) => return Err(bad("The env field must be a JSON object")),
    };
    let path = match fields.remove("path") {
        None | Some(Value::Null) => None,
        Some(Value::String(path)) => Some(path),
        Some(_) => return Err(bad("The path field must be a string")),
    };
    let profile = match fields.remove("profile") {
        None | Some(Value::Null) => None,
        Some(Value::String(profile)) => Some(profile),
        Some(_) => return Err(bad("The profile field must be a string")),
    };
    Ok(StartRequest {
        name,
        env,
        path,
        profile,
        ..StartRequest::default()
    })
}

/// `GET /api/kernels/{id}`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(kernel_id): PathParam<String>,
) -> Result<Json<KernelModel>, Error> {
    Ok(Json(reachable(&state, &caller, &kernel_id).await?.into()))
}

/// `DELETE /api/kernels/{id}`: graceful shutdown, 204.
pub(crate) async fn shutdown(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(kernel_id): PathParam<String>,
) -> Result<StatusCode, Error> {
    let kernel = reachable(&state, &caller, &kernel_id).await?;
    state.manager.shutdown(&kernel_id).await.inspect_err(|error| {
        tracing::warn!(target: "audit", user = %caller.user, %kernel_id, %error, "kernel shutdown failed");
    })?;
    tracing::info!(target: "audit", user = %caller.user, owner = %kernel.username, %kernel_id, "kernel shut down");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/kernels/{id}/interrupt`: 204 (the body is ignored).
pub(crate) async fn interrupt(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(kernel_id): PathParam<String>,
) -> Result<StatusCode, Error> {
    let kernel = reachable(&state, &caller, &kernel_id).await?;
    state.manager.interrupt(&kernel_id).await.inspect_err(|error| {
        tracing::warn!(target: "audit", user = %caller.user, %kernel_id, %error, "kernel interrupt failed");
    })?;
    tracing::info!(target: "audit", user = %caller.user, owner = %kernel.username, %kernel_id, "kernel interrupted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/kernels/{id}/restart`: 200 with the model (the body is ignored).
pub(crate) async fn restart(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(kernel_id): PathParam<String>,
) -> Result<Json<KernelModel>, Error> {
    let kernel = reachable(&state, &caller, &kernel_id).await?;
    let snapshot = state.manager.restart(&kernel_id).await.inspect_err(|error| {
        tracing::warn!(target: "audit", user = %caller.user, %kernel_id, %error, "kernel restart failed");
    })?;
    tracing::info!(target: "audit", user = %caller.user, owner = %kernel.username, %kernel_id, "kernel restarted");
    Ok(Json(snapshot.into()))
}

/// `GET /api/kernels/{id}/channels`: authentication (guard), the kernel exists and is the
/// caller's, origin, session id, then the WebSocket upgrade.
pub(crate) async fn channels(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(kernel_id): PathParam<String>,
    query: QueryParams,
    headers: HeaderMap,
    account: Option<axum::Extension<crate::budget::Account>>,
    upgrade: Result<crate::ws::ChannelsUpgrade, crate::ws::NotUpgrade>,
) -> Result<Response, Error> {
    let kernel = reachable(&state, &caller, &kernel_id).await?;
    if !super::guard::origin_allowed(state.config.cors.allow_origin.as_deref(), &headers) {
        return Err(Error::Forbidden {
            reason: "Forbidden".to_owned(),
            message: "Cross origin websockets not allowed".to_owned(),
        });
    }
    let upgrade = upgrade.map_err(|rejection| {
        tracing::debug!(%kernel_id, %rejection, "channels request without a WebSocket upgrade");
        Error::BadRequest {
            message: "Can \"Upgrade\" only to \"WebSocket\".".to_owned(),
        }
    })?;
    let session_id = query
        .get("session_id")
        .filter(|id| !id.is_empty())
        .map(str::to_owned);
    let limit = state.config.limits.max_session_id_len;
    if let Some(id) = &session_id
        && (id.len() > limit || id.chars().any(char::is_control))
    {
        return Err(Error::BadRequest {
            message: format!("session_id must be at most {limit} bytes without control characters"),
        });
    }
    tracing::info!(target: "audit", user = %caller.user, owner = %kernel.username, %kernel_id, "kernel channels opened");
    let account = account.map(|axum::Extension(account)| account);
    crate::ws::upgrade_charged(
        state.manager.clone(),
        kernel_id,
        session_id,
        upgrade,
        account,
    )
    .await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn start_body_fields() {
        let request = start_request(Some(
            json!({"name": "python3", "env": {"A": "b"}, "path": "x", "other": 1}),
        ))
        .unwrap_or_default();
        assert_eq!(request.name.as_deref(), Some("python3"));
        assert_eq!(request.env.map(|env| env.len()), Some(1));
        assert_eq!(request.path.as_deref(), Some("x"));
        let request = start_request(Some(json!({"name": null}))).unwrap_or_default();
        assert_eq!(request.name, None);
        assert!(request.env.is_none());
        for bad in [
            json!({"env": []}),
            json!({"env": "A=b"}),
            json!({"name": 3}),
            json!([]),
            json!("x"),
        ] {
            assert!(
                matches!(
                    start_request(Some(bad.clone())),
                    Err(Error::BadRequest { .. })
                ),
                "{bad}"
            );
        }
    }
}
