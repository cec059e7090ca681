//! What the workspace's tests share, so each crate's tests stop carrying their own copy:
//! waiting for a condition ([`eventually`]), asking whether processes are still there
//! ([`group_exists`], [`pid_exists`], [`pid_running`]) and talking raw HTTP/1.1 to a server
//! under test ([`http`]). A dev-dependency of the crates whose tests use it, never a dependency
//! of a product crate.

pub mod http;

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
}
