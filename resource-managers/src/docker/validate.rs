//! Checks of the values that reach the Docker engine: image references, container and service
//! names, user and group ids. A value a client sent that fails gives an error naming the field
//! (the gateway answers 400, or 403 for ids EG refuses with 403), never a request the engine
//! would reject.

/// The longest image reference accepted (the engine's limit on repository names is 255).
const MAX_IMAGE_LEN: usize = 255;

/// The longest tag (the distribution spec's limit).
const MAX_TAG_LEN: usize = 128;

/// The longest swarm service name (a DNS label).
pub const MAX_SERVICE_NAME_LEN: usize = 63;

/// The longest container name accepted.
pub const MAX_CONTAINER_NAME_LEN: usize = 253;

/// Why an image reference is refused, or `Ok` for `[host[:port]/]path[:tag][@digest]` as the
/// distribution reference grammar has it: lowercase path components of letters and digits
/// joined by `.`, `_`, `__` or runs of `-`; a tag of word characters, `.` and `-` (not first);
/// a digest `algorithm:hex`.
pub fn check_image(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("is empty".into());
    }
    if reference.len() > MAX_IMAGE_LEN {
        return Err(format!("is longer than {MAX_IMAGE_LEN} characters"));
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    // A tag is after the last ':' that follows the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest.get(last_slash..).and_then(|tail| tail.rfind(':')) {
        Some(colon) => {
            let at = last_slash + colon;
            (
                rest.get(..at).unwrap_or_default(),
                rest.get(at + 1..).map(Some).unwrap_or_default(),
            )
        }
        None => (rest, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1
        && let Some(first) = components.first()
        && (first.contains('.') || first.contains(':') || *first == "localhost")
    {
        check_host(first)?;
        components.remove(0);
    }
    if components.is_empty() {
        return Err("has no repository name".into());
    }
    for component in components {
        check_component(component)?;
    }
    Ok(())
}

fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("has a digest without an algorithm (expected e.g. sha256:<hex>)".into());
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'.' | b'_' | b'-')
        });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("has a malformed digest".into());
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok
        || tag.len() > MAX_TAG_LEN
        || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "has a malformed tag (letters, digits, '_', '.', '-', not starting with '.' or '-', at most {MAX_TAG_LEN})"
        ));
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("has a malformed registry port".into());
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err("has a malformed registry host".into());
    }
    Ok(())
}

fn check_component(component: &str) -> Result<(), String> {
    let bad = || {
        Err(
            "has a malformed repository name (lowercase letters and digits, separated by '.', '_', '__' or '-')"
                .to_owned(),
        )
    };
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return bad();
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes.get(i).copied().unwrap_or_default();
        if alnum(&b) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or a run of '-', followed by a letter or digit.
        let start = i;
        match b {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return bad(),
        }
        if i == start || !bytes.get(i).is_some_and(alnum) {
            return bad();
        }
    }
    Ok(())
}

/// A container name as the engine accepts it: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, or, for a swarm
/// service, a DNS-label-like `[a-zA-Z0-9]([a-zA-Z0-9_-]*[a-zA-Z0-9])?` of at most 63.
pub fn check_name(name: &str, service: bool) -> Result<(), String> {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if service {
        let ok = first_ok
            && name.len() <= MAX_SERVICE_NAME_LEN
            && name
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if !ok {
            return Err(format!(
                "does not make a swarm service name (letters, digits, '-' and '_', starting and ending with a letter or digit, at most {MAX_SERVICE_NAME_LEN} with the kernel id)"
            ));
        }
    } else {
        let ok = first_ok
            && name.len() <= MAX_CONTAINER_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(format!(
                "does not make a container name (letters, digits, '-', '_' and '.', starting with a letter or digit, at most {MAX_CONTAINER_NAME_LEN} with the kernel id)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for good in [
            "kernel-py",
            "elyra/kernel-py:3.2.3",
            "localhost:5000/team/kernel_py:latest",
            "registry.example.com/a/b/c",
            "a__b.c-d---e:v1.0-rc_1",
            "busybox@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
            "kernel:tag@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        ] {
            assert_eq!(check_image(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Kernel-Py",
            "kernel py",
            "kernel:",
            "kernel:-x",
            "/kernel",
            "kernel/",
            "a..b",
            "a___b",
            "-a",
            "kernel@sha256:xyz",
            "kernel\n:latest",
            "$(touch /tmp/x)",
            "bad host:5000/x",
        ] {
            assert!(check_image(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_image(&"a".repeat(300)).is_err());
    }

    #[test]
    fn names() {
        assert_eq!(check_name("alice-3f1c", false), Ok(()));
        assert_eq!(check_name("a.b_c-d", false), Ok(()));
        assert!(check_name("-x", false).is_err());
        assert!(check_name("a/b", false).is_err());
        assert!(check_name("", false).is_err());
        assert_eq!(check_name("alice-3f1c", true), Ok(()));
        assert!(check_name("a.b-3f1c", true).is_err());
        assert!(check_name(&format!("{}-x", "a".repeat(63)), true).is_err());
    }
}
