//! The live processes of this machine, from Linux's `/proc`, for tests that look for what a
//! kernel, a launcher or a server left behind.
//!
//! Every read may fail because the process ended between the listing and the read: each such
//! read answers `None` (or `false`), never an error, so a caller can filter with it directly.

use std::path::PathBuf;

/// One entry of `/proc` (a process when it was listed; it may have ended since).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pid: i32,
}

/// The fields of `/proc/<pid>/stat` tests ask about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z`, `X`, ...
    pub state: char,
    /// The parent's pid.
    pub ppid: i32,
    /// The process group.
    pub pgrp: i32,
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
}

impl Stat {
    /// A zombie or a dead process: it exists only until its parent reaps it.
    pub fn is_gone(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Every process listed in `/proc` now, this one included (empty if `/proc` cannot be read).
pub fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .map(|pid| Process { pid })
        .collect()
}

/// Every process listed now other than the caller.
pub fn other_processes() -> Vec<Process> {
    let own = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    processes().into_iter().filter(|p| p.pid != own).collect()
}

/// Every live process whose chain of parents leads to `root` (not `root` itself).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children: std::collections::HashMap<i32, Vec<i32>> = std::collections::HashMap::new();
    for p in processes() {
        if let Some(stat) = p.stat() {
            children.entry(stat.ppid).or_default().push(p.pid);
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

/// Whether a process of group `pgid` is running (zombies do not count: a group whose members
/// all ended but are not reaped yet is gone for a test).
pub fn group_alive(pgid: i32) -> bool {
    processes()
        .iter()
        .any(|p| p.stat().is_some_and(|s| s.pgrp == pgid && !s.is_gone()))
}

/// Sends `signal` to process group `pgid`; a group that is already gone is not an error.
pub fn signal_group(pgid: i32, signal: nix::sys::signal::Signal) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
    }
}

/// Sends SIGKILL to every other process with an argument containing `needle`; their pids.
pub fn kill_with_argument(needle: &str) -> Vec<i32> {
    let found: Vec<i32> = other_processes()
        .into_iter()
        .filter(|p| p.has_argument_containing(needle))
        .map(|p| p.pid())
        .collect();
    for &pid in &found {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    found
}

/// A guard that, when dropped, kills every process left with an argument containing one of its
/// needles (a test's temp dir, a launcher script): for kernels that do not descend from
/// anything the test owns, such as those sshd or a Spark worker started. It says on stderr
/// what it killed.
#[derive(Debug)]
pub struct Reaper {
    needles: Vec<String>,
}

impl Reaper {
    /// A guard for these needles.
    pub fn new<S: Into<String>>(needles: impl IntoIterator<Item = S>) -> Reaper {
        Reaper {
            needles: needles.into_iter().map(Into::into).collect(),
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for needle in &self.needles {
            let killed = kill_with_argument(needle);
            if !killed.is_empty() {
                eprintln!(
                    "killed {} process(es) left behind ({needle}): {killed:?}",
                    killed.len()
                );
            }
        }
    }
}

/// `/proc/<pid>/stat`, parsed.
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name in parentheses may itself hold spaces and parentheses: the fields
    // start after the last `)`. From there: state, ppid, pgrp, ..., utime (12th), stime.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        pgrp,
        cpu_ticks: utime + stime,
    })
}

impl Process {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn file(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{name}", self.pid))
    }

    /// Its `/proc/<pid>/stat`, parsed.
    pub fn stat(&self) -> Option<Stat> {
        stat(self.pid)
    }

    /// Neither ended nor a zombie.
    pub fn is_running(&self) -> bool {
        self.stat().is_some_and(|s| !s.is_gone())
    }

    /// The arguments (`argv`), lossily decoded; empty for a kernel thread.
    pub fn args(&self) -> Option<Vec<String>> {
        self.nul_separated("cmdline")
    }

    /// The arguments joined by spaces, as `ps` shows them.
    pub fn command_line(&self) -> Option<String> {
        self.args().map(|args| args.join(" "))
    }

    /// Whether one of the arguments contains `needle`.
    pub fn has_argument_containing(&self, needle: &str) -> bool {
        self.args()
            .is_some_and(|args| args.iter().any(|arg| arg.contains(needle)))
    }

    /// The environment's `NAME=value` entries, lossily decoded (only readable for processes of
    /// the same user, or as root).
    pub fn environ(&self) -> Option<Vec<String>> {
        self.nul_separated("environ")
    }

    /// A `/proc/<pid>` file of NUL-terminated strings, lossily decoded, empty ones left out.
    fn nul_separated(&self, name: &str) -> Option<Vec<String>> {
        let raw = std::fs::read(self.file(name)).ok()?;
        Some(
            raw.split(|&b| b == 0)
                .filter(|entry| !entry.is_empty())
                .map(|entry| String::from_utf8_lossy(entry).into_owned())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_come_after_the_last_parenthesis() {
        let text = "4242 (odd (name) x) S 17 4242 4242 0 -1 4194560 0 0 0 0 7 5 0 0 20 0 1 0";
        let s = parse_stat(text).expect("parses");
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 17,
                pgrp: 4242,
                cpu_ticks: 12
            }
        );
        assert!(!s.is_gone());
        assert!(parse_stat("4242 (cut").is_none());
    }

    #[test]
    fn this_process_is_listed_with_its_arguments() {
        let own = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let me = processes()
            .into_iter()
            .find(|p| p.pid() == own)
            .expect("listed");
        assert!(me.is_running());
        let args = me.args().expect("readable");
        assert!(!args.is_empty());
        assert!(me.has_argument_containing(&args[0]));
        assert!(me.environ().is_some());
        assert!(other_processes().iter().all(|p| p.pid() != own));
        assert_eq!(me.stat().map(|s| s.ppid), stat(own).map(|s| s.ppid));
        let group = me.stat().expect("stat").pgrp;
        assert!(group_alive(group));
        assert!(!group_alive(i32::MAX));
    }

    #[tokio::test]
    async fn the_reaper_kills_what_names_its_needle() {
        use std::os::unix::process::CommandExt as _;
        let needle = format!("/reaper-test-{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .arg0(format!("sleep{needle}"))
            .spawn()
            .expect("sleep runs");
        // Until it has exec'd, the child's arguments are this test binary's.
        let pid = i32::try_from(child.id()).expect("pid");
        let named = crate::eventually(std::time::Duration::from_secs(10), || {
            Process { pid }.has_argument_containing(&needle)
        })
        .await;
        drop(Reaper::new([needle]));
        let ended = crate::eventually(std::time::Duration::from_secs(10), || {
            !Process { pid }.is_running()
        })
        .await;
        // Only a clean-up: the assertions below hold for what the reaper did.
        if !ended {
            let _ = child.kill();
        }
        let status = child.wait().expect("reaped");
        assert!(named, "the child never showed its arguments");
        assert!(ended, "the reaper left the child running");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "killed by the reaper: {status:?}"
        );
    }
}
