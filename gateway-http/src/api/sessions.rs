//! `/api/sessions`: jupyter_server's in-memory session table (EG §10, with §17's fixes: GET and
//! PATCH work, a second POST for the same path returns the existing session).
use std::path::Path;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::LOCATION;
use parking_lot::Mutex;
use serde_json::{Map, Value};

use super::AppState;
use super::dto::{KernelModel, NotebookModel, SessionModel};
use super::extract::{JsonBody, PathParam};
use super::guard::Caller;
use crate::manager::{ManagerError, StartRequest};
use crate::{Error, Identity, KernelManager};

/// One session row.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    path: String,
    name: Option<String>,
    kind: String,
    kernel_id: String,
    /// The owner of the session's kernel when the session was made or last given a kernel.
    owner: String,
}

impl Row {
    /// Whether `caller` may see this row (as for its kernel).
    fn visible_to(&self, caller: &Identity) -> bool {
        caller.may_access(&self.owner)
    }
}

/// The session table. Rows whose kernel is gone are dropped whenever the table is read.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    rows: Mutex<Vec<Row>>,
}

impl Sessions {
    /// Runs `f` on the rows, after dropping rows whose kernel no longer exists.
    fn with_rows<T>(&self, manager: &KernelManager, f: impl FnOnce(&mut Vec<Row>) -> T) -> T {
        let mut rows = self.rows.lock();
        rows.retain(|row| manager.get(&row.kernel_id).is_ok());
        f(&mut rows)
    }

    /// The row with `id`, if `caller` may see it.
    fn find(&self, manager: &KernelManager, caller: &Identity, id: &str) -> Option<Row> {
        self.with_rows(manager, |rows| {
            rows.iter()
                .find(|row| row.id == id && row.visible_to(caller))
                .cloned()
        })
    }

    /// The session for `path` that a create by `caller` returns instead of making a new one.
    /// Paths are per user: a trusted service sees every user's (EG's one table), anybody else
    /// only their own.
    fn find_path(&self, manager: &KernelManager, caller: &Identity, path: &str) -> Option<Row> {
        self.with_rows(manager, |rows| {
            rows.iter()
                .find(|row| row.path == path && same_owner(caller, row))
                .cloned()
        })
    }
}

fn model(manager: &KernelManager, row: Row) -> Result<SessionModel, Error> {
    let kernel = KernelModel::from(manager.get(&row.kernel_id)?);
    Ok(SessionModel {
        notebook: NotebookModel {
            path: row.path.clone(),
        },
        id: row.id,
        path: row.path,
        name: row.name,
        kind: row.kind,
        kernel,
    })
}

/// Whether a create by `caller` for a path may return `row` (see [`Sessions::find_path`]).
fn same_owner(caller: &Identity, row: &Row) -> bool {
    caller.roles.impersonate || row.owner == caller.user
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("Session not found: {id}"))
}

fn bad(message: &str) -> Error {
    Error::BadRequest {
        message: message.to_owned(),
    }
}

/// `GET /api/sessions` (needs `list_kernels`).
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Vec<SessionModel>>, Error> {
    if !state.config.list_kernels {
        return Err(super::kernels::listing_disabled());
    }
    let rows = state.sessions.with_rows(&state.manager, |rows| {
        rows.iter()
            .filter(|row| row.visible_to(&caller))
            .cloned()
            .collect::<Vec<_>>()
    });
    // A kernel that vanished between the purge and here simply drops out of the list.
    Ok(Json(
        rows.into_iter()
            .filter_map(|row| model(&state.manager, row).ok())
            .collect(),
    ))
}

/// The body of a create or update, both forms: `{path, type, name, kernel}` or the old
/// `{notebook: {path}, kernel}`.
#[derive(Debug, Default)]
struct SessionBody {
    path: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    kernel_id: Option<String>,
    kernel_name: Option<String>,
    has_kernel: bool,
}

fn parse_body(body: Option<Value>) -> Result<SessionBody, Error> {
    let Some(Value::Object(fields)) = body else {
        return Err(bad("No JSON data provided"));
    };
    let string = |map: &Map<String, Value>, key: &str| -> Result<Option<String>, Error> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(bad(&format!("The {key} field must be a string"))),
        }
    };
    let mut parsed = SessionBody {
        path: string(&fields, "path")?,
        name: string(&fields, "name")?,
        kind: string(&fields, "type")?,
        ..SessionBody::default()
    };
    if parsed.path.is_none()
        && let Some(Value::Object(notebook)) = fields.get("notebook")
    {
        parsed.path = string(notebook, "path")?;
        parsed.kind.get_or_insert_with(|| "notebook".to_owned());
    }
    match fields.get("kernel") {
        None | Some(Value::Null) => {}
        Some(Value::Object(kernel)) => {
            parsed.has_kernel = true;
            parsed.kernel_id = string(kernel, "id")?;
            parsed.kernel_name = string(kernel, "name")?;
        }
        Some(_) => return Err(bad("The kernel field must be an object")),
    }
    Ok(parsed)
}

/// The working directory of a session's kernel: the directory holding the document.
fn kernel_path(path: &str) -> Option<String> {
    Path::new(path)
        .parent()
        .and_then(|dir| dir.to_str())
        .filter(|dir| !dir.is_empty())
        .map(str::to_owned)
}

/// Starts a kernel for a session (no env, as EG does; owned by the caller), or attaches an
/// existing one by id when the caller may see it. Returns the kernel's id and owner.
async fn kernel_for_session(
    state: &AppState,
    caller: &Identity,
    body: &SessionBody,
    path: &str,
) -> Result<(String, String), Error> {
    if let Some(id) = &body.kernel_id
        && let Ok(kernel) = super::kernels::visible(state, caller, id)
    {
        return Ok((kernel.id, kernel.username));
    }
    let kernelspec = body
        .kernel_name
        .clone()
        .unwrap_or_else(|| state.config.default_kernel_name.clone());
    let request = StartRequest {
        name: body.kernel_name.clone(),
        path: kernel_path(path),
        user: super::kernels::kernel_owner(caller, None)?,
        groups: caller.groups.clone(),
        ..StartRequest::default()
    };
    let snapshot = state.manager.start(request).await.inspect_err(|error| {
        tracing::warn!(target: "audit", user = %caller.user, %kernelspec, %error, "session kernel start failed");
    })?;
    tracing::info!(target: "audit", user = %caller.user, owner = %snapshot.username, kernel_id = %snapshot.id, "session kernel started");
    Ok((snapshot.id, snapshot.username))
}

/// `POST /api/sessions`: 201 with the new (or the existing) session for the path.
pub(crate) async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let body = parse_body(body)?;
    let path = body
        .path
        .clone()
        .ok_or_else(|| bad("Missing field in JSON data: path"))?;
    let kind = body
        .kind
        .clone()
        .ok_or_else(|| bad("Missing field in JSON data: type"))?;
    if let Some(existing) = state.sessions.find_path(&state.manager, &caller, &path) {
        return created(&state, existing);
    }
    let (kernel_id, owner) = kernel_for_session(&state, &caller, &body, &path).await?;
    let row = Row {
        id: uuid::Uuid::new_v4().to_string(),
        path: path.clone(),
        name: body.name.clone(),
        kind,
        kernel_id: kernel_id.clone(),
        owner,
    };
    // Another request may have created a session for this path while the kernel started.
    let winner = state.sessions.with_rows(&state.manager, |rows| {
        match rows
            .iter()
            .find(|r| r.path == path && same_owner(&caller, r))
        {
            Some(existing) => Err(Box::new(existing.clone())),
            None => {
                rows.push(row.clone());
                Ok(row)
            }
        }
    });
    match winner {
        Ok(row) => created(&state, row),
        Err(existing) => {
            let existing = *existing;
            if existing.kernel_id != kernel_id
                && body.kernel_id.as_deref() != Some(kernel_id.as_str())
            {
                shutdown_in_background(&state, kernel_id);
            }
            created(&state, existing)
        }
    }
}

fn created(state: &AppState, row: Row) -> Result<Response, Error> {
    let location = format!("{}api/sessions/{}", state.base, row.id);
    let model = model(&state.manager, row)?;
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(model)).into_response())
}

fn shutdown_in_background(state: &AppState, kernel_id: String) {
    let manager = state.manager.clone();
    tokio::spawn(async move {
        if let Err(error) = manager.shutdown(&kernel_id).await {
            tracing::warn!(%kernel_id, %error, "shutting down a replaced session kernel failed");
        }
    });
}

/// `GET /api/sessions/{id}`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<SessionModel>, Error> {
    let row = state
        .sessions
        .find(&state.manager, &caller, &id)
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(model(&state.manager, row)?))
}

/// `PATCH /api/sessions/{id}`: changes path, name, type or kernel (by id, or a new kernel by name;
/// a replaced kernel is shut down).
pub(crate) async fn update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<SessionModel>, Error> {
    let body = parse_body(body)?;
    let before = state
        .sessions
        .find(&state.manager, &caller, &id)
        .ok_or_else(|| not_found(&id))?;
    let new_kernel = match (&body.kernel_id, &body.kernel_name) {
        (Some(kernel_id), _) => {
            let kernel = super::kernels::visible(&state, &caller, kernel_id)
                .map_err(|_| bad(&format!("No such kernel: {kernel_id}")))?;
            Some((kernel.id, kernel.username))
        }
        (None, Some(_)) => {
            let path = body.path.clone().unwrap_or_else(|| before.path.clone());
            Some(kernel_for_session(&state, &caller, &body, &path).await?)
        }
        (None, None) => None,
    };
    let updated = state.sessions.with_rows(&state.manager, |rows| {
        let row = rows.iter_mut().find(|row| row.id == id)?;
        if let Some(path) = &body.path {
            row.path.clone_from(path);
        }
        if let Some(name) = &body.name {
            row.name = Some(name.clone());
        }
        if let Some(kind) = &body.kind {
            row.kind.clone_from(kind);
        }
        if let Some((kernel_id, owner)) = &new_kernel {
            row.kernel_id.clone_from(kernel_id);
            row.owner.clone_from(owner);
        }
        Some(row.clone())
    });
    let Some(updated) = updated else {
        // The session went away while a new kernel was starting: do not leak that kernel.
        if let Some((kernel_id, _)) = new_kernel.filter(|(k, _)| body.kernel_id.as_ref() != Some(k))
        {
            shutdown_in_background(&state, kernel_id);
        }
        return Err(not_found(&id));
    };
    if updated.kernel_id != before.kernel_id && body.kernel_id.is_none() {
        shutdown_in_background(&state, before.kernel_id.clone());
    }
    Ok(Json(model(&state.manager, updated)?))
}

/// `DELETE /api/sessions/{id}`: shuts the kernel down and removes the row; 204.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, Error> {
    let row = state
        .sessions
        .find(&state.manager, &caller, &id)
        .ok_or_else(|| not_found(&id))?;
    match state.manager.shutdown(&row.kernel_id).await {
        Ok(()) | Err(ManagerError::NoSuchKernel(_)) => {}
        Err(error) => {
            tracing::warn!(kernel_id = %row.kernel_id, session_id = %id, %error, "session kernel shutdown failed");
            return Err(error.into());
        }
    }
    let mut rows = state.sessions.rows.lock();
    rows.retain(|r| r.id != id);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_body_forms() {
        let new = parse_body(Some(json!({"path": "a/b.ipynb", "type": "notebook", "name": "b", "kernel": {"name": "python3"}}))).ok();
        let new = new.as_ref();
        assert_eq!(new.and_then(|b| b.path.as_deref()), Some("a/b.ipynb"));
        assert_eq!(new.and_then(|b| b.kernel_name.as_deref()), Some("python3"));
        let old = parse_body(Some(
            json!({"id": "any", "notebook": {"path": "anywhere"}, "kernel": {"name": "python"}}),
        ))
        .ok();
        let old = old.as_ref();
        assert_eq!(old.and_then(|b| b.path.as_deref()), Some("anywhere"));
        assert_eq!(old.and_then(|b| b.kind.as_deref()), Some("notebook"));
        assert!(parse_body(None).is_err());
        assert!(parse_body(Some(json!({"path": 1}))).is_err());
    }

    #[test]
    fn kernel_runs_in_the_document_directory() {
        assert_eq!(kernel_path("a/b/c.ipynb").as_deref(), Some("a/b"));
        assert_eq!(kernel_path("c.ipynb"), None);
    }
}
