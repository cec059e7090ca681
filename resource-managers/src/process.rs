//! The process toolbox every backend that starts local programs uses (the kernel itself for
//! `local`; a launcher, a submit command or a plugin for the others): spawning with a log,
//! reaping, log tails, program resolution, kernel-id checks, process liveness.
//!
//! Everything here is public, so a backend outside this crate starts and watches its processes
//! the way the built-in ones do:
//!
//! * [`spawn_logged`] starts an argument vector (never a shell line) with exactly the request's
//!   environment, in its own process group, its output appended to a private log file, as the
//!   request's `run_as` account when set;
//! * [`spawn_reaper`] waits for the child, kills what is left of its group and publishes the
//!   exit on a [`watch`] channel;
//! * [`resolve_program`] finds `argv[0]` (a kernelspec's own virtualenv Python first);
//! * [`read_tail`] gives the last lines of a log for error messages;
//! * a log is kept under [`LOG_LIMIT`] while its process group lives: past it, the log is cut to
//!   its last [`LOG_KEEP`] bytes behind a line saying how much was dropped (a kernel stuck
//!   printing a stack trace in a loop must not fill the gateway's disk; one such Toree kernel
//!   wrote 8 GB in minutes here);
//! * [`is_safe_id`] keeps a kernel id to one safe path component, [`is_alive`] and
//!   [`start_time`] tell whether a recorded process is still the same one.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;

use kernel_launcher::KernelSpec;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};
use tokio::sync::watch;

use crate::{Error, LaunchRequest, ProcessState};

/// How much of a log [`read_tail`] reads at most.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// A process's log is cut back once it is larger than this.
pub const LOG_LIMIT: u64 = 64 << 20;
/// What is kept of a log that was cut: its last bytes (from a line start).
pub const LOG_KEEP: u64 = 1 << 20;
/// How often a log's size is looked at.
const LOG_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts `argv` (with `program` as the resolved `argv[0]`) the way every backend starts a local
/// process: exactly the request's environment plus `JPY_PARENT_PID` (when `parent_pid`: a kernel
/// that must outlive the gateway gets none), in its own process group,
/// stdin closed, stdout and stderr appended to `log_path` (mode 0600), in the request's working
/// directory, as the request's `run_as` account when set. `what` names the process in errors
/// ("kernel", "launcher", "submit command").
pub fn spawn_logged(
    request: &LaunchRequest,
    program: &Path,
    argv: &[String],
    log_path: &Path,
    what: &str,
    parent_pid: bool,
) -> Result<tokio::process::Child, Error> {
    let name = &request.spec.name;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_path)
        .map_err(|e| {
            Error::Spawn(format!(
                "kernel '{name}': cannot open log {}: {e}",
                log_path.display()
            ))
        })?;
    let log_err = log.try_clone()?;

    let mut command = tokio::process::Command::new(program);
    command
        .args(argv.iter().skip(1))
        .env_clear()
        .envs(&request.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(false);
    if parent_pid {
        command.env("JPY_PARENT_PID", std::process::id().to_string());
    }
    if let Some(cwd) = &request.cwd {
        command.current_dir(cwd);
    }
    if let Some(run_as) = &request.run_as {
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let child = command.spawn().map_err(|e| {
        let cwd = request
            .cwd
            .as_ref()
            .map(|c| format!(" in {}", c.display()))
            .unwrap_or_default();
        let subject = if what == "kernel" {
            format!("kernel '{name}'")
        } else {
            format!("the {what} of kernel '{name}'")
        };
        Error::Spawn(format!(
            "cannot start {subject}: {}{cwd}: {e}",
            program.display()
        ))
    })?;
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        tokio::spawn(keep_log_bounded(
            log_path.to_owned(),
            Pid::from_raw(pid),
            LOG_LIMIT,
            LOG_KEEP,
            LOG_CHECK_EVERY,
        ));
    }
    Ok(child)
}

/// Keeps the log at `path` under `limit` bytes while the process group `pgid` lives (the
/// process and its group share the id: `spawn_logged` starts each in a group of its own).
async fn keep_log_bounded(
    path: PathBuf,
    pgid: Pid,
    limit: u64,
    keep: u64,
    every: std::time::Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        if killpg(pgid, None).is_err() {
            return;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            return;
        };
        if meta.len() > limit {
            match cut_log(&path, keep) {
                Ok(dropped) => tracing::warn!(
                    log = %path.display(),
                    dropped_mib = dropped >> 20,
                    "a process log passed {} MiB and was cut to its last {} KiB",
                    limit >> 20,
                    keep >> 10
                ),
                Err(err) => {
                    tracing::warn!(log = %path.display(), "cannot cut an oversized log: {err}");
                    return;
                }
            }
        }
    }
}

/// Cuts the log to its last `keep` bytes (from the first line start in them), behind a line that
/// says how much went; returns how many bytes were dropped. The writers hold the file in append
/// mode, so what they write next lands after what is kept; output written while the cut runs may
/// be lost, which the marker line admits.
fn cut_log(path: &Path, keep: u64) -> std::io::Result<u64> {
    use std::io::Write as _;
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(keep);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity(usize::try_from(len - start).unwrap_or(0));
    file.read_to_end(&mut tail)?;
    let from = tail
        .iter()
        .position(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let kept = &tail[from..];
    let dropped = len - kept.len() as u64;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    let marker = format!(
        "[enterprise-gateway: this log passed its size limit; {dropped} bytes of earlier output were dropped]\n"
    );
    file.write_all(marker.as_bytes())?;
    file.write_all(kept)?;
    Ok(dropped)
}

/// Waits for the child, kills what is left of its group, and publishes the exit.
pub fn spawn_reaper(mut child: tokio::process::Child, pgid: Pid) -> watch::Receiver<ProcessState> {
    let (tx, rx) = watch::channel(ProcessState::Running);
    tokio::spawn(async move {
        let state = match child.wait().await {
            Ok(status) => ProcessState::Exited {
                code: status.code(),
                signal: status.signal(),
            },
            Err(err) => {
                tracing::warn!(pid = pgid.as_raw(), "cannot wait for kernel process: {err}");
                ProcessState::Unknown
            }
        };
        // The group id stays reserved while any member lives, so this reaches only leftovers.
        let _ = killpg(pgid, Signal::SIGKILL);
        tracing::debug!(pid = pgid.as_raw(), ?state, "local kernel process ended");
        let _ = tx.send(state);
    });
    rx
}

/// The interrupt signal: the kernelspec env's `EG_ALTERNATE_SIGINT`; else the signal Apache
/// Toree is told to listen for by `--alternate-sigint <name>` in `__TOREE_OPTS__` (the Toree
/// specs of EG and gateway_provisioners say `USR2` there: a JVM started in the background
/// ignores SIGINT for good, so Toree's SIGINT handler never comes into force); else SIGINT.
pub fn interrupt_signal_of(spec: &KernelSpec) -> Signal {
    if let Some(name) = spec.env.get("EG_ALTERNATE_SIGINT") {
        return parse_signal_name(name).unwrap_or_else(|| {
            tracing::warn!(kernelspec = %spec.name, "EG_ALTERNATE_SIGINT '{name}' is not a signal name; using SIGINT");
            Signal::SIGINT
        });
    }
    let Some(name) = spec
        .env
        .get("__TOREE_OPTS__")
        .and_then(|o| toree_alternate_sigint(o))
    else {
        return Signal::SIGINT;
    };
    parse_signal_name(name).unwrap_or_else(|| {
        tracing::warn!(kernelspec = %spec.name, "__TOREE_OPTS__ names '{name}' as --alternate-sigint, not a signal name; using SIGINT");
        Signal::SIGINT
    })
}

/// The value of `--alternate-sigint` (`--alternate-sigint USR2` or `--alternate-sigint=USR2`)
/// in Toree's options.
fn toree_alternate_sigint(options: &str) -> Option<&str> {
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        if word == "--alternate-sigint" {
            return words.next();
        }
        if let Some(value) = word.strip_prefix("--alternate-sigint=") {
            return Some(value);
        }
    }
    None
}

/// `SIGUSR2`, `USR2` or `sigusr2`.
pub fn parse_signal_name(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).ok()
}

/// Finds the program for `argv0` (see the module docs).
pub fn resolve_program(
    spec: &KernelSpec,
    argv0: &str,
    env: &BTreeMap<String, String>,
    search_path: &[PathBuf],
) -> Result<PathBuf, Error> {
    if argv0.is_empty() {
        return Err(Error::Spawn(format!(
            "kernelspec '{}' has an empty argv[0]",
            spec.name
        )));
    }
    if is_python_name(argv0)
        && let Some(prefix) = spec.prefix()
    {
        let candidate = prefix.join("bin").join(argv0);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let env_path = env.get("PATH").map(|p| {
        p.split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect::<Vec<_>>()
    });
    let dirs = env_path.iter().flatten().chain(search_path);
    for dir in dirs {
        let candidate = dir.join(argv0);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::Spawn(format!(
        "cannot start kernel '{}': program '{argv0}' was not found in the kernel's PATH or the gateway's search path",
        spec.name
    )))
}

/// `python`, `python3` or `python3.X`.
pub fn is_python_name(name: &str) -> bool {
    match name.strip_prefix("python") {
        Some("") | Some("3") => true,
        Some(rest) => rest
            .strip_prefix("3.")
            .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Kernel ids become file names: keep them to one safe path component.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        && id != "-"
}

/// Creates a directory (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(Error::Io)
}

/// Removes a file; a missing file is fine, other failures are logged.
pub fn remove_quietly(path: &Path) {
    if let Err(err) = std::fs::remove_file(path)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), "cannot remove file: {err}");
    }
}

/// Whether `pid` still runs as a member of `pgid` (and is not a zombie).
pub fn is_alive(pid: Pid, pgid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    if getpgid(Some(pid)).is_ok_and(|g| g != pgid) {
        return false;
    }
    !is_zombie(pid)
}

/// The start time of `pid` (field 22 of `/proc/<pid>/stat`, clock ticks since boot), if known.
pub fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw())).ok()?;
    // After the parenthesised command name: state is field 3, so start time is the 20th here.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Reads the state letter of `/proc/<pid>/stat` (Linux); other systems report "not a zombie".
pub fn is_zombie(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw())) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain anything.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|s| s == 'Z' || s == 'X')
}

/// The last `max_lines` lines of a file, reading at most its last [`LOG_TAIL_BYTES`].
pub fn read_tail(path: &Path, max_lines: usize) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line was cut by the window.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(max_lines);
    Ok(lines[skip..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interrupt_signal_is_the_alternate_a_spec_names() {
        let spec = |env: &[(&str, &str)]| {
            let mut json = serde_json::json!({"argv": ["x"], "display_name": "x", "env": {}});
            for (k, v) in env {
                json["env"][*k] = (*v).into();
            }
            KernelSpec::from_json("x", std::path::Path::new("/k/x"), &json).expect("spec")
        };
        assert_eq!(interrupt_signal_of(&spec(&[])), Signal::SIGINT);
        assert_eq!(
            interrupt_signal_of(&spec(&[("EG_ALTERNATE_SIGINT", "usr1")])),
            Signal::SIGUSR1
        );
        // gateway_provisioners' and EG's Toree specs.
        assert_eq!(
            interrupt_signal_of(&spec(&[("__TOREE_OPTS__", "--alternate-sigint USR2")])),
            Signal::SIGUSR2
        );
        assert_eq!(
            interrupt_signal_of(&spec(&[(
                "__TOREE_OPTS__",
                "--nosparkcontext --alternate-sigint=SIGUSR1"
            )])),
            Signal::SIGUSR1
        );
        // EG_ALTERNATE_SIGINT wins; Toree's own installer leaves __TOREE_OPTS__ empty.
        assert_eq!(
            interrupt_signal_of(&spec(&[
                ("EG_ALTERNATE_SIGINT", "SIGUSR1"),
                ("__TOREE_OPTS__", "--alternate-sigint USR2")
            ])),
            Signal::SIGUSR1
        );
        assert_eq!(
            interrupt_signal_of(&spec(&[("__TOREE_OPTS__", "")])),
            Signal::SIGINT
        );
        assert_eq!(
            interrupt_signal_of(&spec(&[("__TOREE_OPTS__", "--alternate-sigint NOPE")])),
            Signal::SIGINT
        );
    }

    #[test]
    fn an_oversized_log_is_cut_to_its_last_lines_behind_a_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.log");
        let mut text = String::new();
        for n in 0..10_000 {
            text.push_str(&format!("line {n}\n"));
        }
        std::fs::write(&path, &text).expect("write");
        let dropped = cut_log(&path, 100).expect("cut");
        let after = std::fs::read_to_string(&path).expect("read");
        let mut lines = after.lines();
        let marker = lines.next().expect("marker");
        assert!(
            marker.contains(&format!("{dropped} bytes of earlier output were dropped")),
            "{marker}"
        );
        let kept: Vec<&str> = lines.collect();
        assert_eq!(kept.last(), Some(&"line 9999"));
        assert!(kept.iter().all(|l| l.starts_with("line ")), "{kept:?}");
        assert_eq!(
            dropped as usize + kept.iter().map(|l| l.len() + 1).sum::<usize>(),
            text.len()
        );
    }

    #[tokio::test]
    async fn a_running_process_keeps_writing_after_its_log_was_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("log");
        // About 2 MB at once, then a last line a second later, then it lingers.
        let mut child = tokio::process::Command::new("sh")
            .args([
                "-c",
                "head -c 2000000 /dev/zero | tr '\\0' x; echo; sleep 1; echo after-the-cut; sleep 30",
            ])
            .stdout(Stdio::from(log))
            .process_group(0)
            .spawn()
            .expect("sh");
        let pgid = Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid"));
        let keeper = tokio::spawn(keep_log_bounded(
            path.clone(),
            pgid,
            1 << 20,
            4096,
            std::time::Duration::from_millis(100),
        ));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("after-the-cut") {
                assert!(
                    text.starts_with("[enterprise-gateway: this log passed its size limit"),
                    "{}",
                    &text[..80.min(text.len())]
                );
                assert!(text.len() < 8192, "{} bytes kept", text.len());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no cut log with the last line"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
        tokio::time::timeout(std::time::Duration::from_secs(5), keeper)
            .await
            .expect("the keeper stops with the process group")
            .expect("keeper");
    }

    #[test]
    fn python_names() {
        for (name, expected) in [
            ("python", true),
            ("python3", true),
            ("python3.11", true),
            ("python2", false),
            ("python3.", false),
            ("python3.x", false),
            ("pythonista", false),
            ("ipython", false),
        ] {
            assert_eq!(is_python_name(name), expected, "{name}");
        }
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal_name("SIGUSR2"), Some(Signal::SIGUSR2));
        assert_eq!(parse_signal_name("usr1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal_name(" SIGINT "), Some(Signal::SIGINT));
        assert_eq!(parse_signal_name("SIGNOPE"), None);
        assert_eq!(parse_signal_name(""), None);
    }

    #[test]
    fn safe_ids() {
        assert!(is_safe_id("0f3c7a52-6f1e-4c3e-9a49-1d5b1c0f7d11"));
        for bad in ["", "..", "a/b", "a b", "-"] {
            assert!(!is_safe_id(bad), "{bad}");
        }
    }

    #[test]
    fn tail_of_a_file() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        std::fs::write(&path, "one\ntwo\nthree\n")?;
        assert_eq!(read_tail(&path, 2)?, "two\nthree");
        assert_eq!(read_tail(&path, 10)?, "one\ntwo\nthree");
        assert_eq!(read_tail(&path, 0)?, "");
        let long: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, long)?;
        assert_eq!(read_tail(&path, 2)?, "line 19998\nline 19999");
        assert!(read_tail(&dir.path().join("missing"), 2).is_err());
        Ok(())
    }
}
