//! The native launch path: the gateway renders a kernelspec's pod template itself (Jinja2 syntax,
//! as gateway_provisioners' `kernel-pod.yaml.j2`) with no Python.
//!
//! Client values are data, never template text: every `KERNEL_*` variable is rendered as an
//! opaque placeholder token (lowercase letters and digits, so it survives quoting and any YAML
//! context), the output is parsed as YAML, and only then are the tokens replaced by the values
//! inside the parsed tree. A value holding quotes, newlines, `{`, `: ` or `---` therefore stays
//! one string where the template put it; it can never add keys, documents or list items.
//! `KERNEL_UID`/`KERNEL_GID` are rendered as the integers they were validated to be (the
//! template applies `| int`), and `KERNEL_VOLUMES`/`KERNEL_VOLUME_MOUNTS` are YAML-parsed lists
//! of mappings, each item substituted as a whole value.
//!
//! Limits of the placeholder approach: a template that compares a client value
//! (`{% if kernel_x == "y" %}`) or transforms it with a filter (`| upper`, `| replace`) sees the
//! token, not the value; gateway_provisioners' template does neither.

use std::collections::BTreeMap;

use minijinja::{AutoEscape, Environment, Value as JinjaValue};
use serde_json::{Map, Value, json};

use super::client::{Kind, TEMPLATE_KINDS, template_kind};
use super::yaml;
use crate::Error;

/// Variables parsed as YAML lists of mappings, as gateway_provisioners' launcher does.
const LIST_VARS: [&str; 2] = ["KERNEL_VOLUMES", "KERNEL_VOLUME_MOUNTS"];

/// Variables rendered as integers.
const INT_VARS: [&str; 2] = ["KERNEL_UID", "KERNEL_GID"];

/// What a template produced: the pod and the other objects, in template order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The kernel pod.
    pub pod: Value,
    /// Secrets, PVCs, PVs, Services, ConfigMaps.
    pub others: Vec<(Kind, Value)>,
}

/// `KERNEL_VOLUMES`-style value: a YAML list of mappings, or a 400 naming the variable.
pub fn parse_list_var(name: &str, text: &str) -> Result<Vec<Value>, Error> {
    let bad = |why: String| {
        Error::InvalidRequest(format!("{name} must be a YAML list of mappings: {why}"))
    };
    let value = yaml::parse_value(text).map_err(bad)?;
    let Value::Array(items) = value else {
        return Err(bad("not a list".into()));
    };
    if let Some(i) = items.iter().position(|v| !v.is_object()) {
        return Err(bad(format!("item {i} is not a mapping")));
    }
    Ok(items)
}

/// Replaces placeholder tokens in every string and key of `v`.
fn substitute(v: &mut Value, values: &BTreeMap<String, Value>, marker: &str) {
    match v {
        Value::String(s) if s.contains(marker) => {
            if let Some(whole) = values.get(s.as_str()) {
                *v = whole.clone();
            } else {
                *s = replace_tokens(s, values);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| substitute(i, values, marker)),
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut val) in old {
                substitute(&mut val, values, marker);
                let k = if k.contains(marker) {
                    replace_tokens(&k, values)
                } else {
                    k
                };
                map.insert(k, val);
            }
        }
        _ => {}
    }
}

fn replace_tokens(s: &str, values: &BTreeMap<String, Value>) -> String {
    let mut out = s.to_owned();
    for (token, value) in values {
        if out.contains(token.as_str()) {
            let text = match value {
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            out = out.replace(token.as_str(), &text);
        }
    }
    out
}

/// Renders `template` (named `name` in messages) with the `KERNEL_*` variables of `env`, then
/// fills the pod's first container's env as gateway_provisioners' launcher does (the
/// template's entries take `container_env`'s values, then every other `container_env` entry
/// follows).
pub fn render(
    name: &str,
    template: &str,
    env: &BTreeMap<String, String>,
    container_env: &BTreeMap<String, String>,
) -> Result<Rendered, Error> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let marker = format!("zq{}", &nonce[..12]);
    let mut values: BTreeMap<String, Value> = BTreeMap::new();
    let mut context: BTreeMap<String, JinjaValue> = BTreeMap::new();
    for (i, (key, value)) in env
        .iter()
        .filter(|(k, _)| k.starts_with("KERNEL_"))
        .enumerate()
    {
        let var = key.to_ascii_lowercase();
        if INT_VARS.contains(&key.as_str()) {
            let n: u32 = value
                .trim()
                .parse()
                .map_err(|_| Error::InvalidRequest(format!("{key} must be an integer")))?;
            context.insert(var, JinjaValue::from(n));
            continue;
        }
        if LIST_VARS.contains(&key.as_str()) {
            let items = parse_list_var(key, value)?;
            let tokens: Vec<JinjaValue> = items
                .into_iter()
                .enumerate()
                .map(|(j, item)| {
                    let token = format!("{marker}v{i}i{j}x");
                    values.insert(token.clone(), item);
                    JinjaValue::from(token)
                })
                .collect();
            context.insert(var, JinjaValue::from(tokens));
            continue;
        }
        let token = format!("{marker}v{i}x");
        values.insert(token.clone(), Value::String(value.clone()));
        context.insert(var, JinjaValue::from(token));
    }
    let config = |e: String| Error::Config(format!("pod template {name}: {e}"));
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| config(e.to_string()))?;
    let mut jinja = Environment::new();
    jinja.set_syntax(syntax);
    jinja.set_auto_escape_callback(|_| AutoEscape::None);
    jinja
        .add_template("pod", template)
        .map_err(|e| config(e.to_string()))?;
    let text = jinja
        .get_template("pod")
        .and_then(|t| t.render(&context))
        .map_err(|e| config(e.to_string()))?;
    let docs = yaml::parse_documents(&text)
        .map_err(|e| config(format!("the rendered YAML does not parse: {e}")))?;
    let mut pod = None;
    let mut others = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
        let Some(kind) = doc["kind"].as_str().map(str::to_owned) else {
            return Err(config("a document has no kind".into()));
        };
        let Some(k) = template_kind(&kind) else {
            let allowed: Vec<&str> = TEMPLATE_KINDS.iter().map(|k| k.kind).collect();
            return Err(config(format!(
                "kind '{kind}' is not one of {}",
                allowed.join(", ")
            )));
        };
        if seen.contains(&k.kind) {
            return Err(config(format!("more than one {kind}")));
        }
        seen.push(k.kind);
        substitute(&mut doc, &values, &marker);
        if k.kind == "Pod" {
            pod = Some(doc);
        } else {
            others.push((k, doc));
        }
    }
    let Some(mut pod) = pod else {
        return Err(config("no Pod document".into()));
    };
    extend_env(&mut pod, container_env).map_err(config)?;
    Ok(Rendered { pod, others })
}

/// The first container's env: template entries take `env`'s values; the rest of `env` follows.
fn extend_env(pod: &mut Value, env: &BTreeMap<String, String>) -> Result<(), String> {
    let container = pod["spec"]["containers"]
        .get_mut(0)
        .filter(|c| c.is_object())
        .ok_or("the pod has no container")?;
    let mut entries: Vec<Value> = match container.get("env") {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err("the container's env is not a list".into()),
    };
    let mut done: Vec<String> = Vec::new();
    for item in &mut entries {
        if let Some(name) = item["name"].as_str().map(str::to_owned)
            && let Some(value) = env.get(&name)
        {
            item["value"] = json!(value);
            done.push(name);
        }
    }
    for (k, v) in env {
        if !done.contains(k) {
            entries.push(json!({"name": k, "value": v}));
        }
    }
    if let Value::Object(map) = container {
        map.insert("env".into(), Value::Array(entries));
    }
    Ok(())
}

/// A pod without a template: one container `<pod name>` of `image` with the env, restart
/// policy Never, the labels and annotation of gateway_provisioners' template, the security
/// context, resources and working directory from the `KERNEL_*` values.
pub fn default_pod(
    env: &BTreeMap<String, String>,
    container_env: &BTreeMap<String, String>,
) -> Result<Rendered, Error> {
    let get = |k: &str| env.get(k).cloned();
    let name = get("KERNEL_POD_NAME").unwrap_or_default();
    let mut labels = Map::new();
    labels.insert(
        "kernel_id".into(),
        json!(get("KERNEL_ID").unwrap_or_default()),
    );
    labels.insert("app".into(), json!("enterprise-gateway"));
    labels.insert("component".into(), json!("kernel"));
    let mut container = json!({"name": name, "image": get("KERNEL_IMAGE").unwrap_or_default()});
    let mut resources = Map::new();
    for (part, suffix) in [("requests", ""), ("limits", "_LIMIT")] {
        let mut m = Map::new();
        for (key, res) in [
            ("KERNEL_CPUS", "cpu"),
            ("KERNEL_MEMORY", "memory"),
            ("KERNEL_GPUS", "nvidia.com/gpu"),
        ] {
            if let Some(v) = get(&format!("{key}{suffix}")) {
                m.insert(res.into(), json!(v));
            }
        }
        if !m.is_empty() {
            resources.insert(part.into(), Value::Object(m));
        }
    }
    if !resources.is_empty() {
        container["resources"] = Value::Object(resources);
    }
    if let Some(dir) = get("KERNEL_WORKING_DIR") {
        container["workingDir"] = json!(dir);
    }
    let mut spec = json!({
        "restartPolicy": "Never",
        "serviceAccountName": get("KERNEL_SERVICE_ACCOUNT_NAME").unwrap_or_else(|| "default".into()),
        "containers": [container],
    });
    let uid = get("KERNEL_UID").and_then(|v| v.parse::<u32>().ok());
    let gid = get("KERNEL_GID").and_then(|v| v.parse::<u32>().ok());
    if uid.is_some() || gid.is_some() {
        let mut sc = json!({"fsGroup": 100});
        if let Some(u) = uid {
            sc["runAsUser"] = json!(u);
        }
        if let Some(g) = gid {
            sc["runAsGroup"] = json!(g);
        }
        spec["securityContext"] = sc;
    }
    for (key, field) in [
        ("KERNEL_VOLUMES", "volumes"),
        ("KERNEL_VOLUME_MOUNTS", "volumeMounts"),
    ] {
        if let Some(text) = get(key) {
            let items = parse_list_var(key, &text)?;
            if field == "volumes" {
                spec["volumes"] = Value::Array(items);
            } else {
                spec["containers"][0]["volumeMounts"] = Value::Array(items);
            }
        }
    }
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": get("KERNEL_NAMESPACE").unwrap_or_default(),
            "labels": labels,
            "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        },
        "spec": spec,
    });
    extend_env(&mut pod, container_env).map_err(Error::Config)?;
    Ok(Rendered {
        pod,
        others: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: "{{ kernel_pod_name }}"
  labels:
    kernel_id: "{{ kernel_id }}"
    component: kernel
spec:
  {% if kernel_uid is defined %}
  securityContext:
    runAsUser: {{ kernel_uid | int }}
  {% endif %}
  containers:
  - image: "{{ kernel_image }}"
    name: "{{ kernel_pod_name }}"
    env:
    - name: FIXED
      value: "x"
    {% if kernel_cpus is defined %}
    resources:
      requests:
        cpu: "{{ kernel_cpus }}"
    {% endif %}
    volumeMounts:
    {% if kernel_volume_mounts is defined %}
      {% for m in kernel_volume_mounts %}
    - {{ m }}
      {% endfor %}
    {% endif %}
"#;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn renders_with_values_in_place() -> Result<(), Error> {
        let e = env(&[
            ("KERNEL_POD_NAME", "alice-k1"),
            ("KERNEL_ID", "k1"),
            ("KERNEL_IMAGE", "img:1"),
            ("KERNEL_UID", "1000"),
            ("KERNEL_CPUS", "500m"),
            ("KERNEL_VOLUME_MOUNTS", "[{name: data, mountPath: /data}]"),
        ]);
        let r = render(
            "t",
            TEMPLATE,
            &e,
            &env(&[("FIXED", "y"), ("KERNEL_ID", "k1")]),
        )?;
        assert_eq!(r.pod["metadata"]["name"], "alice-k1");
        assert_eq!(r.pod["spec"]["securityContext"]["runAsUser"], 1000);
        let c = &r.pod["spec"]["containers"][0];
        assert_eq!(c["resources"]["requests"]["cpu"], "500m");
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "data", "mountPath": "/data"}])
        );
        assert_eq!(
            c["env"],
            json!([{"name": "FIXED", "value": "y"}, {"name": "KERNEL_ID", "value": "k1"}])
        );
        Ok(())
    }

    #[test]
    fn hostile_values_stay_strings() -> Result<(), Error> {
        let hostile = "x\"\n  evil: true\n---\nkind: Secret\n{{ 7*7 }}{% raw %}";
        let e = env(&[
            ("KERNEL_POD_NAME", "p"),
            ("KERNEL_ID", "k"),
            ("KERNEL_IMAGE", hostile),
            ("KERNEL_CPUS", "1: [x]"),
        ]);
        let r = render("t", TEMPLATE, &e, &BTreeMap::new())?;
        assert!(r.others.is_empty());
        let c = &r.pod["spec"]["containers"][0];
        assert_eq!(c["image"], hostile);
        assert_eq!(c["resources"]["requests"]["cpu"], "1: [x]");
        assert!(c.get("evil").is_none());
        assert_eq!(r.pod["metadata"].as_object().map(|m| m.len()), Some(2));
        Ok(())
    }

    #[test]
    fn bad_lists_and_kinds_are_refused() {
        let e = env(&[("KERNEL_VOLUME_MOUNTS", "just text")]);
        assert!(matches!(
            render("t", TEMPLATE, &e, &BTreeMap::new()),
            Err(Error::InvalidRequest(_))
        ));
        let two = "kind: Pod\nspec: {containers: [{name: a}]}\n---\nkind: Deployment\n";
        assert!(matches!(
            render("t", two, &BTreeMap::new(), &BTreeMap::new()),
            Err(Error::Config(_))
        ));
    }
}
