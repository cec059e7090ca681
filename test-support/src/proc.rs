//! Guards for child processes a test or the benchmark starts: [`Proc`] runs one in its own
//! process group with its stdout and stderr teed into a log file (or discarded), waits for its
//! "ready" line, and stops the whole group, and every descendant it saw, when dropped;
//! [`run_bounded`] runs a command to completion under a deadline.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long a stopped process gets between SIGTERM and SIGKILL when a guard is dropped.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// A running child process in its own process group, its stdout and stderr teed into one log
/// file (or discarded). Dropping it sends SIGTERM, waits up to [`DROP_GRACE`], then SIGKILLs the
/// whole group and every descendant seen (a kernel a gateway launched often runs in a session of
/// its own, out of the group), and prints the tail of the log unless [`Proc::mark_passed`] was
/// called (so a test that fails, by panic or by returning an error, shows what the process said).
#[derive(Debug)]
pub struct Proc {
    name: String,
    pid: i32,
    exited: Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    log: Option<PathBuf>,
    ready: Receiver<()>,
    show_log_on_drop: bool,
    /// Descendants seen so far (by [`Proc::refresh_descendants`], and when stopping).
    descendants: HashSet<i32>,
}

impl Proc {
    /// Starts `cmd` (stdin closed) in a new process group, logging to `log`.
    ///
    /// If `ready_marker` is given, returns once a line of output contains it; fails if the
    /// process exits first or `timeout` passes.
    pub fn spawn(
        name: &str,
        cmd: Command,
        log: &Path,
        ready_marker: Option<&str>,
        timeout: Duration,
    ) -> Result<Proc> {
        Proc::start(name, cmd, Some(log), ready_marker, timeout)
    }

    /// Starts `cmd` (stdin closed) in a new process group, its output discarded; nothing is
    /// printed when it is dropped.
    pub fn spawn_discarding(name: &str, cmd: Command) -> Result<Proc> {
        let mut proc = Proc::start(name, cmd, None, None, Duration::ZERO)?;
        proc.mark_passed();
        Ok(proc)
    }

    fn start(
        name: &str,
        mut cmd: Command,
        log: Option<&Path>,
        ready_marker: Option<&str>,
        timeout: Duration,
    ) -> Result<Proc> {
        cmd.stdin(Stdio::null()).process_group(0);
        let pipe = match log {
            Some(log) => {
                let (reader, writer) = std::io::pipe().context("creating an output pipe")?;
                let writer_err = writer.try_clone().context("cloning the output pipe")?;
                cmd.stdout(writer).stderr(writer_err);
                let file =
                    File::create(log).with_context(|| format!("creating {}", log.display()))?;
                Some((reader, file))
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                None
            }
        };
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        // Drop the parent's copies of the pipe's write end (held by `cmd`), so EOF is seen.
        drop(cmd);
        let pid = i32::try_from(child.id()).context("child pid out of range")?;

        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });

        let (ready_tx, ready) = mpsc::channel();
        if let Some((reader, log_file)) = pipe {
            tee(reader, log_file, ready_marker.map(str::to_owned), ready_tx);
        }

        let mut proc = Proc {
            name: name.to_owned(),
            pid,
            exited,
            status: None,
            log: log.map(Path::to_path_buf),
            ready,
            show_log_on_drop: true,
            descendants: HashSet::new(),
        };
        if ready_marker.is_some()
            && let Err(err) = proc.wait_ready(timeout)
        {
            // The error already carries the log tail.
            proc.show_log_on_drop = false;
            return Err(err);
        }
        Ok(proc)
    }

    /// Remembers the process's current descendants, so that stopping it kills them even when
    /// they outlived it or left its process group.
    pub fn refresh_descendants(&mut self) {
        self.descendants
            .extend(crate::procfs::descendants(self.pid));
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.wait_exit(Duration::ZERO).is_some()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ready.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => return Ok(()),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5));
                    bail!(
                        "{} exited ({status:?}) before it was ready; log tail:\n{}",
                        self.name,
                        self.log_tail(40)
                    );
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Ok(status) = self.exited.try_recv() {
                self.status = Some(status);
                // The exit may race the last lines of output: give the reader a moment.
                if self.ready.recv_timeout(Duration::from_millis(500)).is_ok() {
                    return Ok(());
                }
                bail!(
                    "{} exited ({status}) before it was ready; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} printed no ready line within {timeout:?}; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(status) = self.exited.recv_timeout(timeout)
        {
            self.status = Some(status);
        }
        self.status
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends a signal to the process itself.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid), signal)
            .with_context(|| format!("sending {signal} to {} ({})", self.name, self.pid))
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; afterwards SIGKILL whatever is left of the
    /// process group and every descendant seen. Returns the exit status if the process exited.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.refresh_descendants();
        if self.status.is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
            if self.wait_exit(grace).is_none() {
                let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
                self.wait_exit(Duration::from_secs(5));
            }
        }
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        for &pid in &self.descendants {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        self.status
    }

    /// The test using this process passed: do not print its log when dropped.
    pub fn mark_passed(&mut self) {
        self.show_log_on_drop = false;
    }

    /// Everything the process printed so far (empty when its output is discarded).
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Some(log) = &self.log
            && let Ok(mut f) = File::open(log)
        {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// The last `lines` lines of output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        all.get(start..).unwrap_or_default().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(DROP_GRACE);
        if self.show_log_on_drop
            && let Some(log) = &self.log
        {
            eprintln!(
                "----- last lines of {} output ({}) -----\n{}\n-----",
                self.name,
                log.display(),
                self.log_tail(60)
            );
        }
    }
}

/// Copies `reader`'s lines into `log` on a thread of its own, signalling `ready` at the first line
/// containing `marker`.
fn tee(
    reader: std::io::PipeReader,
    mut log: File,
    marker: Option<String>,
    ready: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut lines = BufReader::new(reader);
        let mut line = Vec::new();
        let mut signalled = false;
        loop {
            line.clear();
            match lines.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = log.write_all(&line);
                    let _ = log.flush();
                    if !signalled
                        && let Some(m) = &marker
                        && String::from_utf8_lossy(&line).contains(m.as_str())
                    {
                        signalled = true;
                        let _ = ready.send(());
                    }
                }
            }
        }
    });
}

/// Runs a command to completion (own process group, output captured), killing it after
/// `timeout`. Returns its exit status and combined output.
pub fn run_bounded(
    name: &str,
    cmd: Command,
    log: &Path,
    timeout: Duration,
) -> Result<(ExitStatus, String)> {
    let mut proc = Proc::spawn(name, cmd, log, None, timeout)?;
    match proc.wait_exit(timeout) {
        Some(status) => {
            proc.mark_passed();
            // Let the reader thread drain the last output.
            let _ = proc.ready.recv_timeout(Duration::from_secs(2));
            Ok((status, proc.log_text()))
        }
        None => {
            proc.stop(Duration::from_secs(2));
            bail!(
                "{name} did not finish within {timeout:?}; output:\n{}",
                proc.log_text()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_kills_descendants_that_left_the_group() {
        // The child starts a grandchild in a session (and so a process group) of its own.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "setsid sleep 1000 & echo started; wait"]);
        let dir = std::env::temp_dir().join(format!("proc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("sh.log");
        let mut proc =
            Proc::spawn("sh", cmd, &log, Some("started"), Duration::from_secs(10)).expect("spawn");
        proc.mark_passed();
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild = loop {
            let found = crate::procfs::descendants(proc.pid())
                .into_iter()
                .find(|&pid| crate::procfs::stat(pid).is_some_and(|s| s.pgrp != proc.pid()));
            if let Some(pid) = found {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "no grandchild in a group of its own"
            );
            std::thread::yield_now();
        };
        drop(proc);
        let gone = |pid: i32| crate::procfs::stat(pid).is_none_or(|s| s.is_gone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(grandchild) {
            assert!(
                Instant::now() < deadline,
                "the grandchild outlived the guard"
            );
            std::thread::yield_now();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
