//! A Spark standalone master and one worker on loopback, for the tests and the benchmark that run
//! kernels against a real cluster: [`SparkCluster::start`] starts both (each a JVM in its own
//! process group, the worker's executors in the worker's) and returns once the worker has
//! registered; dropping it stops the worker, then the master.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long each daemon gets to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a stopped daemon gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A master and a worker (2 cores, 1 GiB), both on 127.0.0.1.
#[derive(Debug)]
pub struct SparkCluster {
    /// `spark://127.0.0.1:<port>`.
    pub url: String,
    /// The master's web UI port; its `/json/` lists the applications.
    pub ui_port: u16,
    // Stopped in this order: the worker (with its executors), then the master.
    _worker: Daemon,
    _master: Daemon,
}

impl SparkCluster {
    /// Starts the master and the worker of the Spark distribution at `spark_home` (pyspark's
    /// package directory will do), with their logs (`spark-master.log`, `spark-worker.log`),
    /// `HOME`, local and work directories under `dir`. Blocks until both are up.
    pub fn start(spark_home: &Path, dir: &Path) -> Result<SparkCluster> {
        let (port, ui_port, worker_ui) = (free_port()?, free_port()?, free_port()?);
        let url = format!("spark://127.0.0.1:{port}");
        let daemon = |class: &str, args: &[String]| {
            let mut cmd = Command::new(spark_home.join("bin/spark-class"));
            cmd.arg(class)
                .args(args)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", dir)
                .env("SPARK_HOME", spark_home)
                .env("SPARK_LOCAL_IP", "127.0.0.1")
                .env("SPARK_LOCAL_HOSTNAME", "127.0.0.1")
                .env("SPARK_LOCAL_DIRS", dir.join("spark-local"))
                .env("SPARK_DAEMON_MEMORY", "256m");
            cmd
        };
        let started = Instant::now();
        let master = Daemon::spawn(
            "spark master",
            daemon(
                "org.apache.spark.deploy.master.Master",
                &[
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port.to_string(),
                    "--webui-port".into(),
                    ui_port.to_string(),
                ],
            ),
            &dir.join("spark-master.log"),
            "I have been elected leader",
        )?;
        let worker = Daemon::spawn(
            "spark worker",
            daemon(
                "org.apache.spark.deploy.worker.Worker",
                &[
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--webui-port".into(),
                    worker_ui.to_string(),
                    "--cores".into(),
                    "2".into(),
                    "--memory".into(),
                    "1g".into(),
                    "--work-dir".into(),
                    dir.join("spark-work").display().to_string(),
                    url.clone(),
                ],
            ),
            &dir.join("spark-worker.log"),
            "Successfully registered with master",
        )?;
        println!(
            "spark master {url} and worker up in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(SparkCluster {
            url,
            ui_port,
            _worker: worker,
            _master: master,
        })
    }

    /// The master's web UI, `http://127.0.0.1:<ui_port>`.
    pub fn ui(&self) -> String {
        format!("http://127.0.0.1:{}", self.ui_port)
    }

    /// Stops the worker, then the master (what dropping does).
    pub fn stop(self) {
        drop(self);
    }
}

/// One daemon JVM in its own process group, output to a log file, killed with its group on drop.
#[derive(Debug)]
struct Daemon {
    pid: Pid,
    /// The exit status, from the thread that waits for the process.
    exited: Receiver<ExitStatus>,
}

impl Daemon {
    /// Starts `cmd` and waits until it prints a line with `ready` (its output goes to `log`);
    /// fails with the output's tail when it exits first or [`START_TIMEOUT`] passes.
    fn spawn(name: &str, mut cmd: Command, log: &Path, ready: &str) -> Result<Daemon> {
        let mut out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let (reader, writer) = std::io::pipe().context("creating an output pipe")?;
        cmd.stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        // The parent's copies of the pipe's write end go, so the reader sees the end.
        drop(cmd);
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        let daemon = Daemon { pid, exited };
        // Every line goes to the log; until the ready line, each is sent here too.
        let (line_tx, lines) = mpsc::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            let mut up = false;
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(out, "{line}");
                if !up {
                    up = line.contains(&ready);
                    let _ = line_tx.send(Output::Line { up, line });
                }
            }
            let _ = line_tx.send(Output::End);
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut tail: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(Output::Line { up: true, .. }) => return Ok(daemon),
                Ok(Output::Line { line, .. }) => {
                    tail.push(line);
                    if tail.len() > 40 {
                        tail.remove(0);
                    }
                }
                Ok(Output::End) | Err(RecvTimeoutError::Disconnected) => {
                    bail!("{name} ended before it was up:\n{}", tail.join("\n"));
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{name} printed no ready line within {START_TIMEOUT:?}:\n{}",
                        tail.join("\n")
                    );
                }
            }
        }
    }
}

/// What a daemon's output reader passes on while it starts.
enum Output {
    /// A line, and whether it is the ready line.
    Line { up: bool, line: String },
    /// The output ended (the process exited).
    End,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = killpg(self.pid, Signal::SIGTERM);
        if self.exited.recv_timeout(STOP_GRACE).is_err() {
            let _ = killpg(self.pid, Signal::SIGKILL);
            let _ = self.exited.recv_timeout(STOP_GRACE);
        }
        // Whatever is left of the group (the worker's executors).
        let _ = killpg(self.pid, Signal::SIGKILL);
    }
}

/// A port nobody listens on now (the OS's pick for an ephemeral listener, released at once).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_that_exits_early_fails_with_its_output() {
        let dir = std::env::temp_dir().join(format!("spark-daemon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo no master here; exit 3"]);
        let err = Daemon::spawn("sh", cmd, &dir.join("sh.log"), "elected")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no master here"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
