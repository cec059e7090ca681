//! gateway_provisioners' own `kernel-pod.yaml.j2` rendered natively with hostile `KERNEL_*`
//! values (YAML syntax, newlines, document markers, Jinja syntax, over-long text): the pod's
//! structure — every key path and list length — is the one a benign render gives, and each
//! value sits where the template put it, unchanged.

use std::collections::{BTreeMap, BTreeSet};

use resource_managers::kubernetes::pod::render;
use serde_json::Value;

/// Every key path of `v` (list items by index), with leaf values replaced by their type.
fn shape(v: &Value, path: String, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, item) in map {
                // The container env is a list of the launch env: names and order are data.
                if k == "env" {
                    out.insert(format!("{path}.env[]"));
                    continue;
                }
                shape(item, format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                shape(item, format!("{path}[{i}]"), out);
            }
        }
        Value::String(_) => {
            out.insert(format!("{path}: string"));
        }
        other => {
            out.insert(format!(
                "{path}: {}",
                if other.is_number() { "number" } else { "other" }
            ));
        }
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn rendered_shape(values: &BTreeMap<String, String>) -> (BTreeSet<String>, Value, usize) {
    let template = std::fs::read_to_string(crate::gp_template()).expect("GP's template");
    let r = render("kernel-pod.yaml.j2", &template, values, values).expect("renders");
    let mut out = BTreeSet::new();
    shape(&r.pod, String::new(), &mut out);
    (out, r.pod, r.others.len())
}

#[test]
fn hostile_values_never_change_the_pod_structure() {
    let keys = [
        "KERNEL_POD_NAME",
        "KERNEL_NAMESPACE",
        "KERNEL_ID",
        "KERNEL_SERVICE_ACCOUNT_NAME",
        "KERNEL_IMAGE",
        "KERNEL_CPUS",
        "KERNEL_MEMORY",
        "KERNEL_GPUS",
        "KERNEL_CPUS_LIMIT",
        "KERNEL_MEMORY_LIMIT",
        "KERNEL_GPUS_LIMIT",
        "KERNEL_WORKING_DIR",
    ];
    let mut benign: BTreeMap<String, String> = keys
        .iter()
        .map(|k| ((*k).to_owned(), "plain".to_owned()))
        .collect();
    benign.insert("KERNEL_UID".into(), "1000".into());
    benign.insert("KERNEL_GID".into(), "100".into());
    benign.insert(
        "KERNEL_VOLUMES".into(),
        "[{name: data, emptyDir: {}}]".into(),
    );
    benign.insert(
        "KERNEL_VOLUME_MOUNTS".into(),
        "[{name: data, mountPath: /data}]".into(),
    );
    let (expected, _, others) = rendered_shape(&benign);
    assert_eq!(others, 0);

    let long = "x".repeat(5000);
    let hostile_values = [
        "a\"\nkind: Secret\nmetadata: {name: s}",
        "x\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: injected}\n",
        "'; privileged: true; '",
        "\"\n    securityContext:\n      privileged: true\n    x: \"",
        "{{ 7 * 7 }}{% if true %}jinja{% endif %}",
        "- item\n- other",
        "{evil: true}",
        "&anchor *alias !!python/object:os.system",
        long.as_str(),
        "",
    ];
    for hostile in hostile_values {
        let mut values = benign.clone();
        for k in keys {
            values.insert(k.to_owned(), hostile.to_owned());
        }
        let (got, pod, others) = rendered_shape(&values);
        assert_eq!(others, 0, "{hostile:?} added objects");
        assert_eq!(got, expected, "{hostile:?} changed the structure");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], hostile);
        assert_eq!(c["name"], hostile);
        assert_eq!(c["resources"]["requests"]["cpu"], hostile);
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], hostile);
        assert_eq!(c["workingDir"], hostile);
        assert_eq!(pod["metadata"]["namespace"], hostile);
        assert_eq!(pod["metadata"]["labels"]["kernel_id"], hostile);
        assert_eq!(pod["spec"]["serviceAccountName"], hostile);
        // The env list holds the value as one entry's value.
        let env = c["env"].as_array().cloned().unwrap_or_default();
        assert!(
            env.iter()
                .any(|e| e["name"] == "KERNEL_IMAGE" && e["value"] == hostile)
        );
    }

    // Structured values that are not lists of mappings are refused, not spliced in.
    let mut values = benign.clone();
    values.insert("KERNEL_VOLUMES".into(), "{name: x}".into());
    let template = std::fs::read_to_string(crate::gp_template()).expect("GP's template");
    assert!(render("t", &template, &values, &values).is_err());
    let _ = env(&[]);
}
