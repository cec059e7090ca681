//! Processes the benchmark starts (gateways, directly launched kernels), and what it reads about
//! them from `/proc`.
//!
//! Every child runs in its own process group and is stopped when its guard is dropped: SIGTERM,
//! a grace period, then SIGKILL for the group and for every descendant seen while it ran (kernels
//! launched by a gateway often live in sessions of their own, out of the gateway's group).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use test_support::procfs;

/// How long a stopped child gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A child process in its own process group, killed (with its descendants) on drop.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    name: String,
    pid: i32,
    exited: Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    ready: Receiver<()>,
    log: Option<PathBuf>,
    /// Descendants seen so far (refreshed by [`ChildGuard::refresh_descendants`] and on stop).
    descendants: HashSet<i32>,
}

impl ChildGuard {
    /// Starts `cmd` (stdin closed) in a new process group. With a `log`, stdout and stderr go
    /// there, and when `ready_marker` is given this returns once a line contains it (or fails when
    /// the process exits first or `timeout` passes). Without a log the output is discarded.
    pub(crate) fn spawn(
        name: &str,
        mut cmd: Command,
        log: Option<&Path>,
        ready_marker: Option<&str>,
        timeout: Duration,
    ) -> Result<ChildGuard> {
        cmd.stdin(Stdio::null()).process_group(0);
        let (ready_tx, ready) = mpsc::channel();
        let mut reader_pipe = None;
        match log {
            Some(_) => {
                let (reader, writer) = std::io::pipe().context("creating an output pipe")?;
                let writer_err = writer.try_clone().context("cloning the output pipe")?;
                cmd.stdout(writer).stderr(writer_err);
                reader_pipe = Some(reader);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        // The parent's copies of the pipe's write end live in `cmd`: drop them so EOF is seen.
        drop(cmd);
        let pid = i32::try_from(child.id()).context("child pid out of range")?;
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        if let (Some(reader), Some(log)) = (reader_pipe, log) {
            let mut file =
                File::create(log).with_context(|| format!("creating {}", log.display()))?;
            let marker = ready_marker.map(str::to_owned);
            std::thread::spawn(move || {
                let mut lines = BufReader::new(reader);
                let mut line = Vec::new();
                let mut signalled = false;
                loop {
                    line.clear();
                    match lines.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = file.write_all(&line);
                            if !signalled
                                && let Some(m) = &marker
                                && String::from_utf8_lossy(&line).contains(m.as_str())
                            {
                                signalled = true;
                                let _ = file.flush();
                                let _ = ready_tx.send(());
                            }
                        }
                    }
                }
                let _ = file.flush();
            });
        }
        let mut guard = ChildGuard {
            name: name.to_owned(),
            pid,
            exited,
            status: None,
            ready,
            log: log.map(Path::to_path_buf),
            descendants: HashSet::new(),
        };
        if ready_marker.is_some() {
            guard.wait_ready(timeout)?;
        }
        Ok(guard)
    }

    /// The process id (also the process group id).
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ready.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return Ok(()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "{} stopped before it was ready; output:\n{}",
                        self.name,
                        self.log_tail(30)
                    )
                }
            }
            if let Ok(status) = self.exited.try_recv() {
                self.status = Some(status);
                if self.ready.recv_timeout(Duration::from_millis(300)).is_ok() {
                    return Ok(());
                }
                bail!(
                    "{} exited ({status}) before it was ready; output:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} printed no ready line within {timeout:?}; output:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
        }
    }

    /// Whether the process has exited.
    pub(crate) fn has_exited(&mut self) -> bool {
        if self.status.is_none()
            && let Ok(status) = self.exited.try_recv()
        {
            self.status = Some(status);
        }
        self.status.is_some()
    }

    /// The last `lines` lines of the log (empty without a log).
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }

    /// Remembers the current descendants, so they can be killed even after the child is gone.
    pub(crate) fn refresh_descendants(&mut self) {
        self.descendants.extend(descendants(self.pid));
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL the group and every descendant ever seen.
    pub(crate) fn stop(&mut self, grace: Duration) {
        self.refresh_descendants();
        if !self.has_exited() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
            if let Ok(status) = self.exited.recv_timeout(grace) {
                self.status = Some(status);
            }
        }
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        for &pid in &self.descendants {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if self.status.is_none()
            && let Ok(status) = self.exited.recv_timeout(Duration::from_secs(5))
        {
            self.status = Some(status);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// Every live process whose parent chain leads to `root` (not `root` itself).
pub(crate) fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in procfs::processes() {
        if let Some(stat) = p.stat() {
            children.entry(stat.ppid).or_default().push(p.pid());
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

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
