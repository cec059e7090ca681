//! Pure decisions of the start path: user authorization, kernel limits, kernel ids, launch
//! timeouts and working directories. Nothing here does I/O except looking at directories.
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use kernel_launcher::KernelSpec;

use super::error::ManagerError;
use crate::GatewayConfig;

/// Splits each entry of a user list on commas and trims it (EG's lists are comma strings).
fn user_set(lists: &[&[String]]) -> Vec<String> {
    lists
        .iter()
        .flat_map(|list| list.iter())
        .flat_map(|entry| entry.split(','))
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The prefix of a user-list entry that names a group.
pub(crate) const GROUP_PREFIX: &str = "group:";

/// Whether a user-list entry names `user` or one of `groups` (`group:<name>`).
fn names(entry: &str, user: &str, groups: &[String]) -> bool {
    match entry.strip_prefix(GROUP_PREFIX) {
        Some(group) => groups.iter().any(|g| g == group),
        None => entry == user,
    }
}

/// EG §5.4.1: the per-spec authorized list replaces the global one; unauthorized lists add up.
/// Entries are user names or `group:<name>`.
pub(crate) fn authorize(
    config: &GatewayConfig,
    spec: &KernelSpec,
    user: &str,
    groups: &[String],
) -> Result<(), ManagerError> {
    let unauthorized = user_set(&[&config.unauthorized_users, &spec.config.unauthorized_users]);
    if unauthorized.iter().any(|u| names(u, user, groups)) {
        return Err(ManagerError::Forbidden {
            reason: format!(
                "User '{user}' is not authorized to start kernel '{}'. Ensure KERNEL_USERNAME is set to an appropriate value and retry the request.",
                spec.display_name
            ),
            message: String::new(),
        });
    }
    let spec_authorized = user_set(&[&spec.config.authorized_users]);
    let authorized = if spec_authorized.is_empty() {
        user_set(&[&config.authorized_users])
    } else {
        spec_authorized
    };
    if !authorized.is_empty() && !authorized.iter().any(|u| names(u, user, groups)) {
        return Err(ManagerError::Forbidden {
            reason: format!(
                "User '{user}' is not in the set of users authorized to start kernel '{}'. Ensure KERNEL_USERNAME is set to an appropriate value and retry the request.",
                spec.display_name
            ),
            message: String::new(),
        });
    }
    Ok(())
}

fn kernels_word(n: usize) -> &'static str {
    if n == 1 { "kernel" } else { "kernels" }
}

/// The total-limit refusal, with EG's text.
pub(crate) fn total_limit_error(limit: usize, current: usize) -> ManagerError {
    ManagerError::Forbidden {
        reason: format!(
            "A max kernels limit has been set to {limit} and there are currently {current} active and pending {}.",
            kernels_word(current)
        ),
        message: String::new(),
    }
}

/// The per-user-limit refusal, with EG's text.
pub(crate) fn user_limit_error(limit: usize, user: &str, current: usize) -> ManagerError {
    ManagerError::Forbidden {
        reason: format!(
            "A max kernels per user limit has been set to {limit} and user '{user}' currently has {current} active and pending {}.",
            kernels_word(current)
        ),
        message: String::new(),
    }
}

/// Checks both limits given the current counts (running plus starts in flight).
pub(crate) fn check_limits(
    config: &GatewayConfig,
    total: usize,
    user: &str,
    of_user: usize,
) -> Result<(), ManagerError> {
    if let Some(limit) = config.max_kernels
        && total >= limit
    {
        return Err(total_limit_error(limit, total));
    }
    if let Some(limit) = config.max_kernels_per_user
        && of_user >= limit
    {
        return Err(user_limit_error(limit, user, of_user));
    }
    Ok(())
}

/// A client-chosen kernel id must be a canonical lowercase hyphenated v4 UUID.
pub(crate) fn validate_kernel_id(id: &str) -> Result<(), ManagerError> {
    let bad = || ManagerError::BadRequest {
        message: "KERNEL_ID must be a lowercase hyphenated version 4 UUID".to_owned(),
    };
    let parsed = uuid::Uuid::parse_str(id).map_err(|_| bad())?;
    let canonical = parsed.hyphenated().to_string();
    if parsed.get_version_num() != 4
        || parsed.get_variant() != uuid::Variant::RFC4122
        || canonical != id
    {
        return Err(bad());
    }
    Ok(())
}

/// The launch timeout: the request's `KERNEL_LAUNCH_TIMEOUT` (float seconds) bounded by the
/// configured maximum, else the configured default.
pub(crate) fn launch_timeout(
    config: &GatewayConfig,
    env: &BTreeMap<String, String>,
) -> Result<Duration, ManagerError> {
    let Some(raw) = env.get("KERNEL_LAUNCH_TIMEOUT") else {
        return Ok(config.launch_timeout);
    };
    let secs: f64 = raw.trim().parse().map_err(|_| ManagerError::BadRequest {
        message: "KERNEL_LAUNCH_TIMEOUT must be a number of seconds".to_owned(),
    })?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(ManagerError::BadRequest {
            message: "KERNEL_LAUNCH_TIMEOUT must be a positive number of seconds".to_owned(),
        });
    }
    let max = config.max_launch_timeout.as_secs_f64();
    Ok(Duration::from_secs_f64(secs.min(max)))
}

/// Resolves a start request's `path` under `root`: `..` cannot climb above the root, absolute
/// paths are taken relative to it, and missing directories are walked up (EG's `cwd_for_path`).
/// A symlink that leads outside the root yields the root itself.
pub(crate) fn working_dir(root: &Path, path: Option<&str>) -> PathBuf {
    let mut relative = PathBuf::new();
    for component in Path::new(path.unwrap_or("")).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::ParentDir => {
                relative.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    let mut candidate = root.join(&relative);
    while !candidate.is_dir() && candidate != root {
        if !candidate.pop() {
            return root.to_path_buf();
        }
    }
    match (candidate.canonicalize(), root.canonicalize()) {
        (Ok(real), Ok(real_root)) if real.starts_with(&real_root) => candidate,
        _ => root.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_ids() {
        let cases = [
            ("6f1b3c1e-2a4d-4f6b-9c1d-2e3f4a5b6c7d", true),
            ("6F1B3C1E-2A4D-4F6B-9C1D-2E3F4A5B6C7D", false),
            ("6f1b3c1e2a4d4f6b9c1d2e3f4a5b6c7d", false),
            ("6f1b3c1e-2a4d-1f6b-9c1d-2e3f4a5b6c7d", false),
            ("6f1b3c1e-2a4d-4f6b-1c1d-2e3f4a5b6c7d", false),
            ("../../etc/passwd", false),
            ("", false),
        ];
        for (id, ok) in cases {
            assert_eq!(validate_kernel_id(id).is_ok(), ok, "{id}");
        }
    }

    #[test]
    fn user_lists_accept_groups() {
        let mut config = GatewayConfig {
            authorized_users: vec!["alice,group:analysts".to_owned()],
            unauthorized_users: vec!["root,group:interns".to_owned()],
            ..GatewayConfig::default()
        };
        let spec = KernelSpec {
            name: "python3".to_owned(),
            resource_dir: PathBuf::from("/nonexistent"),
            argv: vec!["python".to_owned()],
            display_name: "Python 3".to_owned(),
            language: "python".to_owned(),
            env: BTreeMap::new(),
            interrupt_mode: kernel_launcher::InterruptMode::Signal,
            metadata: serde_json::Value::Null,
            backend: kernel_launcher::BackendRef::Default,
            config: kernel_launcher::kernelspec::SpecConfig::default(),
        };
        let groups = |names: &[&str]| names.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>();
        let cases: [(&str, &[&str], bool); 6] = [
            ("alice", &[], true),
            ("bob", &["analysts"], true),
            ("bob", &[], false),
            ("bob", &["analysts", "interns"], false),
            ("root", &["analysts"], false),
            ("group:analysts", &[], false),
        ];
        for (user, member_of, ok) in cases {
            assert_eq!(
                authorize(&config, &spec, user, &groups(member_of)).is_ok(),
                ok,
                "{user} in {member_of:?}"
            );
        }
        config.authorized_users.clear();
        assert!(authorize(&config, &spec, "anyone", &[]).is_ok());
    }

    #[test]
    fn limit_texts() {
        let text = |e: ManagerError| e.to_string();
        assert_eq!(
            text(total_limit_error(2, 1)),
            "A max kernels limit has been set to 2 and there are currently 1 active and pending kernel."
        );
        assert_eq!(
            text(user_limit_error(1, "bob", 2)),
            "A max kernels per user limit has been set to 1 and user 'bob' currently has 2 active and pending kernels."
        );
    }

    #[test]
    fn working_dirs_stay_under_root() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let root = root.path();
        std::fs::create_dir_all(root.join("a/b"))?;
        let cases = [
            (None, root.to_path_buf()),
            (Some("a/b"), root.join("a/b")),
            (Some("a/b/missing/deeper/nb.ipynb"), root.join("a/b")),
            (Some("../../.."), root.to_path_buf()),
            (Some("/etc"), root.to_path_buf()),
            (Some("a/../../a"), root.join("a")),
        ];
        for (path, want) in cases {
            assert_eq!(working_dir(root, path), want, "{path:?}");
        }
        Ok(())
    }
}
