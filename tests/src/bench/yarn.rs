//! The cluster the `*_yarn` workloads launch kernels on: this crate's `yarn-emulator` binary (a
//! YARN ResourceManager's REST API plus a NodeManager that runs each application master as a
//! local process group), started once per run as a child of the benchmark.
//!
//! The `bench_python_yarn` kernelspec runs this crate's stand-in `spark-submit` (the real one
//! speaks Hadoop IPC, which the emulator does not), which finds the RM in the `yarn-site.xml` of
//! the kernelspec's `HADOOP_CONF_DIR` and submits an application named after the kernel id whose
//! AM is gateway_provisioners' `launch_ipykernel.py`. Both gateways get the RM as
//! `EG_YARN_ENDPOINT`, find the application by name, read its `amHostHttpAddress`, wait for the
//! launcher's callback, and on shutdown end it through the RM if it does not end by itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::client;
use super::proc;
use test_support::proc::Proc;

/// The line the emulator prints once its RMs serve.
const READY_LINE: &str = "READY";

/// How long the emulator may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What a gateway needs to reach the emulated cluster.
#[derive(Debug, Clone)]
pub(crate) struct YarnAccess {
    /// The RM's port on 127.0.0.1.
    pub(crate) port: u16,
}

impl YarnAccess {
    /// The RM endpoint in the form EG documents (`http://host:8088/ws/v1/cluster`; both gateways
    /// use only its scheme, host and port).
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/ws/v1/cluster", self.port)
    }

    /// Environment for a gateway: read by both (EG's default would be yarn-site.xml).
    pub(crate) fn gateway_env(&self) -> Vec<(&'static str, String)> {
        vec![("EG_YARN_ENDPOINT", self.endpoint())]
    }
}

/// The running emulator; stopped when dropped (SIGTERM: it kills every AM process group; then
/// SIGKILL for anything left).
#[derive(Debug)]
pub(crate) struct YarnCluster {
    _guard: Proc,
    access: YarnAccess,
}

impl YarnCluster {
    /// Starts `<bin_dir>/yarn-emulator` with one RM on a free port of 127.0.0.1 and writes
    /// `conf_dir/yarn-site.xml` naming it. `tmp` becomes the emulator's (and so its AMs')
    /// `TMPDIR`.
    pub(crate) async fn start(
        bin_dir: &Path,
        conf_dir: &Path,
        log: PathBuf,
        tmp: &Path,
    ) -> Result<YarnCluster> {
        let program = bin_dir.join("yarn-emulator");
        for needed in [&program, &bin_dir.join("spark-submit")] {
            if !needed.exists() {
                bail!(
                    "{} is missing; build it: cargo build --release -p tests --bins",
                    needed.display()
                );
            }
        }
        let mut cmd = std::process::Command::new(&program);
        cmd.args(["--addr", "127.0.0.1:0"]).env("TMPDIR", tmp);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("HADOOP_") || k.starts_with("YARN_") || k.starts_with("SPARK_") {
                cmd.env_remove(&key);
            }
        }
        let guard = tokio::task::spawn_blocking({
            let log = log.clone();
            move || {
                proc::spawn(
                    "yarn-emulator",
                    cmd,
                    Some(&log),
                    Some(READY_LINE),
                    START_TIMEOUT,
                )
            }
        })
        .await??;
        let printed = std::fs::read_to_string(&log).unwrap_or_default();
        let port = rm_port(&printed)
            .with_context(|| format!("the emulator printed no `RM 0 <url>` line:\n{printed}"))?;
        std::fs::create_dir_all(conf_dir)?;
        std::fs::write(conf_dir.join("yarn-site.xml"), yarn_site(port))?;
        Ok(YarnCluster {
            _guard: guard,
            access: YarnAccess { port },
        })
    }

    /// How gateways and checks reach the RM.
    pub(crate) fn access(&self) -> YarnAccess {
        self.access.clone()
    }
}

/// The port of the first RM in the emulator's `RM 0 http://127.0.0.1:<port>` line.
fn rm_port(printed: &str) -> Option<u16> {
    printed.lines().find_map(|line| {
        let url = line.strip_prefix("RM 0 ")?.trim();
        url.strip_prefix("http://127.0.0.1:")?.parse().ok()
    })
}

/// A minimal `yarn-site.xml` naming the RM's web address (what `spark-submit` reads).
fn yarn_site(port: u16) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<configuration>\n  <property>\n    \
         <name>yarn.resourcemanager.webapp.address</name>\n    <value>127.0.0.1:{port}</value>\n  \
         </property>\n</configuration>\n"
    )
}

/// One application in `GET /ws/v1/cluster/apps`.
#[derive(Debug, Deserialize)]
struct App {
    id: String,
    state: String,
    #[serde(rename = "amHostHttpAddress", default)]
    am_host: Option<String>,
}

/// The applications named `kernel_id` (both gateways' `--name {kernel_id}`).
async fn apps_named(access: &YarnAccess, kernel_id: &str) -> Result<Vec<App>> {
    #[derive(Deserialize)]
    struct Apps {
        app: Vec<App>,
    }
    #[derive(Deserialize)]
    struct Listing {
        apps: Option<Apps>,
    }
    let path = format!("/ws/v1/cluster/apps?name={kernel_id}");
    let (status, body) = client::http(access.port, "GET", &path, None).await?;
    if status != 200 {
        bail!(
            "GET {path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let listing: Listing = serde_json::from_slice(&body).context("the RM's apps JSON")?;
    Ok(listing.apps.map(|a| a.app).unwrap_or_default())
}

/// Checks that the started kernel is a YARN application: exactly one application carries its id
/// as name, it is RUNNING, and it was placed on a node. Returns the application id.
pub(crate) async fn check_app_running(access: &YarnAccess, kernel_id: &str) -> Result<String> {
    let apps = apps_named(access, kernel_id).await?;
    match apps.as_slice() {
        [app]
            if app.state == "RUNNING" && app.am_host.as_deref().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(app.id.clone())
        }
        _ => {
            bail!("expected one RUNNING YARN application named {kernel_id}, the RM lists {apps:?}")
        }
    }
}

/// Checks the `CONTAINER_ID` a kernel printed: the NodeManager sets it for the application
/// master, `container_<cluster timestamp>_<app sequence>_<attempt>_<container>`, so it must
/// continue the application id `application_<cluster timestamp>_<app sequence>`.
pub(crate) fn check_container(printed: &str, app_id: &str) -> Result<()> {
    let container = printed.trim();
    let expected = app_id
        .strip_prefix("application_")
        .map(|rest| format!("container_{rest}_"));
    match expected {
        Some(prefix) if container.starts_with(&prefix) => Ok(()),
        _ => bail!(
            "the kernel does not run in a container of {app_id} (its CONTAINER_ID is `{container}`)"
        ),
    }
}

/// How long a kernel's application may take to reach a final state after its DELETE returned.
const END_GRACE: Duration = Duration::from_secs(10);

/// Waits until every application named `kernel_id` is FINISHED, KILLED or FAILED.
pub(crate) async fn await_app_ended(access: &YarnAccess, kernel_id: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + END_GRACE;
    loop {
        let apps = apps_named(access, kernel_id).await?;
        let live: Vec<&App> = apps
            .iter()
            .filter(|a| !matches!(a.state.as_str(), "FINISHED" | "KILLED" | "FAILED"))
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let shown: Vec<String> = live
                .iter()
                .map(|a| format!("{} {}", a.id, a.state))
                .collect();
            bail!(
                "kernel {kernel_id}'s YARN application is still live {END_GRACE:?} after its \
                 shutdown: {shown:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After a YARN kernel's DELETE: its application ended and none of its processes is left.
pub(crate) async fn await_kernel_gone(access: &YarnAccess, kernel_id: &str) -> Result<()> {
    let ended = await_app_ended(access, kernel_id).await;
    let gone = proc::await_kernel_gone(kernel_id).await;
    ended.and(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rm_port_from_the_emulator_output() {
        assert_eq!(rm_port("RM 0 http://127.0.0.1:40123\nREADY\n"), Some(40123));
        assert_eq!(rm_port("READY\n"), None);
        assert_eq!(rm_port("RM 1 http://127.0.0.1:5\n"), None);
        assert!(yarn_site(8088).contains("<value>127.0.0.1:8088</value>"));
    }

    #[test]
    fn container_must_belong_to_the_application() {
        let app = "application_1700000000000_0003";
        assert!(check_container("container_1700000000000_0003_01_000001\n", app).is_ok());
        for bad in [
            "",
            "container_1700000000000_0004_01_000001",
            "container_1700000000000_00031_01_000001",
        ] {
            assert!(check_container(bad, app).is_err(), "{bad}");
        }
        assert!(check_container("container_1_2_01_000001", "bogus").is_err());
    }
}
