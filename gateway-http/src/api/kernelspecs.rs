//! `/api/kernelspecs` and the kernelspec resource files under `/kernelspecs/`.
use std::path::{Component, Path};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};

use super::AppState;
use super::dto::{KernelSpecModel, KernelSpecsModel};
use super::extract::{PathParam, QueryParams};
use super::guard::Caller;
use crate::{Error, Identity};

/// Whose view of the kernelspecs a request asks for: a trusted service (the `impersonate` role)
/// names the user with `?user=` as in EG, or sees every spec without it; anybody else sees the
/// specs they may use themselves, whatever `?user=` says.
fn viewer<'a>(caller: &'a Identity, query: &'a QueryParams) -> Option<(&'a str, &'a [String])> {
    if caller.roles.impersonate {
        query
            .get("user")
            .filter(|user| !user.is_empty())
            .map(|user| (user, &[][..]))
    } else {
        Some((caller.user.as_str(), caller.groups.as_slice()))
    }
}

/// `GET /api/kernelspecs[?user=X]`: every spec (the user may use).
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: QueryParams,
) -> Json<KernelSpecsModel> {
    let specs = state.manager.kernelspecs();
    let viewer = viewer(&caller, &query);
    let kernelspecs: std::collections::BTreeMap<_, _> = specs
        .specs
        .values()
        .filter(|spec| {
            viewer.is_none_or(|(user, groups)| state.manager.authorize(spec, user, groups).is_ok())
        })
        .map(|spec| {
            let unavailable = state.manager.unavailable(spec);
            let model = KernelSpecModel::new(spec, &state.base, unavailable);
            (spec.name.clone(), model)
        })
        .collect();
    // The default is advertised only when the caller can start it; clients (JupyterLab) then
    // pick one of the listed kernelspecs themselves.
    let default = &state.config.default_kernel_name;
    Json(KernelSpecsModel {
        default: if kernelspecs.contains_key(default) {
            default.clone()
        } else {
            String::new()
        },
        kernelspecs,
    })
}

/// `GET /api/kernelspecs/{name}[?user=X]`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(name): PathParam<String>,
    query: QueryParams,
) -> Result<Json<KernelSpecModel>, Error> {
    let specs = state.manager.kernelspecs();
    let spec = specs.get(&name).ok_or_else(|| spec_not_found(&name))?;
    if let Some((user, groups)) = viewer(&caller, &query) {
        state
            .manager
            .authorize(spec, user, groups)
            .map_err(|_| Error::Forbidden {
                reason: "Forbidden".to_owned(),
                message: format!("User {user} is not authorized to use kernel spec {name}"),
            })?;
    }
    let unavailable = state.manager.unavailable(spec);
    Ok(Json(KernelSpecModel::new(spec, &state.base, unavailable)))
}

fn spec_not_found(name: &str) -> Error {
    Error::NotFound(format!("Kernel spec {name} not found"))
}

/// `GET|HEAD /kernelspecs/{name}/{path}`: a file from the spec's resource directory.
pub(crate) async fn resource(
    State(state): State<AppState>,
    PathParam((name, path)): PathParam<(String, String)>,
) -> Result<Response, Error> {
    let specs = state.manager.kernelspecs();
    let spec = specs.get(&name).ok_or_else(|| spec_not_found(&name))?;
    if escapes(&path) {
        tracing::warn!(kernelspec = %name, %path, "refused a resource path outside the kernelspec directory");
        return Err(Error::Forbidden {
            reason: "Forbidden".to_owned(),
            message: format!("{path} is not in the kernelspec directory"),
        });
    }
    let not_found = || Error::NotFound(format!("Resource {path} not found in kernel spec {name}"));
    let file = spec.resource_path(&path).ok_or_else(not_found)?;
    let metadata = tokio::fs::metadata(&file).await.map_err(|_| not_found())?;
    if !metadata.is_file() {
        return Err(not_found());
    }
    let contents = tokio::fs::read(&file).await.map_err(|_| not_found())?;
    let headers = [
        (CONTENT_TYPE, content_type(&file).to_owned()),
        (CONTENT_LENGTH, contents.len().to_string()),
    ];
    Ok((headers, contents).into_response())
}

/// Whether a resource path could leave the resource directory (parent, root or prefix
/// components, or characters no resource name has).
fn escapes(path: &str) -> bool {
    path.contains(['\\', '\0'])
        || Path::new(path)
            .components()
            .any(|component| !matches!(component, Component::Normal(_) | Component::CurDir))
}

/// Content type by file extension.
fn content_type(file: &Path) -> &'static str {
    let extension = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("js") => "application/javascript",
        Some("css") => "text/css",
        Some("json") => "application/json",
        Some("html" | "htm") => "text/html",
        Some("txt" | "md") => "text/plain",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_detected() {
        for bad in [
            "../kernel.json",
            "a/../../x",
            "/etc/passwd",
            "a\\..\\b",
            "x\0",
        ] {
            assert!(escapes(bad), "{bad}");
        }
        for good in ["logo-64x64.png", "sub/dir/file.js", "./kernel.js", "a..b"] {
            assert!(!escapes(good), "{good}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(Path::new("logo-64x64.png")), "image/png");
        assert_eq!(
            content_type(Path::new("kernel.JS")),
            "application/javascript"
        );
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
