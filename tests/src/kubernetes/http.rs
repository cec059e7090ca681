//! The emulator's REST API: path routing, bearer-token auth, discovery, CRUD verbs, watches,
//! tables for kubectl, and the namespace and garbage-collection behaviour around deletes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::kubelet;
use super::state::{
    ApiError, Event, EventType, FieldSelector, Key, LabelSelector, PodRuntime, RESOURCES, Resource,
    Shared, now_rfc3339, resource, resource_of_kind, validate,
};

/// The emulated server version.
const GIT_VERSION: &str = "v1.32.0-emulator";

/// Most bytes accepted in a request body.
const MAX_BODY: usize = 8 * 1024 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.code, &self.body)
    }
}

type Reply = Result<Response, ApiError>;

fn ok(body: &Value) -> Reply {
    Ok(json_response(200, body))
}

/// Query parameters, percent-decoded.
fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    let decode = |s: &str| -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    q.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| v == "true" || v == "1")
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let params = Params(query_pairs(req.uri().query()));
    let headers = req.headers().clone();
    let public = matches!(
        path.as_str(),
        "/version" | "/healthz" | "/livez" | "/readyz"
    );
    if !public && let Err(e) = authenticate(&shared, &headers) {
        return e.into_response();
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_BODY).await else {
        return ApiError::new(
            413,
            "RequestEntityTooLarge",
            "request body too large",
            Value::Null,
        )
        .into_response();
    };
    match route(&shared, &method, &path, &params, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &shared.config.token else {
        return Ok(());
    };
    // The scheme is case-insensitive (RFC 7235): the Python client's in-cluster config sends
    // `bearer <token>`.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if given == Some(token.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            401,
            "Unauthorized",
            "Unauthorized",
            Value::Null,
        ))
    }
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    params: &Params,
    headers: &HeaderMap,
    body: Bytes,
) -> Reply {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let get = method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => ok(&json!({
            "major": "1", "minor": "32", "gitVersion": GIT_VERSION, "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0",
            "compiler": "gc", "platform": "linux/amd64",
        })),
        ["healthz" | "livez" | "readyz"] if get => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] if get => {
            let addr = shared
                .url
                .lock()
                .map(|u| {
                    u.trim_start_matches("http://")
                        .trim_start_matches("https://")
                        .to_owned()
                })
                .unwrap_or_default();
            ok(&json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]}))
        }
        ["apis"] if get => ok(&group_list()),
        ["apis", group] if get => group_of(group)
            .map(|g| json_response(200, &g))
            .ok_or_else(|| not_found_path(path)),
        ["api", "v1"] if get => ok(&resource_list("", "v1")),
        ["apis", group, version] if get => {
            if RESOURCES
                .iter()
                .any(|r| r.group == *group && r.version == *version)
            {
                ok(&resource_list(group, version))
            } else {
                Err(not_found_path(path))
            }
        }
        ["api", "v1", rest @ ..] => {
            resource_request(shared, method, "", "v1", rest, params, headers, body).await
        }
        ["apis", group, version, rest @ ..] => {
            resource_request(shared, method, group, version, rest, params, headers, body).await
        }
        _ => Err(not_found_path(path)),
    }
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
        json!({}),
    )
}

fn group_version_json(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

fn group_of(group: &str) -> Option<Value> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && !group.is_empty())
        .map(|r| {
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
            "versions": [group_version_json(group, r.version)],
            "preferredVersion": group_version_json(group, r.version)})
        })
}

fn group_list() -> Value {
    let mut groups: Vec<&str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    let groups: Vec<Value> = groups
        .into_iter()
        .filter_map(|g| {
            let mut v = group_of(g)?;
            v.as_object_mut()?.remove("kind");
            v.as_object_mut()?.remove("apiVersion");
            Some(v)
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut list = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        list.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "shortNames": r.short_names,
        }));
        if r.plural == "pods" {
            list.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
            list.push(json!({"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

/// Which object(s) a path names.
struct Target {
    res: Resource,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let find = |plural: &str| resource(group, version, plural);
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if group.is_empty() && find(plural).is_some_and(|r| r.namespaced) =>
        {
            (
                Some((*ns).to_owned()),
                std::iter::once(*plural)
                    .chain(tail.iter().copied())
                    .collect::<Vec<_>>(),
            )
        }
        ["namespaces", ns, plural, tail @ ..] if !group.is_empty() => (
            Some((*ns).to_owned()),
            std::iter::once(*plural)
                .chain(tail.iter().copied())
                .collect(),
        ),
        other => (None, other.to_vec()),
    };
    let res = find(rest.first()?)?;
    if res.namespaced != namespace.is_some() && !(res.namespaced && rest.len() == 1) {
        return None;
    }
    Some(Target {
        res,
        namespace: namespace.unwrap_or_default(),
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: rest.get(2).map(|s| (*s).to_owned()),
    })
}

#[allow(clippy::too_many_arguments)]
async fn resource_request(
    shared: &Arc<Shared>,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    params: &Params,
    headers: &HeaderMap,
    body: Bytes,
) -> Reply {
    let path = format!("/{}", rest.join("/"));
    let Some(t) = parse_target(group, version, rest) else {
        return Err(not_found_path(&path));
    };
    let table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    match (method.clone(), &t.name, &t.sub) {
        (Method::GET, None, None) if params.flag("watch") => watch(shared, &t, params),
        (Method::GET, None, None) => list(shared, &t, params, table),
        (Method::POST, None, None) => create(shared, &t, &body, headers),
        (Method::DELETE, None, None) => delete_collection(shared, &t, params),
        (Method::GET, Some(name), None) => {
            let obj = get_object(shared, &t, name)?;
            if table {
                ok(&to_table(&t.res, &[obj], ""))
            } else {
                ok(&obj)
            }
        }
        (Method::GET, Some(name), Some(sub)) if sub == "status" => {
            get_object(shared, &t, name).map(|o| json_response(200, &o))
        }
        (Method::GET, Some(name), Some(sub)) if sub == "log" && t.res.plural == "pods" => {
            pod_log(shared, &t, name)
        }
        (Method::PUT, Some(name), None) => replace(shared, &t, name, &body),
        (Method::PATCH, Some(name), None) => patch(shared, &t, name, &body, headers),
        (Method::DELETE, Some(name), None) => delete(shared, &t, name, params, &body).await,
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            ),
            json!({}),
        )),
    }
}

fn key_of(t: &Target, name: &str) -> Key {
    Key {
        plural: t.res.plural,
        namespace: t.namespace.clone(),
        name: name.to_owned(),
    }
}

fn get_object(shared: &Shared, t: &Target, name: &str) -> Result<Value, ApiError> {
    shared
        .lock()
        .objects
        .get(&key_of(t, name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&t.res, name))
}

fn selectors(params: &Params) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(params.get("fieldSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn in_scope(t: &Target, key: &Key) -> bool {
    key.plural == t.res.plural && (t.namespace.is_empty() || key.namespace == t.namespace)
}

fn list(shared: &Shared, t: &Target, params: &Params, table: bool) -> Reply {
    let (labels, fields) = selectors(params)?;
    let st = shared.lock();
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|(k, v)| in_scope(t, k) && labels.matches(v) && fields.matches(v))
        .map(|(_, v)| v.clone())
        .collect();
    let rv = st.rv.to_string();
    drop(st);
    if table {
        return ok(&to_table(&t.res, &items, &rv));
    }
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut o| {
            // Items of a list carry no kind/apiVersion in Kubernetes' JSON; clients accept both.
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    ok(&json!({
        "kind": format!("{}List", t.res.kind),
        "apiVersion": t.res.api_version(),
        "metadata": {"resourceVersion": rv},
        "items": items,
    }))
}

fn age(object: &Value) -> String {
    let created = object["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap_or_default();
    if created.is_empty() {
        "<unknown>".into()
    } else {
        created.to_owned()
    }
}

fn to_table(res: &Resource, items: &[Value], rv: &str) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}),
    ];
    let pods = res.plural == "pods";
    if pods {
        for c in ["Ready", "Status", "Restarts", "IP"] {
            columns.push(
                json!({"name": c, "type": "string", "format": "", "description": c, "priority": 0}),
            );
        }
    }
    columns.push(json!({"name": "Created", "type": "string", "format": "", "description": "Creation time", "priority": 0}));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            if pods {
                let cs = &o["status"]["containerStatuses"][0];
                let ready = if cs["ready"].as_bool() == Some(true) { "1/1" } else { "0/1" };
                let status = cs["state"]["waiting"]["reason"]
                    .as_str()
                    .or_else(|| cs["state"]["terminated"]["reason"].as_str())
                    .or_else(|| o["status"]["phase"].as_str())
                    .unwrap_or("Pending");
                cells.push(json!(ready));
                cells.push(json!(status));
                cells.push(json!(cs["restartCount"].as_u64().unwrap_or(0)));
                cells.push(json!(o["status"]["podIP"].as_str().unwrap_or("<none>")));
            }
            cells.push(json!(age(o)));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "columnDefinitions": columns, "rows": rows})
}

fn parse_body(body: &Bytes, headers: &HeaderMap) -> Result<Value, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !ctype.contains("json") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ctype}; this emulator reads JSON only)"
            ),
            Value::Null,
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the object provided is unrecognized: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized (must be a JSON object)",
        ));
    }
    Ok(value)
}

fn namespace_state(shared: &Shared, ns: &str) -> Option<String> {
    shared
        .lock()
        .objects
        .get(&Key {
            plural: "namespaces",
            namespace: String::new(),
            name: ns.to_owned(),
        })
        .map(|n| n["status"]["phase"].as_str().unwrap_or("Active").to_owned())
}

fn create(shared: &Arc<Shared>, t: &Target, body: &Bytes, headers: &HeaderMap) -> Reply {
    let mut obj = parse_body(body, headers)?;
    if let Some(kind) = obj["kind"].as_str()
        && kind != t.res.kind
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            obj["apiVersion"].as_str().unwrap_or_default(),
            t.res.api_version()
        ))
        .with_kind_hint(kind, &t.res));
    }
    obj["kind"] = json!(t.res.kind);
    obj["apiVersion"] = json!(t.res.api_version());
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if t.res.namespaced {
        if t.namespace.is_empty() {
            return Err(not_found_path(t.res.plural));
        }
        match obj["metadata"]["namespace"].as_str() {
            Some(ns) if !ns.is_empty() && ns != t.namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(t.namespace),
        }
        match namespace_state(shared, &t.namespace).as_deref() {
            None => {
                return Err(ApiError::not_found(
                    &resource_of_kind("Namespace").unwrap_or(t.res),
                    &t.namespace,
                ));
            }
            Some("Terminating") => {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                        t.res.qualified(),
                        obj["metadata"]["name"].as_str().unwrap_or_default(),
                        t.namespace
                    ),
                    json!({"name": obj["metadata"]["name"], "kind": t.res.plural}),
                ));
            }
            _ => {}
        }
    }
    let mut st = shared.lock();
    let name = match obj["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => match obj["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                let n = st.next_rv();
                format!("{prefix}{:05x}", n % 0xfffff)
            }
            None => {
                drop(st);
                return Err(ApiError::invalid(
                    &t.res,
                    "",
                    vec![super::state::Cause {
                        reason: "FieldValueRequired",
                        message: "name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
        },
    };
    obj["metadata"]["name"] = json!(name);
    validate(&t.res, &obj)?;
    let key = key_of(t, &name);
    if st.objects.contains_key(&key) {
        return Err(ApiError::already_exists(&t.res, &name));
    }
    if t.res.plural == "pods" {
        let sa = obj["spec"]["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_owned();
        let sa_key = Key {
            plural: "serviceaccounts",
            namespace: t.namespace.clone(),
            name: sa.clone(),
        };
        if !st.objects.contains_key(&sa_key) {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "pods \"{name}\" is forbidden: error looking up service account {}/{sa}: serviceaccount \"{sa}\" not found",
                    t.namespace
                ),
                json!({"name": name, "kind": "pods"}),
            ));
        }
        default_pod(&mut obj, &sa);
    }
    let uid = st.uid();
    obj["metadata"]["uid"] = json!(uid);
    obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
    obj["metadata"]["generation"] = json!(1);
    match t.res.plural {
        "namespaces" => {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
            let labels = obj["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut labels = labels;
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            obj["metadata"]["labels"] = Value::Object(labels);
        }
        "services" => {
            let n = st.rv;
            if obj["spec"]["clusterIP"].as_str().is_none() {
                obj["spec"]["clusterIP"] =
                    json!(format!("10.96.{}.{}", (n / 250) % 250, n % 250 + 1));
            }
            if obj["spec"]["type"].is_null() {
                obj["spec"]["type"] = json!("ClusterIP");
            }
        }
        "persistentvolumeclaims" => {
            obj["status"] = json!({"phase": "Pending"});
        }
        _ => {}
    }
    let stored = st.put(&shared.events_tx, key.clone(), obj, EventType::Added);
    if t.res.plural == "namespaces" {
        let sa_uid = st.uid();
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
            "name": "default", "namespace": name, "uid": sa_uid, "creationTimestamp": now_rfc3339()}});
        st.put(
            &shared.events_tx,
            Key {
                plural: "serviceaccounts",
                namespace: name.clone(),
                name: "default".into(),
            },
            sa,
            EventType::Added,
        );
    }
    if t.res.plural == "pods" {
        let stop = Arc::new(tokio::sync::Notify::new());
        st.runtimes.insert(
            uid.clone(),
            PodRuntime {
                stop: stop.clone(),
                ..PodRuntime::default()
            },
        );
        drop(st);
        let task_shared = shared.clone();
        shared.spawn(kubelet::run_pod(task_shared, key, uid, stop));
    }
    Ok(json_response(201, &stored))
}

impl ApiError {
    fn with_kind_hint(mut self, kind: &str, res: &Resource) -> ApiError {
        self.body["message"] = json!(format!(
            "the kind in the body ({kind}) does not match the resource {} of the request",
            res.qualified()
        ));
        self
    }
}

fn default_pod(pod: &mut Value, sa: &str) {
    let spec = &mut pod["spec"];
    if spec["restartPolicy"].is_null() {
        spec["restartPolicy"] = json!("Always");
    }
    spec["serviceAccountName"] = json!(sa);
    spec["serviceAccount"] = json!(sa);
    if spec["terminationGracePeriodSeconds"].is_null() {
        spec["terminationGracePeriodSeconds"] = json!(30);
    }
    if spec["dnsPolicy"].is_null() {
        spec["dnsPolicy"] = json!("ClusterFirst");
    }
    spec["schedulerName"] = json!("default-scheduler");
    if let Some(containers) = spec["containers"].as_array_mut() {
        for c in containers {
            if c["imagePullPolicy"].is_null() {
                c["imagePullPolicy"] = json!("IfNotPresent");
            }
            c["terminationMessagePath"] = json!("/dev/termination-log");
            c["terminationMessagePolicy"] = json!("File");
        }
    }
    let has_resources = pod["spec"]["containers"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["resources"]["requests"].is_object() || c["resources"]["limits"].is_object())
    });
    pod["status"] = json!({
        "phase": "Pending",
        "qosClass": if has_resources { "Burstable" } else { "BestEffort" },
    });
}

fn replace(shared: &Shared, t: &Target, name: &str, body: &Bytes) -> Reply {
    let mut obj = parse_body(body, &HeaderMap::new())?;
    if obj["metadata"]["name"].as_str() != Some(name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            obj["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    let key = key_of(t, name);
    let mut st = shared.lock();
    let Some(old) = st.objects.get(&key).cloned() else {
        return Err(ApiError::not_found(&t.res, name));
    };
    if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                t.res.qualified()
            ),
            json!({"name": name, "kind": t.res.plural}),
        ));
    }
    obj["kind"] = json!(t.res.kind);
    obj["apiVersion"] = json!(t.res.api_version());
    for keep in ["uid", "creationTimestamp", "namespace", "deletionTimestamp"] {
        if !old["metadata"][keep].is_null() {
            obj["metadata"][keep] = old["metadata"][keep].clone();
        }
    }
    if t.res.plural == "pods" {
        // Only metadata changes: a pod's spec is immutable but for a few fields.
        obj["spec"] = old["spec"].clone();
        obj["status"] = old["status"].clone();
    }
    validate(&t.res, &obj)?;
    let stored = st.put(&shared.events_tx, key, obj, EventType::Modified);
    ok(&stored)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => {
            if patch.is_object() {
                let mut fresh = Value::Object(Map::new());
                merge(&mut fresh, patch);
                *target = fresh;
            } else {
                *target = patch.clone();
            }
        }
    }
}

fn patch(shared: &Shared, t: &Target, name: &str, body: &Bytes, headers: &HeaderMap) -> Reply {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !(ctype.starts_with("application/merge-patch+json")
        || ctype.starts_with("application/strategic-merge-patch+json"))
    {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the emulator supports merge and strategic-merge patches (as merge patches) only, not {ctype}"
            ),
            Value::Null,
        ));
    }
    let p: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid patch: {e}")))?;
    let key = key_of(t, name);
    let mut st = shared.lock();
    let Some(mut obj) = st.objects.get(&key).cloned() else {
        return Err(ApiError::not_found(&t.res, name));
    };
    let meta_only = t.res.plural == "pods";
    if meta_only {
        if let Some(m) = p.get("metadata") {
            merge(&mut obj["metadata"], m);
        }
    } else {
        merge(&mut obj, &p);
    }
    obj["metadata"]["name"] = json!(name);
    validate(&t.res, &obj)?;
    let stored = st.put(&shared.events_tx, key, obj, EventType::Modified);
    ok(&stored)
}

fn pod_log(shared: &Shared, t: &Target, name: &str) -> Reply {
    let pod = get_object(shared, t, name)?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let path = shared.lock().runtimes.get(&uid).and_then(|r| r.log.clone());
    let text = path
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
}

/// Delete options from the query and the body.
struct DeleteOptions {
    grace: Option<u64>,
    propagation: String,
}

fn delete_options(params: &Params, body: &Bytes) -> Result<DeleteOptions, ApiError> {
    let from_body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let grace = params
        .get("gracePeriodSeconds")
        .map(|g| {
            g.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))
        })
        .transpose()?
        .or_else(|| from_body["gracePeriodSeconds"].as_i64())
        .map(|g| g.max(0) as u64);
    let propagation = params
        .get("propagationPolicy")
        .map(str::to_owned)
        .or_else(|| from_body["propagationPolicy"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "Background".into());
    if !["Background", "Foreground", "Orphan"].contains(&propagation.as_str()) {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{propagation}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
            ),
            Value::Null,
        ));
    }
    Ok(DeleteOptions { grace, propagation })
}

async fn delete(
    shared: &Arc<Shared>,
    t: &Target,
    name: &str,
    params: &Params,
    body: &Bytes,
) -> Reply {
    let opts = delete_options(params, body)?;
    let key = key_of(t, name);
    let out = delete_one(shared, &t.res, &key, &opts)?;
    ok(&out)
}

fn delete_collection(shared: &Arc<Shared>, t: &Target, params: &Params) -> Reply {
    let (labels, fields) = selectors(params)?;
    let opts = delete_options(params, &Bytes::new())?;
    let keys: Vec<Key> = shared
        .lock()
        .objects
        .iter()
        .filter(|(k, v)| in_scope(t, k) && labels.matches(v) && fields.matches(v))
        .map(|(k, _)| k.clone())
        .collect();
    let mut items = Vec::new();
    for key in keys {
        if let Ok(v) = delete_one(shared, &t.res, &key, &opts) {
            items.push(v);
        }
    }
    ok(
        &json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": {}, "items": items}),
    )
}

/// Deletes one object: pods through the kubelet (grace), namespaces with their contents,
/// dependents by owner reference unless orphaned.
fn delete_one(
    shared: &Arc<Shared>,
    res: &Resource,
    key: &Key,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let mut st = shared.lock();
    let Some(mut obj) = st.objects.get(key).cloned() else {
        return Err(ApiError::not_found(res, &key.name));
    };
    let uid = obj["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let result = match res.plural {
        "pods" => {
            let grace = opts.grace.unwrap_or_else(|| {
                obj["spec"]["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(30)
            });
            let running = st.runtimes.get(&uid).is_some_and(|r| r.pgid.is_some());
            if let Some(rt) = st.runtimes.get_mut(&uid) {
                rt.grace = Some(if running { grace } else { 0 });
                rt.stop.notify_one();
            }
            if grace == 0 || !running {
                st.remove(&shared.events_tx, key).unwrap_or(obj)
            } else {
                if obj["metadata"]["deletionTimestamp"].is_null() {
                    obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                    obj = st.put(&shared.events_tx, key.clone(), obj, EventType::Modified);
                }
                obj
            }
        }
        "namespaces" => {
            if obj["status"]["phase"] != "Terminating" {
                obj["status"]["phase"] = json!("Terminating");
                obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                obj = st.put(&shared.events_tx, key.clone(), obj, EventType::Modified);
                let ns = key.name.clone();
                let task_shared = shared.clone();
                drop(st);
                shared.spawn(finalize_namespace(task_shared, ns));
                return Ok(obj);
            }
            obj
        }
        _ => st.remove(&shared.events_tx, key).unwrap_or(obj),
    };
    // Garbage collection of dependents (owner references to this uid).
    let dependents: Vec<Key> = st
        .objects
        .iter()
        .filter(|(_, v)| {
            v["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(&uid)))
        })
        .map(|(k, _)| k.clone())
        .collect();
    drop(st);
    for dep in dependents {
        if opts.propagation == "Orphan" {
            let mut st = shared.lock();
            if let Some(mut v) = st.objects.get(&dep).cloned() {
                if let Some(refs) = v["metadata"]["ownerReferences"].as_array() {
                    let kept: Vec<Value> = refs
                        .iter()
                        .filter(|r| r["uid"].as_str() != Some(&uid))
                        .cloned()
                        .collect();
                    v["metadata"]["ownerReferences"] = Value::Array(kept);
                }
                st.put(&shared.events_tx, dep, v, EventType::Modified);
            }
        } else if let Some(dep_res) = RESOURCES.iter().find(|r| r.plural == dep.plural) {
            let _ = delete_one(
                shared,
                dep_res,
                &dep,
                &DeleteOptions {
                    grace: Some(0),
                    propagation: "Background".into(),
                },
            );
        }
    }
    Ok(result)
}

/// Deletes everything in a terminating namespace, then the namespace.
async fn finalize_namespace(shared: Arc<Shared>, ns: String) {
    let keys: Vec<Key> = shared
        .lock()
        .objects
        .keys()
        .filter(|k| k.namespace == ns)
        .cloned()
        .collect();
    for key in keys {
        if let Some(res) = RESOURCES.iter().find(|r| r.plural == key.plural) {
            let _ = delete_one(
                &shared,
                res,
                &key,
                &DeleteOptions {
                    grace: Some(0),
                    propagation: "Background".into(),
                },
            );
        }
    }
    for _ in 0..500 {
        if !shared.lock().objects.keys().any(|k| k.namespace == ns) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut st = shared.lock();
    st.remove(
        &shared.events_tx,
        &Key {
            plural: "namespaces",
            namespace: String::new(),
            name: ns,
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Watch

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(shared: &Arc<Shared>, t: &Target, params: &Params) -> Reply {
    let (labels, fields) = selectors(params)?;
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let since = params
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0");
    let plural = t.res.plural;
    let namespace = t.namespace.clone();
    let matches = move |e: &Event| {
        e.plural == plural
            && (namespace.is_empty() || e.namespace == namespace)
            && labels.matches(&e.object)
            && fields.matches(&e.object)
    };
    let st = shared.lock();
    let rx = shared.events_tx.subscribe();
    let mut initial: VecDeque<Bytes> = VecDeque::new();
    match since.map(|s| s.parse::<u64>()) {
        Some(Ok(rv)) => {
            if rv < st.oldest_rv() {
                let gone = ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({})", st.oldest_rv()),
                    Value::Null,
                );
                initial.push_back(event_line("ERROR", &gone.body));
            } else {
                for e in st.events.iter().filter(|e| e.rv > rv && matches(e)) {
                    initial.push_back(event_line(e.kind.as_str(), &e.object));
                }
            }
        }
        Some(Err(_)) => return Err(ApiError::bad_request("invalid resourceVersion")),
        None => {
            for (k, v) in st.objects.iter() {
                let e = Event {
                    rv: 0,
                    kind: EventType::Added,
                    plural: k.plural,
                    namespace: k.namespace.clone(),
                    object: v.clone(),
                };
                if matches(&e) {
                    initial.push_back(event_line("ADDED", v));
                }
            }
        }
    }
    let last_rv = st.rv;
    drop(st);
    let deadline = tokio::time::Instant::now() + timeout;
    struct W<F> {
        initial: VecDeque<Bytes>,
        rx: broadcast::Receiver<Event>,
        matches: F,
        last_rv: u64,
        deadline: tokio::time::Instant,
    }
    let state = W {
        initial,
        rx,
        matches,
        last_rv,
        deadline,
    };
    let stream = futures_util::stream::unfold(state, |mut w| async move {
        if let Some(b) = w.initial.pop_front() {
            return Some((Ok::<Bytes, std::io::Error>(b), w));
        }
        loop {
            let next = tokio::time::timeout_at(w.deadline, w.rx.recv()).await;
            match next {
                Ok(Ok(e)) => {
                    if e.rv <= w.last_rv || !(w.matches)(&e) {
                        continue;
                    }
                    return Some((Ok(event_line(e.kind.as_str(), &e.object)), w));
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    let gone = ApiError::new(410, "Expired", "watch fell behind", Value::Null);
                    w.deadline = tokio::time::Instant::now();
                    return Some((Ok(event_line("ERROR", &gone.body)), w));
                }
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
            }
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_targets() {
        let t = parse_target("", "v1", &["namespaces", "ns1", "pods", "p"]).expect("pod");
        assert_eq!(
            (t.res.plural, t.namespace.as_str(), t.name.as_deref()),
            ("pods", "ns1", Some("p"))
        );
        let t = parse_target("", "v1", &["namespaces", "ns1"]).expect("namespace");
        assert_eq!(
            (t.res.plural, t.name.as_deref()),
            ("namespaces", Some("ns1"))
        );
        let t = parse_target("", "v1", &["pods"]).expect("all pods");
        assert!(t.namespace.is_empty());
        let t = parse_target(
            "rbac.authorization.k8s.io",
            "v1",
            &["namespaces", "a", "rolebindings"],
        )
        .expect("rb");
        assert_eq!(t.res.kind, "RoleBinding");
        assert!(parse_target("", "v1", &["nothing"]).is_none());
    }

    #[test]
    fn merge_patch() {
        let mut v = json!({"a": {"b": 1, "c": 2}});
        merge(&mut v, &json!({"a": {"b": null, "d": 3}}));
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}}));
    }

    #[test]
    fn query_decoding() {
        let p = query_pairs(Some(
            "labelSelector=kernel_id%3Dk1%2Ccomponent%3Dkernel&watch=true",
        ));
        assert_eq!(p[0].1, "kernel_id=k1,component=kernel");
    }
}
