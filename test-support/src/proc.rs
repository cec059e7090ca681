//! Guards for child processes a test starts: [`Proc`] runs one in its own process group with its
//! stdout and stderr teed into a log file, waits for its "ready" line, and stops the whole group
//! when dropped; [`run_bounded`] runs a command to completion under a deadline.

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
/// file. Dropping it sends SIGTERM, waits up to [`DROP_GRACE`], then SIGKILLs the whole group,
/// and prints the tail of the log unless [`Proc::mark_passed`] was called (so a test that fails,
/// by panic or by returning an error, shows what the process said).
#[derive(Debug)]
pub struct Proc {
    name: String,
    pid: i32,
    exited: Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    log: PathBuf,
    ready: Receiver<()>,
    show_log_on_drop: bool,
}

impl Proc {
    /// Starts `cmd` (stdin closed) in a new process group, logging to `log`.
    ///
    /// If `ready_marker` is given, returns once a line of output contains it; fails if the
    /// process exits first or `timeout` passes.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        ready_marker: Option<&str>,
        timeout: Duration,
    ) -> Result<Proc> {
        let (reader, writer) = std::io::pipe().context("creating an output pipe")?;
        let writer_err = writer.try_clone().context("cloning the output pipe")?;
        cmd.stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer_err)
            .process_group(0);
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

        let mut log_file =
            File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let marker = ready_marker.map(str::to_owned);
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(reader);
            let mut line = Vec::new();
            let mut signalled = false;
            loop {
                line.clear();
                match lines.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = log_file.write_all(&line);
                        let _ = log_file.flush();
                        if !signalled
                            && let Some(m) = &marker
                            && String::from_utf8_lossy(&line).contains(m.as_str())
                        {
                            signalled = true;
                            let _ = ready_tx.send(());
                        }
                    }
                }
            }
        });

        let mut proc = Proc {
            name: name.to_owned(),
            pid,
            exited,
            status: None,
            log: log.to_path_buf(),
            ready,
            show_log_on_drop: true,
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
    /// process group. Returns the exit status if the process exited.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
            if self.wait_exit(grace).is_none() {
                let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
                self.wait_exit(Duration::from_secs(5));
            }
        }
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        self.status
    }

    /// The test using this process passed: do not print its log when dropped.
    pub fn mark_passed(&mut self) {
        self.show_log_on_drop = false;
    }

    /// Everything the process printed so far.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
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
        if self.show_log_on_drop {
            eprintln!(
                "----- last lines of {} output ({}) -----\n{}\n-----",
                self.name,
                self.log.display(),
                self.log_tail(60)
            );
        }
    }
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
