//! Checks of values a client sends before they reach the API server: names as RFC 1123 labels
//! or subdomains, resource quantities, image references, ids. Each failure is an
//! [`Error::InvalidRequest`] (400) naming the `KERNEL_*` variable, so the API server never
//! answers a client's mistake with a 422 that would surface as a 500.

use crate::Error;

/// Most bytes of a DNS label.
pub const MAX_LABEL: usize = 63;

/// Whether `s` is an RFC 1123 label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is an RFC 1123 subdomain: at most 253 bytes of dot-separated labels.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub use crate::launcher::excerpt;

/// `value` of `field` as a DNS label, or a 400 naming the field.
pub fn dns_label(field: &str, value: &str) -> Result<(), Error> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "{field} '{}' is not a valid Kubernetes name: it must be 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit (RFC 1123 label)",
            excerpt(value)
        )))
    }
}

/// `value` of `field` as a DNS subdomain (service-account names), or a 400.
pub fn dns_subdomain(field: &str, value: &str) -> Result<(), Error> {
    if is_dns_subdomain(value) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "{field} '{}' is not a valid Kubernetes name: it must be at most 253 characters of dot-separated RFC 1123 labels",
            excerpt(value)
        )))
    }
}

/// Whether `s` is a Kubernetes quantity (`^[+-]?[0-9.]+` then a binary, decimal or exponent
/// suffix), e.g. `500m`, `2`, `1.5Gi`, `1e3`.
pub fn is_quantity(s: &str) -> bool {
    if s.is_empty() || s.len() > 64 {
        return false;
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let split = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(split);
    let digits = number.bytes().filter(u8::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return false;
    }
    match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti"
        | "Pi" | "Ei" => true,
        exp => {
            let Some(rest) = exp.strip_prefix(['e', 'E']) else {
                return false;
            };
            let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
        }
    }
}

/// `value` of `field` as a non-negative quantity, or a 400.
pub fn quantity(field: &str, value: &str) -> Result<(), Error> {
    if is_quantity(value) && !value.starts_with('-') {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "{field} '{}' is not a valid Kubernetes quantity (e.g. 500m, 2, 1.5Gi)",
            excerpt(value)
        )))
    }
}

/// `value` of `field` as a container image reference: no white space or control characters,
/// at most 4096 bytes, not empty. (The registry decides the rest.)
pub fn image(field: &str, value: &str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value.len() <= 4096
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\'' && c != '\\');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "{field} '{}' is not a valid container image reference",
            excerpt(value)
        )))
    }
}

pub use crate::launcher::check_working_dir as working_dir;

/// EG's pod-name rule: lowercase, each run of characters outside `[0-9a-z]` becomes one `-`,
/// leading and trailing `-` removed.
pub fn normalize_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut dash = false;
    for c in raw.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c);
        } else {
            dash = true;
        }
    }
    out
}

/// Whether `s` is the name part of a label key or a non-empty label value: 1–63 of
/// `[A-Za-z0-9-_.]`, alphanumeric at both ends.
fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether `s` is a label key: an optional DNS-subdomain prefix and `/`, then a label name.
pub fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

/// Whether `s` is a label value: empty, or a label name.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

/// A profile's pod settings ([`crate::PodPlacement`]): node-selector keys and values as labels,
/// tolerations as the API accepts them. A failure is a 400 naming the field as the profiles file
/// spells it (`kubernetes.tolerations[0].effect`).
pub fn pod_placement(placement: &crate::PodPlacement) -> Result<(), Error> {
    let bad = |field: String, value: &str, what: &str| {
        Err(Error::InvalidRequest(format!(
            "profile setting {field} '{}' is not {what}",
            excerpt(value)
        )))
    };
    for (key, value) in &placement.node_selector {
        if !is_label_key(key) {
            return bad(
                "kubernetes.node_selector key".into(),
                key,
                "a label key ([prefix/]name, name 1 to 63 of letters, digits, '-', '_', '.')",
            );
        }
        if !is_label_value(value) {
            return bad(
                format!("kubernetes.node_selector.{key}"),
                value,
                "a label value (at most 63 of letters, digits, '-', '_', '.')",
            );
        }
    }
    for (i, t) in placement.tolerations.iter().enumerate() {
        let field = |name: &str| format!("kubernetes.tolerations[{i}].{name}");
        if let Some(key) = &t.key
            && !is_label_key(key)
        {
            return bad(field("key"), key, "a label key");
        }
        let exists = match t.operator.as_deref() {
            None | Some("Equal") => false,
            Some("Exists") => true,
            Some(other) => return bad(field("operator"), other, "Exists or Equal"),
        };
        if let Some(value) = &t.value {
            if exists && !value.is_empty() {
                return bad(field("value"), value, "empty, as operator Exists wants");
            }
            if !is_label_value(value) {
                return bad(field("value"), value, "a label value");
            }
        }
        if t.key.is_none() && !exists {
            return bad(
                field("key"),
                "",
                "given (an empty key needs operator Exists)",
            );
        }
        if let Some(effect) = &t.effect
            && !matches!(
                effect.as_str(),
                "NoSchedule" | "PreferNoSchedule" | "NoExecute"
            )
        {
            return bad(
                field("effect"),
                effect,
                "NoSchedule, PreferNoSchedule or NoExecute",
            );
        }
        if let Some(seconds) = t.toleration_seconds
            && t.effect.as_deref() != Some("NoExecute")
        {
            return bad(
                field("toleration_seconds"),
                &seconds.to_string(),
                "allowed without effect NoExecute",
            );
        }
    }
    if let Some(path) = &placement.pod_template
        && !path.is_absolute()
    {
        return bad(
            "kubernetes.pod_template".into(),
            &path.display().to_string(),
            "an absolute path",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(is_dns_label("alice-3f1c"));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain("a..b"));
    }

    #[test]
    fn quantities() {
        for good in ["1", "500m", "1.5Gi", "2e3", "0.5", "+1", "1E-3"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "x", "1.2.3", "5 Gi", "1Q", "Gi", ".", "1e", "1\n"] {
            assert!(!is_quantity(bad), "{bad:?}");
        }
        assert!(quantity("KERNEL_CPUS", "-1").is_err());
    }

    #[test]
    fn names_normalize_as_eg() {
        assert_eq!(normalize_name("Alice_Smith--3F1C"), "alice-smith-3f1c");
        assert_eq!(normalize_name("__x__"), "x");
        assert_eq!(normalize_name("a: b\nc"), "a-b-c");
    }

    #[test]
    fn images() {
        assert!(image("KERNEL_IMAGE", "elyra/kernel-py:3.2.3").is_ok());
        assert!(image("KERNEL_IMAGE", "a b").is_err());
        assert!(image("KERNEL_IMAGE", "a\"\nkind: Secret").is_err());
    }

    #[test]
    fn kubernetes_pod_placement_of_profiles() {
        use crate::{PodPlacement, Toleration};
        let good = PodPlacement {
            node_selector: [
                ("disktype".to_owned(), "ssd".to_owned()),
                ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
            ]
            .into(),
            tolerations: vec![
                Toleration {
                    key: Some("gpu".into()),
                    operator: Some("Equal".into()),
                    value: Some("a100".into()),
                    effect: Some("NoExecute".into()),
                    toleration_seconds: Some(30),
                },
                Toleration {
                    operator: Some("Exists".into()),
                    ..Toleration::default()
                },
            ],
            pod_template: Some("/etc/eg/gpu-pod.yaml.j2".into()),
        };
        assert!(pod_placement(&good).is_ok());
        let refused = |p: PodPlacement| pod_placement(&p).expect_err("refused").to_string();
        let with_toleration = |t: Toleration| PodPlacement {
            tolerations: vec![t],
            ..PodPlacement::default()
        };
        let text = refused(PodPlacement {
            node_selector: [("bad key: {x}".to_owned(), "v".to_owned())].into(),
            ..PodPlacement::default()
        });
        assert!(text.contains("kubernetes.node_selector key"), "{text}");
        let text = refused(PodPlacement {
            node_selector: [("k".to_owned(), "a\nkind: Secret".to_owned())].into(),
            ..PodPlacement::default()
        });
        assert!(text.contains("kubernetes.node_selector.k"), "{text}");
        let text = refused(with_toleration(Toleration {
            key: Some("gpu".into()),
            effect: Some("Sometimes".into()),
            ..Toleration::default()
        }));
        assert!(text.contains("kubernetes.tolerations[0].effect"), "{text}");
        let text = refused(with_toleration(Toleration {
            key: Some("gpu".into()),
            operator: Some("In".into()),
            ..Toleration::default()
        }));
        assert!(text.contains("tolerations[0].operator"), "{text}");
        let text = refused(with_toleration(Toleration {
            key: Some("gpu".into()),
            operator: Some("Exists".into()),
            value: Some("x".into()),
            ..Toleration::default()
        }));
        assert!(text.contains("tolerations[0].value"), "{text}");
        let text = refused(with_toleration(Toleration::default()));
        assert!(text.contains("tolerations[0].key"), "{text}");
        let text = refused(with_toleration(Toleration {
            key: Some("gpu".into()),
            toleration_seconds: Some(5),
            ..Toleration::default()
        }));
        assert!(text.contains("toleration_seconds"), "{text}");
        let text = refused(PodPlacement {
            pod_template: Some("relative.yaml.j2".into()),
            ..PodPlacement::default()
        });
        assert!(text.contains("kubernetes.pod_template"), "{text}");
    }
}
