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

/// A printable excerpt of a client value for error messages (control characters escaped,
/// long values cut).
pub fn excerpt(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(80)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > 80 {
        out.push('…');
    }
    out
}

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

/// A POSIX path for `workingDir`: absolute, printable, at most 4096 bytes.
pub fn working_dir(field: &str, value: &str) -> Result<(), Error> {
    let ok = value.starts_with('/') && value.len() <= 4096 && !value.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "{field} '{}' must be an absolute path without control characters",
            excerpt(value)
        )))
    }
}

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

/// EG's id check (`KERNEL_UID`, `KERNEL_GID`): an integer in 0..=4294967295 and not prohibited;
/// refusals are 403s with EG's texts.
pub fn user_id(field: &str, value: &str, prohibited: &[u32]) -> Result<u32, Error> {
    let parsed: i128 = value.trim().parse().map_err(|_| {
        Error::Unauthorized(format!(
            "Invalid {field} value '{}': not a valid integer!",
            excerpt(value)
        ))
    })?;
    let id = u32::try_from(parsed).map_err(|_| {
        Error::Unauthorized(format!(
            "Invalid {field} value '{}': must be in range 0-4294967295!",
            excerpt(value)
        ))
    })?;
    if prohibited.contains(&id) {
        let list = if field == "KERNEL_GID" {
            "EG_PROHIBITED_GIDS"
        } else {
            "EG_PROHIBITED_UIDS"
        };
        let what = if field == "KERNEL_GID" { "GID" } else { "UID" };
        return Err(Error::Unauthorized(format!(
            "Kernel's {what} value of '{id}' has been denied via {list}!"
        )));
    }
    Ok(id)
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
    fn ids() {
        assert_eq!(user_id("KERNEL_UID", "1000", &[0]).ok(), Some(1000));
        let denied = user_id("KERNEL_UID", "0", &[0]).map_err(|e| e.to_string());
        assert_eq!(
            denied.err().as_deref(),
            Some("Kernel's UID value of '0' has been denied via EG_PROHIBITED_UIDS!")
        );
        assert!(user_id("KERNEL_GID", "x", &[]).is_err());
        assert!(user_id("KERNEL_GID", "4294967296", &[]).is_err());
    }

    #[test]
    fn images() {
        assert!(image("KERNEL_IMAGE", "elyra/kernel-py:3.2.3").is_ok());
        assert!(image("KERNEL_IMAGE", "a b").is_err());
        assert!(image("KERNEL_IMAGE", "a\"\nkind: Secret").is_err());
    }
}
