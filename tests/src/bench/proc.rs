//! Processes the benchmark starts (gateways, directly launched kernels), and what it reads about
//! them from `/proc`.
//!
//! Every child is a [`test_support::proc::Proc`]: it runs in its own process group and is stopped
//! when dropped (SIGTERM, a grace period, then SIGKILL for the group and for every descendant seen
//! while it ran: kernels launched by a gateway often live in sessions of their own).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use test_support::proc::Proc;
use test_support::procfs;

/// Starts `cmd` in a process group of its own, as [`Proc`]: with a `log`, its output goes there
/// and, when `ready_marker` is given, this returns once a line contains it (or fails when the
/// process exits first or `timeout` passes); without one its output is discarded. The benchmark
/// reports failures itself, so nothing is printed when the guard is dropped.
pub(crate) fn spawn(
    name: &str,
    cmd: Command,
    log: Option<&Path>,
    ready_marker: Option<&str>,
    timeout: Duration,
) -> Result<Proc> {
    let mut proc = match log {
        Some(log) => Proc::spawn(name, cmd, log, ready_marker, timeout)?,
        None => Proc::spawn_discarding(name, cmd)?,
    };
    proc.mark_passed();
    Ok(proc)
}

/// Every live process whose parent chain leads to `root` (not `root` itself).
pub(crate) use test_support::procfs::descendants;

/// Every live process (other than this one) with a command-line argument containing `needle`.
pub(crate) fn with_argument(needle: &str) -> Vec<i32> {
    procfs::other_processes()
        .into_iter()
        .filter(|p| p.has_argument_containing(needle))
        .map(|p| p.pid())
        .collect()
}

/// How long a kernel's processes may linger after its DELETE returned.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Waits until no process has `kernel_id` in its command line (the launcher's `--kernel-id`);
/// kills and reports those still there after [`EXIT_GRACE`].
pub(crate) async fn await_kernel_gone(kernel_id: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + EXIT_GRACE;
    loop {
        let left = with_argument(kernel_id);
        if left.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            kill_all(&left);
            bail!(
                "kernel {kernel_id} left {} process(es) behind {EXIT_GRACE:?} after its shutdown: {left:?}",
                left.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILL for each of `pids` (already gone is fine).
pub(crate) fn kill_all(pids: &[i32]) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// `/proc/<pid>/stat` (parent, CPU ticks, ...).
pub(crate) use test_support::procfs::stat as read_stat;

/// CPU ticks of several processes together (those that are gone count nothing).
pub(crate) fn cpu_ticks_of(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|&pid| read_stat(pid))
        .map(|s| s.cpu_ticks)
        .sum()
}

/// The whole machine's busy and total CPU ticks, over all cores (first line of `/proc/stat`;
/// idle and iowait count as not busy).
pub(crate) fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4)?;
    Some((total.saturating_sub(idle), total))
}

/// Resident set size of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Open file descriptors of a process (entries of `/proc/<pid>/fd`).
pub(crate) fn open_fds(pid: i32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub(crate) fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// `/proc/loadavg`'s three load averages.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The soft and hard `RLIMIT_NOFILE` of this process (from `/proc/self/limits`).
pub(crate) fn nofile_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    Some((nums.next()?, nums.next()?))
}

/// Raises this process's soft (and, when permitted, hard) file-descriptor limit to `want` with
/// `prlimit --pid`, so a thousand WebSocket clients fit. Returns the soft limit in force after.
pub(crate) fn raise_own_nofile(want: u64) -> u64 {
    let Some((soft, hard)) = nofile_limits() else {
        return 0;
    };
    if soft >= want {
        return soft;
    }
    let pid = std::process::id().to_string();
    for limit in [
        format!("{want}:{want}"),
        format!("{}:{hard}", want.min(hard)),
    ] {
        let ok = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={limit}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
    }
    nofile_limits().map_or(soft, |(s, _)| s)
}

/// `Command` for `program`, wrapped in `prlimit --nofile=N:N` when `prlimit` exists (it execs the
/// program, so the pid is the program's).
pub(crate) fn with_nofile(program: &Path, nofile: u64) -> Command {
    let prlimit_works = Command::new("prlimit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if prlimit_works && nofile > 0 {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
