//! Tests of the YARN RM emulator, the stand-in `spark-submit`, and the
//! `resource_managers::yarn` client against it (plus yarn-api-client, the Python library EG uses).

mod backend;
mod client;
mod gp_yarn_spec;
mod python;
mod rest;
mod spark;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use resource_managers::yarn::{Auth, YarnClient, YarnClientConfig};
use tests::yarn::{EmulatorConfig, YarnEmulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback address with a free port.
pub(crate) fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A fast emulator config for tests.
pub(crate) fn fast_config() -> EmulatorConfig {
    EmulatorConfig {
        transition_delay: Duration::from_millis(5),
        kill_grace: Duration::from_millis(200),
        ..EmulatorConfig::default()
    }
}

/// A client of `emu`'s RM(s) as user `alice`, polling fast.
pub(crate) fn client_for(urls: &[String]) -> YarnClient {
    let mut config = YarnClientConfig::from_endpoints(&urls[0], urls.get(1).map(String::as_str))
        .with_auth(Auth::Simple {
            user: "alice".into(),
        });
    config.poll_interval = Duration::from_millis(50);
    config.max_poll_attempts = 100;
    YarnClient::new(config).expect("client")
}

/// A temp dir holding `yarn-site.xml` for the given RM web addresses (HA when more than one),
/// and the AM scripts the tests submit.
pub(crate) struct Workdir {
    pub(crate) dir: tempfile::TempDir,
}

impl Workdir {
    pub(crate) fn new(rm_urls: &[String]) -> Workdir {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut props = String::new();
        let strip = |u: &String| u.trim_start_matches("http://").to_owned();
        if rm_urls.len() == 1 {
            props.push_str(&format!(
                "<property><name>yarn.resourcemanager.webapp.address</name><value>{}</value></property>\n",
                strip(&rm_urls[0])
            ));
        } else {
            let ids: Vec<String> = (1..=rm_urls.len()).map(|i| format!("rm{i}")).collect();
            props.push_str(&format!(
                "<property><name>yarn.resourcemanager.ha.rm-ids</name><value>{}</value></property>\n",
                ids.join(",")
            ));
            for (id, url) in ids.iter().zip(rm_urls) {
                props.push_str(&format!(
                    "<property><name>yarn.resourcemanager.webapp.address.{id}</name><value>{}</value></property>\n",
                    strip(url)
                ));
            }
        }
        std::fs::write(
            dir.path().join("yarn-site.xml"),
            format!("<?xml version=\"1.0\"?>\n<configuration>\n{props}</configuration>\n"),
        )
        .expect("yarn-site.xml");
        // The AM: waits for a release file (if given), writes its pid, exits with a chosen code.
        let script = "#!/bin/bash\n\
            echo \"am started $*\"\n\
            echo $$ > \"$PWD/am.pid\"\n\
            if [ -n \"$AM_IGNORE_TERM\" ]; then trap '' TERM; fi\n\
            sleep 300 &\n\
            echo $! > \"$1.child\"\n\
            while [ ! -e \"$1\" ]; do sleep 0.02; done\n\
            echo \"am stderr line\" >&2\n\
            exit \"${2:-0}\"\n";
        let path = dir.path().join("am.sh");
        std::fs::write(&path, script).expect("am.sh");
        let mut perm = std::fs::metadata(&path).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&path, perm).expect("chmod");
        Workdir { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn am_script(&self) -> PathBuf {
        self.path().join("am.sh")
    }

    /// A release-file path for one AM.
    pub(crate) fn release_file(&self, name: &str) -> PathBuf {
        self.path().join(format!("release-{name}"))
    }
}

/// Output of one stand-in `spark-submit` run.
pub(crate) struct SubmitOutput {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs the stand-in `spark-submit` with `HADOOP_CONF_DIR=<conf_dir>` (child env only).
pub(crate) async fn spark_submit(conf_dir: Option<&Path>, args: &[&str]) -> SubmitOutput {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_spark-submit"));
    cmd.args(args)
        .env_remove("YARN_CONF_DIR")
        .env_remove("HADOOP_CONF_DIR")
        .env_remove("YARN_EMULATOR_RM_URL")
        .env("HADOOP_USER_NAME", "alice")
        .kill_on_drop(true);
    if let Some(dir) = conf_dir {
        cmd.env("HADOOP_CONF_DIR", dir);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("spark-submit timed out")
        .expect("spark-submit runs");
    SubmitOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Submits `am.sh <release> <exit code>` as a kernel named `name`; returns the app id.
pub(crate) async fn submit_kernel(
    work: &Workdir,
    name: &str,
    tags: Option<&str>,
    exit_code: i32,
) -> String {
    submit_kernel_with(work, name, tags, exit_code, &[]).await
}

/// [`submit_kernel`] with extra `--conf k=v` settings.
pub(crate) async fn submit_kernel_with(
    work: &Workdir,
    name: &str,
    tags: Option<&str>,
    exit_code: i32,
    extra_conf: &[&str],
) -> String {
    let release = work.release_file(name);
    let mut args = vec![
        "--master".to_owned(),
        "yarn".into(),
        "--deploy-mode".into(),
        "cluster".into(),
        "--name".into(),
        name.into(),
        "--conf".into(),
        "spark.yarn.submit.waitAppCompletion=false".into(),
        "--conf".into(),
        "spark.yarn.maxAppAttempts=1".into(),
        "--conf".into(),
        "spark.yarn.appMasterEnv.KERNEL_ID=kernel-env-check".into(),
    ];
    if let Some(t) = tags {
        args.extend(["--conf".into(), format!("spark.yarn.tags={t}")]);
    }
    for c in extra_conf {
        args.extend(["--conf".into(), (*c).to_owned()]);
    }
    args.push(work.am_script().display().to_string());
    args.push(release.display().to_string());
    args.push(exit_code.to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = spark_submit(Some(work.path()), &refs).await;
    assert_eq!(out.code, Some(0), "spark-submit failed: {}", out.stderr);
    assert!(
        out.stderr.contains("Submitted application application_"),
        "{}",
        out.stderr
    );
    out.stdout.trim().to_owned()
}

/// A raw HTTP/1.1 exchange (no redirect following, no cookie jar), to check exact answers.
pub(crate) struct Raw {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Raw {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub(crate) async fn raw(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<Raw> {
    let rest = url.strip_prefix("http://").context("http only")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no header end in {text}")
    };
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    Ok(Raw {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Ends a test: no app may still be running; after stopping, no AM process may be left.
pub(crate) async fn finish(emu: YarnEmulator) {
    let running = emu.running_apps();
    assert!(
        running.is_empty(),
        "apps still running at the end of the test: {running:?}"
    );
    let probe = emu.process_groups();
    emu.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let alive = probe
            .iter()
            .copied()
            .filter(|p| YarnEmulator::process_group_alive(*p))
            .collect::<Vec<_>>();
        if alive.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "process groups left: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a pid is alive (and not a zombie).
pub(crate) fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Reads a pid file written by the AM script, waiting for it.
pub(crate) async fn read_pid(path: &Path) -> i32 {
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no pid in {}", path.display());
}

/// Starts an emulator with one RM and the fast config.
pub(crate) async fn start_one() -> (YarnEmulator, Workdir) {
    let emu = YarnEmulator::start_with(fast_config(), &[any_port()])
        .await
        .expect("emulator");
    let work = Workdir::new(&[emu.url()]);
    (emu, work)
}

/// Current time in ms, truncated to whole seconds like EG does.
pub(crate) fn launch_start_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    i64::try_from(now.as_secs()).expect("secs") * 1000
}

/// Runs `time.sleep(30)` in the kernel, interrupts it through the backend after a second, checks
/// the cell ended in `KeyboardInterrupt`, and hands the client back.
pub(crate) async fn interrupt_a_sleeping_cell(
    mut client: jupyter_protocol::KernelClient,
    process: &dyn resource_managers::KernelProcess,
) -> jupyter_protocol::KernelClient {
    let second = Duration::from_secs(1);
    let running = tokio::spawn(async move {
        let outcome = client
            .execute("import time; time.sleep(30)", 60 * second)
            .await;
        (client, outcome)
    });
    tokio::time::sleep(second).await;
    process.interrupt().await.expect("interrupt");
    let (client, outcome) = tokio::time::timeout(20 * second, running)
        .await
        .expect("interrupted in time")
        .expect("join");
    assert_eq!(
        outcome
            .expect("execute reply")
            .error
            .map(|e| e.ename)
            .as_deref(),
        Some("KeyboardInterrupt")
    );
    client
}
