//! Remote shell commands built from argument vectors.
//!
//! Every value that reaches the remote shell (argv items, env names and values, paths) is
//! single-quoted with [`quote`], so the shell sees it as one literal word: `$(...)`, backticks,
//! `;`, quotes and newlines stay text. Numbers (pids, signals) are formatted from integers. The
//! remote login shell must be a POSIX shell (sh, bash, dash, ksh, zsh).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::Error;

/// The prefix of the line carrying the launcher's pid in the launch command's output.
pub(crate) const PID_MARKER: &str = "eg-launcher-pid:";

/// `value` as one single-quoted POSIX shell word (`'` becomes `'\''`).
pub(super) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Whether `name` is a portable environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub(super) fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn checked<'a>(what: &str, value: &'a str) -> Result<&'a str, Error> {
    if value.contains('\0') {
        return Err(Error::Config(format!("{what} contains a NUL byte")));
    }
    Ok(value)
}

/// The one shell line that starts a launcher on a remote host, detached, and prints its pid
/// (`eg-launcher-pid:<pid>`):
///
/// ```text
/// umask 077; mkdir -p -- '<log dir>' && { cd -- '<cwd>' 2>/dev/null || true; } &&
/// export 'K'='V' && ... &&
/// { nohup setsid 'argv0' 'argv1' ... >> '<log>' 2>&1 < /dev/null & } && echo "eg-launcher-pid:$!"
/// ```
///
/// `setsid` (util-linux, busybox) makes the launcher the leader of its own session and process
/// group, so the printed pid is also the group to signal. Env names must be portable names;
/// values and argv items may contain anything but NUL.
pub(super) fn launch_command(
    env: &BTreeMap<String, String>,
    argv: &[String],
    cwd: Option<&Path>,
    log_path: &Path,
) -> Result<String, Error> {
    if argv.is_empty() {
        return Err(Error::Spawn("the kernelspec's argv is empty".to_owned()));
    }
    let log = checked("the log path", path_str(log_path)?)?;
    let log_dir = log_path
        .parent()
        .map(path_str)
        .transpose()?
        .filter(|d| !d.is_empty())
        .unwrap_or(".");
    let mut line = format!("umask 077; mkdir -p -- {}", quote(log_dir));
    if let Some(cwd) = cwd {
        // The gateway's directory may not exist on the host: then the kernel starts in the
        // remote user's home, as EG's do.
        let cwd = checked("the working directory", path_str(cwd)?)?;
        let _ = write!(line, " && {{ cd -- {} 2>/dev/null || true; }}", quote(cwd));
    }
    for (name, value) in env {
        if !is_env_name(name) {
            return Err(Error::Config(format!(
                "environment variable name {name:?} cannot be passed to a remote host"
            )));
        }
        let value = checked(&format!("the value of {name}"), value)?;
        let _ = write!(line, " && export {}={}", quote(name), quote(value));
    }
    line.push_str(" && { nohup setsid");
    for item in argv {
        let item = checked("an argv item", item)?;
        line.push(' ');
        line.push_str(&quote(item));
    }
    let _ = write!(
        line,
        " >> {} 2>&1 < /dev/null & }} && echo \"{PID_MARKER}$!\"",
        quote(log)
    );
    Ok(line)
}

/// The pid from the launch command's output, if it printed one.
pub(super) fn parse_launch_pid(stdout: &str) -> Option<i32> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(PID_MARKER))
        .and_then(|pid| pid.trim().parse().ok())
        .filter(|pid: &i32| *pid > 1)
}

/// Sends `signum` to the launcher's process group `-<group>` and to each of `kernel_groups`
/// that belongs to the launcher's session (checked in `/proc`, so a launcher's report cannot name
/// somebody else's processes); prints `0` if anything was signalled, else `1`. Signal 0 probes.
pub(super) fn kill_command(signum: i32, group: i32, kernel_groups: &[i32]) -> String {
    let mut line = String::from("r=1;");
    if group > 1 {
        let _ = write!(line, " kill -{signum} -- -{group} 2>/dev/null && r=0;");
        for g in kernel_groups.iter().filter(|g| **g > 1 && **g != group) {
            let _ = write!(
                line,
                " [ \"$(sed 's/.*) //' /proc/{g}/stat 2>/dev/null | cut -d' ' -f4)\" = {group} ] && kill -{signum} -- -{g} 2>/dev/null && r=0;"
            );
        }
    }
    line.push_str(" echo $r");
    line
}

/// `tail` of a remote file.
pub(super) fn tail_command(path: &Path, lines: usize) -> Result<String, Error> {
    let path = checked("the log path", path_str(path)?)?;
    Ok(format!("tail -n {lines} -- {} 2>&1", quote(path)))
}

fn path_str(path: &Path) -> Result<&str, Error> {
    path.to_str()
        .ok_or_else(|| Error::Config(format!("path {} is not UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;

    /// Runs `line` with `/bin/sh -c` in a temp dir and returns what `printf %s "$X"` sees for
    /// each argument after the command (the command is `sh -c 'printf ...' -- args`).
    #[track_caller]
    fn check(value: &str) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let out = dir.path().join("out");
        let env = BTreeMap::from([("V".to_owned(), value.to_owned())]);
        let script = format!(
            "printf '%s\\n%s' \"$V\" \"$1\" > {}",
            quote(&out.to_string_lossy())
        );
        let argv = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            script,
            "sh".to_owned(),
            value.to_owned(),
        ];
        let log = dir.path().join("logs/kernel.log");
        let line =
            launch_command(&env, &argv, Some(dir.path()), &log).unwrap_or_else(|e| panic!("{e}"));
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg(&line)
            .current_dir(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("sh: {e}"));
        let stdout = String::from_utf8_lossy(&status.stdout);
        assert!(parse_launch_pid(&stdout).is_some(), "{stdout}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let seen = loop {
            if let Ok(seen) = std::fs::read_to_string(&out)
                && seen.len() > value.len()
            {
                break seen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no output for {value:?}"
            );
            std::thread::yield_now();
        };
        assert_eq!(seen, format!("{value}\n{value}"), "{line}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names.len(), 2, "unexpected files: {names:?}");
    }

    #[test]
    fn hostile_values_arrive_verbatim() {
        for value in [
            "plain",
            "",
            "$(touch marker)",
            "`touch marker`",
            "; touch marker",
            "'; touch marker; '",
            "\"$(touch marker)\"",
            "a\nb\ntouch marker",
            "\\' \\\\ '' \"\"",
            "${HOME} $$ $! * ? [a] ~ #",
            "& | > < ( ) { }",
        ] {
            check(value);
        }
    }

    #[test]
    fn quoting_and_names() {
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
        assert!(is_env_name("KERNEL_USERNAME"));
        assert!(is_env_name("_x1"));
        for bad in ["", "1A", "A-B", "A=B", "A B", "$(x)"] {
            assert!(!is_env_name(bad), "{bad}");
        }
        let env = BTreeMap::from([("A=B".to_owned(), "x".to_owned())]);
        let argv = vec!["k".to_owned()];
        let log = PathBuf::from("/tmp/k.log");
        assert!(matches!(
            launch_command(&env, &argv, None, &log),
            Err(Error::Config(_))
        ));
        let env = BTreeMap::from([("A".to_owned(), "x\0y".to_owned())]);
        assert!(launch_command(&env, &argv, None, &log).is_err());
        assert!(launch_command(&BTreeMap::new(), &[], None, &log).is_err());
    }

    #[test]
    fn pids_and_kills() {
        assert_eq!(parse_launch_pid("motd\neg-launcher-pid:4242\n"), Some(4242));
        assert_eq!(parse_launch_pid("eg-launcher-pid:1"), None);
        assert_eq!(parse_launch_pid("eg-launcher-pid:x"), None);
        assert_eq!(parse_launch_pid(""), None);
        assert_eq!(
            kill_command(9, 120, &[120, 1, 0]),
            "r=1; kill -9 -- -120 2>/dev/null && r=0; echo $r"
        );
        assert_eq!(kill_command(0, 1, &[5]), "r=1; echo $r");
        assert!(kill_command(15, 120, &[130]).contains("= 120 ] && kill -15 -- -130"));
    }
}
