//! What the workspace's tests share, so each crate's tests stop carrying their own copy:
//! waiting for a condition ([`eventually`]), asking whether processes are still there
//! ([`group_exists`], [`pid_exists`], [`pid_running`]), where things are ([`workspace_root`],
//! [`venv`], [`system_path`]), whether a file is private ([`permission_bits`]), the live
//! processes ([`procfs`]), talking raw HTTP/1.1 to a server under test ([`http`]) and a Spark
//! standalone master and worker on loopback ([`spark`]). A dependency of test code only (the
//! crates' dev-dependencies, and the `tests` crate, whose emulators and benchmark use it), never
//! of a product crate.

pub mod http;
pub mod proc;
pub mod procfs;
pub mod spark;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// How often [`eventually`] looks.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` until it holds or `within` has passed; whether it held. Time is tokio's, so a
/// test with paused time advances through the wait.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The workspace's root directory (where `Cargo.lock` and the venvs are).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The test virtualenv, `.venv` (ipykernel, Jupyter Server; `cargo xtask setup` makes it).
pub fn venv() -> PathBuf {
    workspace_root().join(".venv")
}

/// The system's program directories, `/usr/bin` and `/bin`: the PATH a test backend resolves a
/// relative `argv[0]` with when the test wants nothing of the caller's PATH.
pub fn system_path() -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")]
}

/// A file's permission bits (`mode & 0o777`), to check that a secret is private (`0o600`).
pub fn permission_bits(path: &Path) -> std::io::Result<u32> {
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path)?.permissions());
    Ok(mode & 0o777)
}

/// Whether any process (zombies included) is in process group `pgid`. Groups 0 and 1 are never
/// a kernel's, so they count as absent rather than asking about the caller's or init's group.
pub fn group_exists(pgid: i32) -> bool {
    pgid > 1 && kill(Pid::from_raw(-pgid), None) != Err(Errno::ESRCH)
}

/// Whether `pid` exists at all (a zombie counts).
pub fn pid_exists(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None) != Err(Errno::ESRCH)
}

/// Whether `pid` is running: it exists and is neither a zombie nor dead (from `/proc`).
pub fn pid_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_waits_and_gives_up() {
        let mut calls = 0;
        assert!(
            eventually(Duration::from_secs(5), || {
                calls += 1;
                calls == 3
            })
            .await
        );
        assert!(!eventually(Duration::from_millis(50), || false).await);
    }

    #[test]
    fn this_process_exists_and_runs() {
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        assert!(pid_exists(me));
        assert!(pid_running(me));
        assert!(!pid_exists(0));
        assert!(!group_exists(1));
    }

    #[test]
    fn the_workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.lock").exists());
        assert!(venv().ends_with(".venv"));
        assert!(system_path().iter().all(|d| d.is_absolute()));
        let lock = workspace_root().join("Cargo.lock");
        assert!(permission_bits(&lock).is_ok_and(|bits| bits & 0o400 != 0));
    }
}
