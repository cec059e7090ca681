//! `/api/kernels` and its sub-routes.
use axum::Json;
use axum::extract::State;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::LOCATION;
use serde_json::Value;

use super::AppState;
use super::dto::KernelModel;
use super::extract::{JsonBody, PathParam, QueryParams};
use crate::Error;
use crate::manager::StartRequest;

/// `GET /api/kernels`: every kernel that finished starting, when listing is enabled.
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Vec<KernelModel>>, Error> {
    if !state.config.list_kernels {
        return Err(listing_disabled());
    }
    Ok(Json(
        state
            .manager
            .list()
            .into_iter()
            .map(KernelModel::from)
            .collect(),
    ))
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
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let request = start_request(body)?;
    tracing::debug!(name = ?request.name, "starting a kernel");
    let snapshot = state
        .manager
        .start(request)
        .await
        .inspect_err(|error| tracing::warn!(%error, "kernel start failed"))?;
    tracing::info!(kernel_id = %snapshot.id, name = %snapshot.name, "kernel started");
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
    Ok(StartRequest { name, env, path })
}

/// `GET /api/kernels/{id}`.
pub(crate) async fn get(
    State(state): State<AppState>,
    PathParam(kernel_id): PathParam<String>,
) -> Result<Json<KernelModel>, Error> {
    Ok(Json(state.manager.get(&kernel_id)?.into()))
}

/// `DELETE /api/kernels/{id}`: graceful shutdown, 204.
pub(crate) async fn shutdown(
    State(state): State<AppState>,
    PathParam(kernel_id): PathParam<String>,
) -> Result<StatusCode, Error> {
    state
        .manager
        .shutdown(&kernel_id)
        .await
        .inspect_err(|error| tracing::warn!(%kernel_id, %error, "kernel shutdown failed"))?;
    tracing::info!(%kernel_id, "kernel shut down");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/kernels/{id}/interrupt`: 204 (the body is ignored).
pub(crate) async fn interrupt(
    State(state): State<AppState>,
    PathParam(kernel_id): PathParam<String>,
) -> Result<StatusCode, Error> {
    state
        .manager
        .interrupt(&kernel_id)
        .await
        .inspect_err(|error| tracing::warn!(%kernel_id, %error, "kernel interrupt failed"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/kernels/{id}/restart`: 200 with the model (the body is ignored).
pub(crate) async fn restart(
    State(state): State<AppState>,
    PathParam(kernel_id): PathParam<String>,
) -> Result<Json<KernelModel>, Error> {
    let snapshot = state
        .manager
        .restart(&kernel_id)
        .await
        .inspect_err(|error| tracing::warn!(%kernel_id, %error, "kernel restart failed"))?;
    tracing::info!(%kernel_id, "kernel restarted");
    Ok(Json(snapshot.into()))
}

/// `GET /api/kernels/{id}/channels`: token (guard), kernel exists, origin, then the WebSocket upgrade.
pub(crate) async fn channels(
    State(state): State<AppState>,
    PathParam(kernel_id): PathParam<String>,
    query: QueryParams,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    state.manager.get(&kernel_id)?;
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
    crate::ws::upgrade(state.manager.clone(), kernel_id, session_id, upgrade).await
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
