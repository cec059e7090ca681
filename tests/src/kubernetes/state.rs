//! The emulator's object store: resource kinds, resource versions, the watch event log, label
//! and field selectors, object validation and `Status` error bodies.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use super::EmulatorConfig;

/// One resource kind the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resource {
    /// API group (`""` for the core group).
    pub(crate) group: &'static str,
    /// Version (`v1`).
    pub(crate) version: &'static str,
    /// `kind`.
    pub(crate) kind: &'static str,
    /// Lowercase plural used in paths.
    pub(crate) plural: &'static str,
    /// Lowercase singular.
    pub(crate) singular: &'static str,
    /// Whether objects live in a namespace.
    pub(crate) namespaced: bool,
    /// kubectl short names.
    pub(crate) short_names: &'static [&'static str],
}

impl Resource {
    /// `apiVersion` of its objects.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods`, or `rolebindings.rbac.authorization.k8s.io`, as Kubernetes names a resource in
    /// error messages.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn core(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> Resource {
    Resource {
        group: "",
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names,
    }
}

const fn rbac(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names: &[],
    }
}

/// Every resource kind served.
pub(crate) const RESOURCES: &[Resource] = &[
    core("Namespace", "namespaces", "namespace", false, &["ns"]),
    core("Pod", "pods", "pod", true, &["po"]),
    core("Service", "services", "service", true, &["svc"]),
    core("ConfigMap", "configmaps", "configmap", true, &["cm"]),
    core("Secret", "secrets", "secret", true, &[]),
    core(
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        &["pvc"],
    ),
    core(
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        false,
        &["pv"],
    ),
    core(
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
    ),
    core("Event", "events", "event", true, &["ev"]),
    core("Node", "nodes", "node", false, &["no"]),
    rbac("RoleBinding", "rolebindings", "rolebinding", true),
    rbac("Role", "roles", "role", true),
    rbac("ClusterRole", "clusterroles", "clusterrole", false),
    rbac(
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
    ),
];

/// The resource served at `group`/`version`/`plural`.
pub(crate) fn resource(group: &str, version: &str, plural: &str) -> Option<Resource> {
    RESOURCES
        .iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of a kind.
pub(crate) fn resource_of_kind(kind: &str) -> Option<Resource> {
    RESOURCES.iter().copied().find(|r| r.kind == kind)
}

/// A stored object's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub(crate) plural: &'static str,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// A watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) kind: EventType,
    pub(crate) plural: &'static str,
    pub(crate) namespace: String,
    pub(crate) object: Value,
}

/// How many events are kept for watches that resume from a resource version.
const EVENT_LOG: usize = 4096;

/// What the kubelet keeps per pod (by uid).
#[derive(Debug, Default)]
pub(crate) struct PodRuntime {
    /// The container's process group, while it runs.
    pub(crate) pgid: Option<i32>,
    /// Set when the pod is being deleted: the kubelet stops the container.
    pub(crate) stop: Arc<Notify>,
    /// Grace period of the deletion (seconds).
    pub(crate) grace: Option<u64>,
    /// Container log file.
    pub(crate) log: Option<std::path::PathBuf>,
}

/// The mutable state.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) rv: u64,
    pub(crate) objects: BTreeMap<Key, Value>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) runtimes: HashMap<String, PodRuntime>,
    /// Every container process group ever started.
    pub(crate) every_pgid: Vec<i32>,
    pub(crate) next_uid: u64,
    pub(crate) stopped: bool,
}

/// State shared by the HTTP handlers and the kubelet.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: EmulatorConfig,
    pub(crate) store: Mutex<Store>,
    pub(crate) events_tx: broadcast::Sender<Event>,
    pub(crate) log_root: std::path::PathBuf,
    pub(crate) url: Mutex<String>,
    pub(crate) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    pub(crate) fn new(config: EmulatorConfig, log_root: std::path::PathBuf) -> Shared {
        let (events_tx, _) = broadcast::channel(EVENT_LOG);
        Shared {
            config,
            store: Mutex::new(Store {
                rv: 100,
                objects: BTreeMap::new(),
                events: VecDeque::new(),
                runtimes: HashMap::new(),
                every_pgid: Vec::new(),
                next_uid: 1,
                stopped: false,
            }),
            events_tx,
            log_root,
            url: Mutex::new(String::new()),
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(handle);
    }
}

impl Store {
    /// Bumps the resource version.
    pub(crate) fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// A fresh uid (UUID-shaped).
    pub(crate) fn uid(&mut self) -> String {
        self.next_uid += 1;
        let n = self.next_uid;
        let r: u64 = rand_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (r >> 32) as u32,
            (r >> 16) & 0xffff,
            n & 0xfff,
            (r >> 4) & 0xfff,
            n
        )
    }

    /// Stores `object` (setting its resourceVersion) and records the event.
    pub(crate) fn put(
        &mut self,
        tx: &broadcast::Sender<Event>,
        key: Key,
        mut object: Value,
        kind: EventType,
    ) -> Value {
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(tx, rv, kind, &key, object.clone());
        self.objects.insert(key, object.clone());
        object
    }

    /// Removes an object, recording DELETED.
    pub(crate) fn remove(&mut self, tx: &broadcast::Sender<Event>, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(tx, rv, EventType::Deleted, key, object.clone());
        Some(object)
    }

    fn record(
        &mut self,
        tx: &broadcast::Sender<Event>,
        rv: u64,
        kind: EventType,
        key: &Key,
        object: Value,
    ) {
        let event = Event {
            rv,
            kind,
            plural: key.plural,
            namespace: key.namespace.clone(),
            object,
        };
        if self.events.len() >= EVENT_LOG {
            self.events.pop_front();
        }
        self.events.push_back(event.clone());
        let _ = tx.send(event);
    }

    /// The oldest resource version a watch can resume from.
    pub(crate) fn oldest_rv(&self) -> u64 {
        self.events
            .front()
            .map_or(self.rv, |e| e.rv.saturating_sub(1))
    }
}

/// A small non-cryptographic random number (uids only).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

/// RFC 3339 time, second precision, as the API server writes it.
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

// ---------------------------------------------------------------------------------------------
// Status bodies

/// An API error: HTTP status plus the `Status` object.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) body: Value,
}

impl ApiError {
    pub(crate) fn new(
        code: u16,
        reason: &str,
        message: impl Into<String>,
        details: Value,
    ) -> ApiError {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message.into(),
            "reason": reason,
            "code": code,
        });
        if !details.is_null() {
            body["details"] = details;
        }
        ApiError { code, body }
    }

    pub(crate) fn not_found(res: &Resource, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
            json!({"name": name, "group": res.group, "kind": res.plural}),
        )
    }

    pub(crate) fn already_exists(res: &Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
            json!({"name": name, "group": res.group, "kind": res.plural}),
        )
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message, Value::Null)
    }

    pub(crate) fn invalid(res: &Resource, name: &str, causes: Vec<Cause>) -> ApiError {
        let text: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let message = if text.len() == 1 {
            format!("{} \"{name}\" is invalid: {}", res.kind, text[0])
        } else {
            format!("{} \"{name}\" is invalid: [{}]", res.kind, text.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        ApiError::new(
            422,
            "Invalid",
            message,
            json!({"name": name, "group": res.group, "kind": res.kind, "causes": causes}),
        )
    }
}

/// One validation failure.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) field: String,
}

fn required(field: impl Into<String>) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        message: "Required value".into(),
        field: field.into(),
    }
}

fn invalid_value(field: impl Into<String>, value: &str, why: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: \"{value}\": {why}"),
        field: field.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation (apimachinery's rules, the parts these clients exercise)

/// RFC 1123 label: at most 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: at most 253, dot-separated labels.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value: empty, or at most 63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let ok = |b: u8| b.is_ascii_alphanumeric();
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && ok(s.as_bytes()[0])
        && ok(s.as_bytes()[s.len() - 1])
}

/// A label or annotation key: `[prefix/]name`, name as a label value (non-empty), prefix a
/// subdomain.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// A Kubernetes quantity (`500m`, `1.5`, `2Gi`, `1e3`), parsed to a number of base units.
pub(crate) fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let sign_ok = number
        .char_indices()
        .all(|(i, c)| (c != '+' && c != '-') || i == 0);
    if number.is_empty() || !sign_ok || number.matches('.').count() > 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            10f64.powi(e)
        }
        _ => return None,
    };
    Some(value * factor)
}

fn check_labels(field: &str, map: Option<&Value>, label_values: bool, causes: &mut Vec<Cause>) {
    let Some(map) = map else { return };
    let Some(map) = map.as_object() else {
        causes.push(invalid_value(
            field,
            &map.to_string(),
            "must be a map of strings",
        ));
        return;
    };
    for (k, v) in map {
        if !is_qualified_name(k) {
            causes.push(invalid_value(
                field,
                k,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
        match v.as_str() {
            Some(v) if !label_values || is_label_value(v) => {}
            Some(v) => causes.push(invalid_value(
                field,
                v,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            )),
            None => causes.push(invalid_value(field, &v.to_string(), "must be a string")),
        }
    }
}

/// Validates an object for create/replace; the name is already set.
pub(crate) fn validate(res: &Resource, object: &Value) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let mut causes = Vec::new();
    let name_ok = match res.plural {
        "namespaces" | "services" => is_dns_label(name),
        _ => is_dns_subdomain(name),
    };
    if !name_ok {
        causes.push(invalid_value(
            "metadata.name",
            name,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ));
    }
    check_labels(
        "metadata.labels",
        object["metadata"].get("labels"),
        true,
        &mut causes,
    );
    check_labels(
        "metadata.annotations",
        object["metadata"].get("annotations"),
        false,
        &mut causes,
    );
    if res.plural == "pods" {
        validate_pod(object, &mut causes);
    }
    if res.plural == "rolebindings" || res.plural == "clusterrolebindings" {
        if object["roleRef"]["name"].as_str().is_none_or(str::is_empty) {
            causes.push(required("roleRef.name"));
        }
        if object["roleRef"]["kind"].as_str().is_none_or(str::is_empty) {
            causes.push(required("roleRef.kind"));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res, name, causes))
    }
}

fn validate_pod(pod: &Value, causes: &mut Vec<Cause>) {
    let spec = &pod["spec"];
    let Some(containers) = spec["containers"].as_array().filter(|c| !c.is_empty()) else {
        causes.push(required("spec.containers"));
        return;
    };
    for (i, c) in containers.iter().enumerate() {
        let at = |f: &str| format!("spec.containers[{i}].{f}");
        match c["name"].as_str() {
            Some(n) if is_dns_label(n) => {}
            Some(n) => causes.push(invalid_value(
                at("name"),
                n,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            )),
            None => causes.push(required(at("name"))),
        }
        if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
            causes.push(required(at("image")));
        }
        if let Some(env) = c.get("env").filter(|e| !e.is_null()) {
            let Some(env) = env.as_array() else {
                causes.push(invalid_value(at("env"), &env.to_string(), "must be a list"));
                continue;
            };
            for (j, e) in env.iter().enumerate() {
                let name = e["name"].as_str().unwrap_or_default();
                let valid = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
                if !valid {
                    causes.push(invalid_value(
                        format!("spec.containers[{i}].env[{j}].name"),
                        name,
                        "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
                    ));
                }
                if let Some(v) = e.get("value")
                    && !v.is_null()
                    && !v.is_string()
                {
                    causes.push(invalid_value(
                        format!("spec.containers[{i}].env[{j}].value"),
                        &v.to_string(),
                        "must be a string",
                    ));
                }
            }
        }
        for part in ["requests", "limits"] {
            let Some(map) = c["resources"][part].as_object() else {
                continue;
            };
            for (k, v) in map {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => other.to_string(),
                };
                if parse_quantity(&text).is_none_or(|q| q < 0.0) {
                    causes.push(invalid_value(
                        format!("spec.containers[{i}].resources.{part}[{k}]"),
                        &text,
                        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                    ));
                }
            }
        }
    }
    for field in ["runAsUser", "runAsGroup", "fsGroup"] {
        if let Some(v) = spec["securityContext"].get(field)
            && !v.is_null()
            && v.as_i64().is_none_or(|n| !(0..=2_147_483_647).contains(&n))
        {
            causes.push(invalid_value(
                format!("spec.securityContext.{field}"),
                &v.to_string(),
                "must be between 0 and 2147483647, inclusive",
            ));
        }
    }
    if let Some(policy) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: \"{policy}\": supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
            field: "spec.restartPolicy".into(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (all requirements must hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub(crate) fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut out = Vec::new();
        // Split on commas outside parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("unable to parse requirement: {part}"))?;
                Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
            };
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set(rest)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Eq(k, _)
                | Requirement::NotEq(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if !is_qualified_name(key) {
                return Err(format!(
                    "unable to parse requirement: invalid label key \"{key}\""
                ));
            }
            out.push(req);
        }
        Ok(LabelSelector(out))
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A field selector: `metadata.name`, `metadata.namespace`, `status.phase`, `spec.nodeName`
/// with `=`, `==` or `!=`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub(crate) fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let k = k.trim();
            if ![
                "metadata.name",
                "metadata.namespace",
                "status.phase",
                "spec.nodeName",
            ]
            .contains(&k)
            {
                return Err(format!("field label not supported: {k}"));
            }
            out.push((k.to_owned(), eq, v.trim().to_owned()));
        }
        Ok(FieldSelector(out))
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let mut cur = object;
            for part in k.split('.') {
                cur = &cur[part];
            }
            (cur.as_str().unwrap_or_default() == v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let pod = json!({"metadata": {"labels": {"kernel_id": "k1", "component": "kernel"}, "name": "p"}});
        let sel = |s: &str| LabelSelector::parse(s).expect("parse").matches(&pod);
        assert!(sel("kernel_id=k1,component=kernel"));
        assert!(!sel("kernel_id=k2"));
        assert!(sel("kernel_id in (k0, k1)"));
        assert!(sel("!other"));
        assert!(sel("component"));
        assert!(sel("app notin (x)"));
        assert!(
            FieldSelector::parse("metadata.name=p")
                .expect("f")
                .matches(&pod)
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2Gi"), Some(2.0 * 1024f64.powi(3)));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        for bad in ["", "abc", "1.2.3", "5 Gi", "1Q", "--1"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_look_right() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z'));
    }
}
