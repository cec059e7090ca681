//! One plugin process and the conversation with it: one request at a time, each answer checked,
//! every wait bounded. The first violation (a line that is not an answer, a wrong id, silence
//! past the deadline, an exit) ends the process and its process group; later requests fail at
//! once with that reason.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use super::PluginCommand;
use super::error::PluginError;
use super::protocol::{Answer, LineFault, Request, parse_answer};

/// The longest line a plugin may write on stdout.
const MAX_LINE: usize = 1024 * 1024;

/// How many lines of the plugin's stderr are kept for messages.
const STDERR_LINES: usize = 200;

/// How long a plugin that ended its conversation may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// How long the output of a plugin that just exited is still read (its last answer may be in
/// the pipe behind the exit).
const LAST_WORDS: Duration = Duration::from_millis(300);

/// What the stdout reader hands over: a line, or why reading stopped.
type Line = Result<String, String>;

/// A running plugin process.
#[derive(Debug)]
pub(crate) struct Session {
    /// How messages name the plugin.
    label: String,
    child: Child,
    /// The plugin's process group (its own pid: it is started as a group leader).
    pgid: Option<Pid>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Line>,
    next_id: u64,
    /// Set by the first violation; the plugin is gone from then on.
    broken: Option<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    status: Option<ExitStatus>,
    /// The kernel outlives the session ([`Session::keep_kernel`]).
    keep: bool,
}

impl Session {
    /// Starts `command` (`argv[0]` found through `search_path` when it has no `/`) in a new
    /// process group, with stdin and stdout piped for the protocol and stderr kept for messages.
    pub(crate) fn spawn(
        command: &PluginCommand,
        search_path: &[PathBuf],
        label: String,
    ) -> Result<Session, PluginError> {
        let start_error = |reason: String| PluginError::Start {
            plugin: label.clone(),
            reason,
        };
        let Some(argv0) = command.argv.first() else {
            return Err(start_error("its argv is empty".to_owned()));
        };
        let program = resolve(argv0, command.cwd.as_deref(), search_path)
            .ok_or_else(|| start_error(format!("{argv0} was not found")))?;
        let path = std::env::join_paths(search_path).unwrap_or_default();
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(command.argv.iter().skip(1))
            .env_clear()
            .env("PATH", path)
            .envs(&command.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &command.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| start_error(format!("{}: {e}", program.display())))?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel(16);
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(read_lines(BufReader::new(stdout), tx));
        }
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            tokio::spawn(keep_stderr(
                BufReader::new(err),
                Arc::clone(&stderr),
                label.clone(),
            ));
        }
        Ok(Session {
            label,
            child,
            pgid,
            stdin,
            lines,
            next_id: 1,
            broken: None,
            stderr,
            status: None,
            keep: false,
        })
    }

    /// How messages name the plugin.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Names the plugin from now on by `label` (once its `hello` said who it is).
    pub(crate) fn relabel(&mut self, label: String) {
        self.label = label;
    }

    /// Whether an earlier violation ended the plugin.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// The last `max_lines` lines the plugin wrote on stderr.
    pub(crate) fn stderr_tail(&self, max_lines: usize) -> String {
        tail(&self.stderr, max_lines)
    }

    /// The plugin's stderr lines, shared with the reader that keeps them.
    pub(crate) fn stderr(&self) -> Arc<Mutex<VecDeque<String>>> {
        Arc::clone(&self.stderr)
    }

    /// Sends `request` and waits until `deadline` for its answer. A failure the plugin reports
    /// is [`PluginError::Refused`] and leaves the plugin running; any other failure ends it.
    pub(crate) async fn call(
        &mut self,
        request: Request,
        deadline: Instant,
    ) -> Result<Map<String, Value>, PluginError> {
        if let Some(reason) = &self.broken {
            return Err(PluginError::Broken {
                plugin: self.label.clone(),
                reason: reason.clone(),
            });
        }
        let op = request.op;
        match self.exchange(&request, deadline).await {
            Ok(Answer::Ok(fields)) => Ok(fields),
            Ok(Answer::Failed(failure)) => Err(PluginError::Refused {
                plugin: self.label.clone(),
                op: op.to_owned(),
                failure,
            }),
            Err(err) => {
                self.fail(&err).await;
                Err(err)
            }
        }
    }

    /// Ends the plugin after `err`: later calls fail with it.
    pub(crate) async fn fail(&mut self, err: &PluginError) {
        if self.broken.is_none() {
            tracing::warn!(plugin = %self.label, error = %err, "stopping a plugin that broke the protocol");
            self.broken = Some(err.to_string());
        }
        self.kill().await;
    }

    async fn exchange(
        &mut self,
        request: &Request,
        deadline: Instant,
    ) -> Result<Answer, PluginError> {
        let id = self.next_id;
        self.next_id += 1;
        let op = request.op;
        // For messages: what the request had, to a tenth of a second.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis();
        let budget =
            Duration::from_millis(u64::try_from((left + 50) / 100 * 100).unwrap_or(u64::MAX));
        let mut line = request.to_line(id);
        line.push('\n');
        if let Some(status) = self.status {
            return Err(self.exited(op, describe(status)));
        }
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(self.exited(op, "its stdin was closed".to_owned()));
        };
        match timeout_at(deadline, stdin.write_all(line.as_bytes())).await {
            Err(_) => return Err(self.timeout(op, budget)),
            Ok(Err(_)) => return Err(self.gone(op).await),
            Ok(Ok(())) => {}
        }
        if let Ok(Err(_)) | Err(_) = timeout_at(deadline, stdin.flush()).await {
            return Err(self.gone(op).await);
        }
        let received = tokio::select! {
            line = timeout_at(deadline, self.lines.recv()) => line,
            status = self.child.wait(), if self.status.is_none() => {
                self.status = status.ok();
                // Its answer may still be in the pipe behind the exit.
                Ok(tokio::time::timeout(LAST_WORDS, self.lines.recv()).await.unwrap_or(None))
            }
        };
        let text = match received {
            Err(_) => return Err(self.timeout(op, budget)),
            Ok(None) => return Err(self.gone(op).await),
            Ok(Some(Err(reason))) => {
                return Err(PluginError::NotJson {
                    plugin: self.label.clone(),
                    op: op.to_owned(),
                    line: reason,
                });
            }
            Ok(Some(Ok(text))) => text,
        };
        parse_answer(&text, id).map_err(|fault| match fault {
            LineFault::NotJson(line) => PluginError::NotJson {
                plugin: self.label.clone(),
                op: op.to_owned(),
                line,
            },
            LineFault::WrongId { expected, got } => PluginError::WrongId {
                plugin: self.label.clone(),
                op: op.to_owned(),
                expected,
                got,
            },
            LineFault::Malformed(reason) => PluginError::Malformed {
                plugin: self.label.clone(),
                op: op.to_owned(),
                reason,
            },
        })
    }

    fn timeout(&self, op: &str, after: Duration) -> PluginError {
        PluginError::Timeout {
            plugin: self.label.clone(),
            op: op.to_owned(),
            after,
        }
    }

    /// The plugin stopped talking (stdout closed, stdin refused): how it ended.
    async fn gone(&mut self, op: &str) -> PluginError {
        if self.status.is_none()
            && let Ok(Ok(status)) = tokio::time::timeout(LAST_WORDS, self.child.wait()).await
        {
            self.status = Some(status);
        }
        let status = match self.status {
            Some(status) => describe(status),
            None => "it closed its stdout".to_owned(),
        };
        self.exited(op, status)
    }

    fn exited(&self, op: &str, status: String) -> PluginError {
        let tail = self.stderr_tail(5);
        let stderr = if tail.is_empty() {
            String::new()
        } else {
            format!("; stderr: {}", tail.replace('\n', " | "))
        };
        PluginError::Exited {
            plugin: self.label.clone(),
            op: op.to_owned(),
            status,
            stderr,
        }
    }

    /// Ends the conversation: stdin is closed, the plugin gets [`EXIT_GRACE`] to exit, then its
    /// process group is killed. With `kill_group`, the group is killed even after a clean exit
    /// (what the plugin left behind in it goes too).
    pub(crate) async fn close(&mut self, kill_group: bool) {
        self.stdin = None;
        if self.status.is_none() {
            match tokio::time::timeout(EXIT_GRACE, self.child.wait()).await {
                Ok(Ok(status)) => self.status = Some(status),
                _ => {
                    tracing::warn!(plugin = %self.label, "plugin did not exit after its stdin closed; killing it");
                    self.kill().await;
                    return;
                }
            }
        }
        if kill_group {
            self.kill_group();
        }
    }

    /// SIGKILLs the plugin's process group and reaps the plugin.
    pub(crate) async fn kill(&mut self) {
        self.stdin = None;
        self.kill_group();
        if self.status.is_none()
            && let Ok(Ok(status)) = tokio::time::timeout(EXIT_GRACE, self.child.wait()).await
        {
            self.status = Some(status);
        }
    }

    /// SIGKILL to the plugin's process group, while its leader may not have been reaped yet or
    /// others of the group may remain (the group id cannot belong to anyone else until the
    /// group is empty).
    fn kill_group(&self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    /// Lets the kernel outlive this session: when it ends without [`Session::close`], the
    /// plugin only sees its stdin close and its process group is left alone.
    pub(crate) fn keep_kernel(&mut self) {
        self.keep = true;
    }
}

impl Drop for Session {
    /// A session dropped while its plugin runs (a cancelled launch, a handle dropped without
    /// cleanup) kills the plugin's process group, unless the kernel must outlive it. Tokio
    /// reaps the process.
    fn drop(&mut self) {
        if self.status.is_none() && !self.keep {
            self.kill_group();
        }
    }
}

/// A session run by its own task, so a caller that stops waiting (a dropped future) cannot
/// leave a request half-sent or its answer unread: the task finishes each exchange and drops
/// the answer nobody waits for. Requests are taken in order; each one's deadline starts when
/// the task sends it. Dropping the conversation ends the task and the session with it.
#[derive(Debug)]
pub(crate) struct Conversation {
    jobs: mpsc::UnboundedSender<Job>,
    broken: Arc<std::sync::atomic::AtomicBool>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// What the conversation's task is asked to do.
#[derive(Debug)]
enum Job {
    Call {
        request: Request,
        budget: Duration,
        reply: tokio::sync::oneshot::Sender<Result<Map<String, Value>, PluginError>>,
    },
    /// The caller found an answer malformed: end the plugin.
    Fail(PluginError),
    Close {
        kill_group: bool,
        done: tokio::sync::oneshot::Sender<()>,
    },
    KeepKernel,
}

impl Conversation {
    /// Hands `session` to a task of its own.
    pub(crate) fn start(mut session: Session) -> Conversation {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (jobs, mut queue) = mpsc::unbounded_channel();
        let broken = Arc::new(AtomicBool::new(session.is_broken()));
        let stderr = session.stderr();
        let flag = Arc::clone(&broken);
        tokio::spawn(async move {
            while let Some(job) = queue.recv().await {
                match job {
                    Job::Call {
                        request,
                        budget,
                        reply,
                    } => {
                        let answer = session.call(request, Instant::now() + budget).await;
                        flag.store(session.is_broken(), Ordering::SeqCst);
                        let _ = reply.send(answer);
                    }
                    Job::Fail(err) => {
                        session.fail(&err).await;
                        flag.store(true, Ordering::SeqCst);
                    }
                    Job::Close { kill_group, done } => {
                        session.close(kill_group).await;
                        let _ = done.send(());
                    }
                    Job::KeepKernel => session.keep_kernel(),
                }
            }
        });
        Conversation {
            jobs,
            broken,
            stderr,
        }
    }

    /// Sends `request` and waits for its answer (see [`Session::call`]); the request has
    /// `budget` from the moment it is sent.
    pub(crate) async fn call(
        &self,
        request: Request,
        budget: Duration,
    ) -> Result<Map<String, Value>, PluginError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let op = request.op;
        let gone = || PluginError::Broken {
            plugin: "(unknown)".to_owned(),
            reason: format!("its conversation ended before {op}"),
        };
        self.jobs
            .send(Job::Call {
                request,
                budget,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Ends the plugin after a malformed answer `err` (later calls fail with it).
    pub(crate) fn fail(&self, err: PluginError) {
        self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.jobs.send(Job::Fail(err));
    }

    /// [`Session::close`], once the requests before it are done.
    pub(crate) async fn close(&self, kill_group: bool) {
        let (done, closed) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job::Close { kill_group, done }).is_ok() {
            let _ = closed.await;
        }
    }

    /// [`Session::keep_kernel`].
    pub(crate) fn keep_kernel(&self) {
        let _ = self.jobs.send(Job::KeepKernel);
    }

    /// Whether the plugin broke the protocol (or exited) and was ended.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The last `max_lines` lines of the plugin's stderr.
    pub(crate) fn stderr_tail(&self, max_lines: usize) -> String {
        tail(&self.stderr, max_lines)
    }
}

/// `exit code 3`, `signal 9`.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "exited".to_owned(),
    }
}

/// `argv0` as a path to run: with a `/`, relative to `cwd`; else the first executable file of
/// that name in `search_path`.
fn resolve(argv0: &str, cwd: Option<&Path>, search_path: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if argv0.contains('/') {
        let path = Path::new(argv0);
        let path = match cwd {
            Some(cwd) if path.is_relative() => cwd.join(path),
            _ => path.to_path_buf(),
        };
        return runnable(&path).then_some(path);
    }
    search_path
        .iter()
        .map(|dir| dir.join(argv0))
        .find(|candidate| runnable(candidate))
}

/// The last `max_lines` of the kept stderr lines.
pub(crate) fn tail(lines: &Mutex<VecDeque<String>>, max_lines: usize) -> String {
    let lines = lines.lock();
    let skip = lines.len().saturating_sub(max_lines);
    lines
        .iter()
        .skip(skip)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Hands stdout over line by line; stops at EOF, at a read error or at a line over
/// [`MAX_LINE`] (reported as the last item).
async fn read_lines(mut reader: impl AsyncBufRead + Unpin, tx: mpsc::Sender<Line>) {
    let mut line = Vec::new();
    loop {
        line.clear();
        let item = match read_line_capped(&mut reader, &mut line).await {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if text.trim().is_empty() {
                    continue;
                }
                Ok(text.to_owned())
            }
            Err(reason) => Err(reason),
        };
        let last = item.is_err();
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}

async fn read_line_capped(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> Result<usize, String> {
    loop {
        let available = reader
            .fill_buf()
            .await
            .map_err(|e| format!("its stdout could not be read: {e}"))?;
        if available.is_empty() {
            return Ok(line.len());
        }
        let (used, complete) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (end + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(available.get(..used).unwrap_or_default());
        reader.consume(used);
        if line.len() > MAX_LINE {
            return Err(format!("a line longer than {MAX_LINE} bytes"));
        }
        if complete {
            return Ok(line.len());
        }
    }
}

/// Keeps the last [`STDERR_LINES`] lines of stderr (each at most 1,000 characters) and logs
/// them at debug level.
async fn keep_stderr(
    mut reader: impl AsyncBufRead + Unpin,
    tail: Arc<Mutex<VecDeque<String>>>,
    label: String,
) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_capped(&mut reader, &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text: String = text.trim_end().chars().take(1000).collect();
                tracing::debug!(plugin = %label, "{text}");
                let mut tail = tail.lock();
                if tail.len() == STDERR_LINES {
                    tail.pop_front();
                }
                tail.push_back(text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_capped() {
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.push(b'\n');
        let input: Vec<u8> = [b"one\n\n two\r\n".to_vec(), long].concat();
        let (tx, mut rx) = mpsc::channel(8);
        read_lines(&input[..], tx).await;
        assert_eq!(rx.recv().await, Some(Ok("one".to_owned())));
        assert_eq!(rx.recv().await, Some(Ok(" two".to_owned())));
        assert!(matches!(rx.recv().await, Some(Err(reason)) if reason.contains("longer than")));
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn programs_are_found_on_the_search_path() {
        let dirs = [PathBuf::from("/nonexistent"), PathBuf::from("/bin")];
        assert_eq!(resolve("sh", None, &dirs), Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve("no-such-program-here", None, &dirs), None);
        assert_eq!(
            resolve("sh", Some(Path::new("/")), &[]),
            None,
            "a bare name is not looked up in the working directory"
        );
        assert_eq!(
            resolve("bin/sh", Some(Path::new("/")), &[]),
            Some(PathBuf::from("/bin/sh"))
        );
    }
}
