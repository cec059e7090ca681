//! Spark for real: a Spark standalone master and worker from the venv's pyspark (Java 17), and a
//! kernel from the `spark_python_local` fixture kernelspec, launched through the `local`
//! backend, that creates a client-mode SparkSession against the master and runs a job.
//!
//! Needs `pyspark` in `.venv` (`pip install pyspark==4.3.0`, about 490 MB installed). Every test
//! here is named `spark_standalone_*`, so a run can leave them out with the nextest filter
//! `-E 'not test(/spark_standalone_/)'`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use jupyter_protocol::{KernelClient, SocketOptions};
use kernel_launcher::{KernelSpec, PortRange};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use resource_managers::local::{LocalConfig, LocalResourceManager};
use resource_managers::{LaunchRequest, ProcessState, ResourceManager};

const SECOND: Duration = Duration::from_secs(1);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `SPARK_HOME` of the venv's pyspark.
fn spark_home() -> PathBuf {
    let lib = workspace().join(".venv/lib");
    let home = std::fs::read_dir(&lib)
        .expect("venv lib")
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/pyspark"))
        .find(|p| p.join("bin/spark-class").exists());
    home.unwrap_or_else(|| {
        panic!(
            "pyspark is not installed in {}: run `.venv/bin/pip install pyspark==4.3.0` \
             (or leave these tests out with -E 'not test(/spark_standalone_/)')",
            workspace().join(".venv").display()
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One Spark daemon (a JVM: `spark-class` execs java) in its own process group; the group
/// (with the executors a worker started) is killed on drop.
struct Daemon {
    child: tokio::process::Child,
    pgid: Pid,
}

impl Daemon {
    fn start(args: &[&str], env: &BTreeMap<String, String>, log: &Path) -> Daemon {
        let log = std::fs::File::create(log).expect("daemon log");
        let err = log.try_clone().expect("log clone");
        let child = tokio::process::Command::new(spark_home().join("bin/spark-class"))
            .args(args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("spark-class starts");
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).expect("pid");
        Daemon {
            child,
            pgid: Pid::from_raw(pid),
        }
    }

    /// SIGTERM to the group, then SIGKILL if it does not go within 10 s.
    async fn stop(mut self) {
        let _ = killpg(self.pgid, Signal::SIGTERM);
        if tokio::time::timeout(10 * SECOND, self.child.wait())
            .await
            .is_err()
        {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
        // Executors a worker started live in its group.
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }
}

/// The master's `/json/` document.
async fn master_json(ui_port: u16) -> Option<serde_json::Value> {
    let reply = crate::raw(
        "GET",
        &format!("http://127.0.0.1:{ui_port}/json/"),
        &[],
        None,
    )
    .await
    .ok()?;
    (reply.status == 200)
        .then(|| serde_json::from_str(&reply.body).ok())
        .flatten()
}

async fn wait_master(ui_port: u16, what: &str, ready: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + 120 * SECOND;
    loop {
        if master_json(ui_port).await.is_some_and(|j| ready(&j)) {
            return;
        }
        assert!(Instant::now() < deadline, "Spark {what} not ready in 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_standalone_session_from_a_gateway_launched_kernel_runs_a_job() {
    let spark_home = spark_home();
    let tmp = tempfile::tempdir().expect("tempdir");
    let venv_bin = workspace().join(".venv/bin");
    let base_env = BTreeMap::from([
        ("SPARK_HOME".to_owned(), spark_home.display().to_string()),
        (
            "PATH".to_owned(),
            format!("{}:/usr/bin:/bin", venv_bin.display()),
        ),
        ("HOME".to_owned(), tmp.path().display().to_string()),
        ("SPARK_LOCAL_IP".to_owned(), "127.0.0.1".to_owned()),
        ("SPARK_LOCAL_HOSTNAME".to_owned(), "127.0.0.1".to_owned()),
        (
            "SPARK_LOCAL_DIRS".to_owned(),
            tmp.path().join("local").display().to_string(),
        ),
        (
            "PYSPARK_PYTHON".to_owned(),
            venv_bin.join("python").display().to_string(),
        ),
    ]);
    let (port, ui, worker_ui) = (free_port(), free_port(), free_port());
    let master_url = format!("spark://127.0.0.1:{port}");

    let t0 = Instant::now();
    let (port_s, ui_s, worker_ui_s) = (port.to_string(), ui.to_string(), worker_ui.to_string());
    let master = Daemon::start(
        &[
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            &port_s,
            "--webui-port",
            &ui_s,
        ],
        &base_env,
        &tmp.path().join("master.log"),
    );
    wait_master(ui, "master", |j| j["status"] == "ALIVE").await;
    let master_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let work_dir = tmp.path().join("work");
    let worker = Daemon::start(
        &[
            "org.apache.spark.deploy.worker.Worker",
            "--host",
            "127.0.0.1",
            "--webui-port",
            &worker_ui_s,
            "--cores",
            "1",
            "--memory",
            "1g",
            "--work-dir",
            &work_dir.display().to_string(),
            &master_url,
        ],
        &base_env,
        &tmp.path().join("worker.log"),
    );
    wait_master(ui, "worker", |j| j["aliveworkers"] == 1).await;
    let worker_secs = t1.elapsed().as_secs_f64();

    // The kernel, through the gateway's local backend, with the fixture kernelspec's env.
    let spec = KernelSpec::load(&workspace().join("tests/fixtures/kernels/spark_python_local"))
        .expect("fixture kernelspec");
    assert_eq!(
        spec.backend,
        kernel_launcher::BackendRef::ProcessProxy(
            "enterprise_gateway.services.processproxies.processproxy.LocalProcessProxy".into()
        )
    );
    let backend = LocalResourceManager::new(LocalConfig {
        runtime_dir: tmp.path().join("runtime"),
        log_dir: tmp.path().join("logs"),
        ip: "127.0.0.1".into(),
        search_path: vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")],
    });
    let mut env = base_env.clone();
    env.extend(spec.env.clone());
    env.insert("SPARK_MASTER_URL".into(), master_url.clone());
    let kernel_id = uuid::Uuid::new_v4().to_string();
    env.insert("KERNEL_ID".into(), kernel_id.clone());
    let t2 = Instant::now();
    let kernel = backend
        .launch(LaunchRequest {
            kernel_id,
            spec,
            env,
            cwd: Some(tmp.path().to_path_buf()),
            port_range: PortRange::ANY,
            timeout: 60 * SECOND,
            previous: None,
            username: "alice".into(),
            run_as: None,
            placement: Default::default(),
        })
        .await
        .expect("kernel launch");
    let mut client = KernelClient::connect(&kernel.connection, &SocketOptions::default())
        .await
        .expect("connect");
    assert_eq!(
        client.kernel_info(60 * SECOND).await.expect("info").status,
        "ok"
    );
    let kernel_secs = t2.elapsed().as_secs_f64();

    let local_dir = tmp.path().join("driver-local");
    let session_code = format!(
        r#"
import os, time
t = time.time()
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master(os.environ["SPARK_MASTER_URL"]).appName("eg-rs-spark-test")
         .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.executor.memory", "512m").config("spark.cores.max", "1")
         .config("spark.ui.enabled", "false").config("spark.local.dir", {local_dir:?})
         .getOrCreate())
print("SESSION", round(time.time() - t, 2), spark.sparkContext.master)
"#,
        local_dir = local_dir.display().to_string()
    );
    let session = client
        .execute(&session_code, 180 * SECOND)
        .await
        .expect("session cell");
    assert!(session.error.is_none(), "{:?}", session.error);
    let session_line = session
        .stdout
        .lines()
        .find(|l| l.starts_with("SESSION"))
        .unwrap_or_default()
        .to_owned();
    assert!(session_line.ends_with(&master_url), "{}", session.stdout);

    let job = client
        .execute(
            "import time\nt = time.time()\nr = spark.range(1000).selectExpr('sum(id)').collect()[0][0]\nprint('RESULT', r, round(time.time() - t, 2))\n",
            120 * SECOND,
        )
        .await
        .expect("job cell");
    assert!(job.error.is_none(), "{:?}", job.error);
    let result_line = job
        .stdout
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_default()
        .to_owned();
    let mut fields = result_line.split_whitespace();
    assert_eq!(fields.nth(1), Some("499500"), "{}", job.stdout);
    let app_seen = master_json(ui).await.is_some_and(|j| {
        j["activeapps"]
            .as_array()
            .is_some_and(|a| a.iter().any(|app| app["name"] == "eg-rs-spark-test"))
    });
    assert!(app_seen, "the master lists the kernel's application");

    let stop = client
        .execute("spark.stop()", 60 * SECOND)
        .await
        .expect("stop cell");
    assert!(stop.error.is_none(), "{:?}", stop.error);
    let _ = client.shutdown(false, 10 * SECOND).await;
    drop(client);
    let state = kernel
        .process
        .terminate(10 * SECOND)
        .await
        .expect("terminate");
    assert!(matches!(state, ProcessState::Exited { .. }), "{state:?}");
    kernel.process.cleanup(false).await;
    worker.stop().await;
    master.stop().await;
    eprintln!(
        "spark timings: master ALIVE {master_secs:.1} s, worker registered +{worker_secs:.1} s, \
         kernel ready {kernel_secs:.1} s, session / first job (s, sum): {session_line} / {result_line}"
    );
}
