//! `/api/swagger.json` and `/api/swagger.yaml`: a short OpenAPI description of this gateway's
//! routes (served without a token, as EG does).
use std::fmt::Write as _;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::header::CONTENT_TYPE;
use serde_json::{Value, json};

use super::AppState;

/// The OpenAPI document, with `base_url` as the server URL.
pub(crate) fn document(base_url: &str) -> Value {
    let error = json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let kernel = json!({"description": "Kernel model", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Kernel"}}}});
    let session = json!({"description": "Session model", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}});
    let kernel_id =
        json!({"name": "kernel_id", "in": "path", "required": true, "schema": {"type": "string"}});
    let session_id =
        json!({"name": "session_id", "in": "path", "required": true, "schema": {"type": "string"}});
    let kernel_name = json!({"name": "kernel_name", "in": "path", "required": true, "schema": {"type": "string"}});
    let ready = json!({"description": "Each check's verdict", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}}});
    let html = json!({"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}});
    let user = json!({"name": "user", "in": "query", "required": false, "schema": {"type": "string"},
        "description": "Only kernelspecs this user may use"});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Jupyter Enterprise Gateway API (enterprise-gateway-rs)",
            "description": "Kernel lifecycle, kernelspecs and kernel channels. Authenticate with the shared or a per-user token (`Authorization: token <t>` or `?token=<t>`), a bearer JWT or JupyterHub token (`Authorization: Bearer <t>`), or a TLS client certificate, as the gateway is configured; each user sees only their own kernels and sessions (admins see all).",
            "version": super::GATEWAY_VERSION,
        },
        // Paths start with `/`, so the server URL has no trailing one (`/` alone for the root).
        "servers": [{"url": match base_url.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        }}],
        "paths": {
            "/api": {"get": {"summary": "Versions", "responses": {"200": {"description": "Versions"}}}},
            "/api/me": {"get": {"summary": "The authenticated caller: user name, groups, roles and authenticator",
                "responses": {"200": {"description": "jupyter_server's identity model with groups, roles and authenticator"}, "401": error}}},
            "/api/profiles": {"get": {"summary": "The kernel profiles the caller may use (name, description, kernelspecs, resources, whether it is the caller's default)",
                "responses": {"200": {"description": "Profile models", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Profile"}}}}}, "401": error}}},
            "/api/kernelspecs": {"get": {"summary": "List kernelspecs", "parameters": [user],
                "responses": {"200": {"description": "Default name and specs by name"}}}},
            "/api/kernelspecs/{kernel_name}": {"get": {"summary": "One kernelspec", "parameters": [kernel_name, user],
                "responses": {"200": {"description": "Kernelspec"}, "403": error, "404": error}}},
            "/kernelspecs/{kernel_name}/{path}": {"get": {"summary": "A kernelspec resource file (logo, kernel.js)",
                "parameters": [kernel_name, {"name": "path", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "File contents"}, "403": error, "404": error}}},
            "/api/kernels": {
                "get": {"summary": "List kernels (when listing is enabled)", "responses": {"200": {"description": "Kernel models"}, "403": error}},
                "post": {"summary": "Start a kernel", "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StartRequest"}}}},
                    "responses": {"201": kernel, "400": error, "403": error, "404": error, "409": error, "500": error, "503": error}},
            },
            "/api/kernels/{kernel_id}": {
                "get": {"summary": "Kernel model", "parameters": [kernel_id], "responses": {"200": kernel, "404": error}},
                "delete": {"summary": "Shut a kernel down", "parameters": [kernel_id], "responses": {"204": {"description": "Shut down"}, "404": error}},
            },
            "/api/kernels/{kernel_id}/interrupt": {"post": {"summary": "Interrupt a kernel", "parameters": [kernel_id],
                "responses": {"204": {"description": "Interrupted"}, "404": error}}},
            "/api/kernels/{kernel_id}/restart": {"post": {"summary": "Restart a kernel", "parameters": [kernel_id],
                "responses": {"200": kernel, "404": error, "500": error}}},
            "/api/kernels/{kernel_id}/channels": {"get": {"summary": "Kernel channels WebSocket (legacy JSON or v1.kernel.websocket.jupyter.org)",
                "parameters": [kernel_id, {"name": "session_id", "in": "query", "required": false, "schema": {"type": "string"}}],
                "responses": {"101": {"description": "Switching protocols"}, "400": error, "403": error, "404": error}}},
            "/api/sessions": {
                "get": {"summary": "List sessions (when listing is enabled)", "responses": {"200": {"description": "Session models"}, "403": error}},
                "post": {"summary": "Create a session, or return the one for the same path", "responses": {"201": session, "400": error}},
            },
            "/api/sessions/{session_id}": {
                "get": {"summary": "Session model", "parameters": [session_id], "responses": {"200": session, "404": error}},
                "patch": {"summary": "Change a session", "parameters": [session_id], "responses": {"200": session, "400": error, "404": error}},
                "delete": {"summary": "Delete a session and its kernel", "parameters": [session_id], "responses": {"204": {"description": "Deleted"}, "404": error}},
            },
            "/api/admin/kernels": {"get": {"summary": "Every kernel with backend, host, restarts and start time (admin role)",
                "responses": {"200": {"description": "Admin kernel models", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/AdminKernel"}}}}},
                    "401": error, "403": error}}},
            "/api/swagger.json": {"get": {"summary": "This document as JSON", "security": [],
                "responses": {"200": {"description": "OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/api/swagger.yaml": {"get": {"summary": "This document as YAML", "security": [],
                "responses": {"200": {"description": "OpenAPI document", "content": {"application/yaml": {"schema": {"type": "string"}}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics in the text exposition format (admin role; 404 when metrics are off or on their own port)",
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}, "401": error, "403": error, "404": error}}},
            "/healthz": {"get": {"summary": "Liveness: the process serves HTTP", "security": [],
                "responses": {"200": {"description": "Alive", "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string"}}}}}}}}},
            "/readyz": {"get": {"summary": "Readiness: the listener, the resource managers, the launcher callback listener and any registered check (a kernel store)", "security": [],
                "responses": {"200": ready.clone(), "503": ready}}},
            "/admin": {"get": {"summary": "The admin page (HTML; its script signs in and uses this API)", "security": [],
                "parameters": [{"name": "token", "in": "query", "required": false, "schema": {"type": "string"},
                    "description": "Taken once into the tab's sessionStorage and removed from the address bar"}],
                "responses": {"200": html.clone(), "403": html}}},
            "/admin/{asset}": {"get": {"summary": "The admin page's script and style sheet", "security": [],
                "parameters": [{"name": "asset", "in": "path", "required": true, "schema": {"type": "string", "enum": ["admin.js", "admin.css"]}}],
                "responses": {"200": {"description": "The asset", "content": {"text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}}}, "404": error}}},
        },
        "security": [{"token": []}, {"bearer": []}, {}],
        "components": {
        "securitySchemes": {
            "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`token <t>`: the shared auth_token or a per-user token (also accepted as `?token=<t>`)"},
            "bearer": {"type": "http", "scheme": "bearer", "description": "An OIDC JWT or a JupyterHub API token"},
        },
        "schemas": {
            "AdminKernel": {"allOf": [{"$ref": "#/components/schemas/Kernel"}, {"type": "object",
                "required": ["backend", "host", "restarts", "created"], "properties": {
                "backend": {"type": "string"}, "host": {"type": "string"}, "restarts": {"type": "integer"},
                "created": {"type": "string", "description": "UTC, YYYY-MM-DDTHH:MM:SS.ffffffZ"}}}]},
            "Ready": {"type": "object", "required": ["ready", "checks"], "properties": {
                "ready": {"type": "boolean"},
                "checks": {"type": "array", "items": {"type": "object", "required": ["name", "ok"], "properties": {
                    "name": {"type": "string"}, "ok": {"type": "boolean"}, "reason": {"type": "string"}}}}}},
            "Error": {"type": "object", "properties": {"reason": {"type": "string"}, "message": {"type": "string"}}},
            "Kernel": {"type": "object", "required": ["id", "name", "last_activity", "execution_state", "connections"], "properties": {
                "id": {"type": "string"}, "name": {"type": "string"},
                "last_activity": {"type": "string", "description": "UTC, YYYY-MM-DDTHH:MM:SS.ffffffZ"},
                "execution_state": {"type": "string"}, "connections": {"type": "integer"}, "owner": {"type": "string"}, "reason": {"type": "string"},
                "profile": {"type": "string", "description": "The kernel profile, present only when the kernel has one"}}},
            "Profile": {"type": "object", "required": ["name", "description", "kernelspecs", "default"], "properties": {
                "name": {"type": "string"}, "description": {"type": "string"},
                "kernelspecs": {"type": "array", "items": {"type": "string"}, "description": "Empty: every kernelspec"},
                "resources": {"type": "object", "properties": {"memory": {"type": "integer"}, "cpus": {"type": "integer"}, "gpus": {"type": "integer"}}},
                "default": {"type": "boolean", "description": "The caller's groups get it when a start names no profile"}}},
            "StartRequest": {"type": "object", "properties": {
                "name": {"type": "string", "nullable": true}, "path": {"type": "string"},
                "profile": {"type": "string", "description": "A kernel profile (KERNEL_PROFILE in env asks too)"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "Session": {"type": "object", "properties": {
                "id": {"type": "string"}, "path": {"type": "string"}, "name": {"type": "string", "nullable": true}, "type": {"type": "string"},
                "kernel": {"$ref": "#/components/schemas/Kernel"},
                "notebook": {"type": "object", "properties": {"path": {"type": "string"}}}}},
        }},
    })
}

/// `GET /api/swagger.json`.
pub(crate) async fn json(State(state): State<AppState>) -> Json<Value> {
    Json(document(&state.base))
}

/// `GET /api/swagger.yaml`.
pub(crate) async fn yaml(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    write_yaml(&mut out, &document(&state.base), 0);
    ([(CONTENT_TYPE, "application/yaml")], out)
}

/// Block-style YAML for a JSON value. Strings are written JSON-quoted, which YAML reads as
/// double-quoted scalars, so no value needs YAML-specific escaping.
fn write_yaml(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                let _ = write!(out, "{pad}{}:", Value::String(key.clone()));
                write_nested(out, item, indent);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                let _ = write!(out, "{pad}-");
                write_nested(out, item, indent);
            }
        }
        scalar => {
            let _ = writeln!(out, "{pad}{scalar}");
        }
    }
}

fn write_nested(out: &mut String, item: &Value, indent: usize) {
    match item {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_yaml(out, item, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_yaml(out, item, indent + 2);
        }
        scalar => {
            let _ = writeln!(out, " {scalar}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router declares (each `at("...")` in the router's source), as the
    /// document spells it: `{*path}` is a plain `{path}` parameter there.
    fn router_paths() -> Vec<String> {
        let source = include_str!("mod.rs");
        source
            .split("&at(\"")
            .skip(1)
            .filter_map(|rest| rest.split_once('"').map(|(path, _)| path))
            .map(|path| format!("/{}", path.replace("{*", "{")))
            .collect()
    }

    #[test]
    fn the_document_describes_every_route_of_the_router_and_no_other() {
        let doc = document("/");
        let paths = doc["paths"]
            .as_object()
            .map(|p| p.keys().cloned().collect::<Vec<_>>());
        let mut documented = paths.unwrap_or_default();
        let mut routes = router_paths();
        assert!(
            routes.len() >= 20,
            "the router's routes were not found: {routes:?}"
        );
        routes.sort();
        documented.sort();
        assert_eq!(routes, documented);
    }

    #[test]
    fn yaml_is_block_style_with_quoted_strings() {
        let mut out = String::new();
        write_yaml(
            &mut out,
            &json!({"a": {"b": [1, "x: y"], "c": {}}, "d": []}),
            0,
        );
        assert_eq!(
            out,
            "\"a\":\n  \"b\":\n    - 1\n    - \"x: y\"\n  \"c\": {}\n\"d\": []\n"
        );
    }
}
