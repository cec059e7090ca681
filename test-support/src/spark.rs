//! A Spark standalone master and one worker on loopback, for the tests and the benchmark that run
//! kernels against a real cluster: [`SparkCluster::start`] starts both (each a JVM in its own
//! process group, the worker's executors in the worker's) and returns once the worker has
//! registered; dropping it stops the worker, then the master.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::proc::Proc;

/// How long each daemon gets to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A master and a worker (2 cores, 1 GiB), both on 127.0.0.1.
#[derive(Debug)]
pub struct SparkCluster {
    /// `spark://127.0.0.1:<port>`.
    pub url: String,
    /// The master's web UI port; its `/json/` lists the applications.
    pub ui_port: u16,
    // Stopped in this order: the worker (with its executors), then the master.
    _worker: Proc,
    _master: Proc,
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
        let master = daemon_up(
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
        let worker = daemon_up(
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

/// Starts a daemon and waits for its ready line; its log is not printed when it is stopped (the
/// cluster outlives the kernels whose tests may fail, and says nothing about them).
fn daemon_up(name: &str, cmd: Command, log: &Path, ready: &str) -> Result<Proc> {
    let mut daemon = Proc::spawn(name, cmd, log, Some(ready), START_TIMEOUT)?;
    daemon.mark_passed();
    Ok(daemon)
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
        let err = daemon_up("sh", cmd, &dir.join("sh.log"), "elected")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no master here"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
