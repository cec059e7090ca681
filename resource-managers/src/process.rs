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
    command.spawn().map_err(|e| {
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
    })
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

/// The interrupt signal: the kernelspec env's `EG_ALTERNATE_SIGINT`, else SIGINT.
pub fn interrupt_signal_of(spec: &KernelSpec) -> Signal {
    match spec.env.get("EG_ALTERNATE_SIGINT") {
        None => Signal::SIGINT,
        Some(name) => parse_signal_name(name).unwrap_or_else(|| {
            tracing::warn!(kernelspec = %spec.name, "EG_ALTERNATE_SIGINT '{name}' is not a signal name; using SIGINT");
            Signal::SIGINT
        }),
    }
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
