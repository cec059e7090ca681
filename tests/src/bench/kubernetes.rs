//! The cluster the `*_kubernetes` workloads launch kernels on: this crate's `k8s-emulator` binary
//! (the Kubernetes API-server emulator of [`tests::kubernetes`], over TLS with a bearer token,
//! whose "kubelet" runs each pod's container as a local process group), started once per run as
//! a child of the benchmark.
//!
//! Both gateways get the `bench_python_k8s` kernelspec: gateway_provisioners'
//! `launch_kubernetes.py` and `kernel-pod.yaml.j2` (from `jupyter-k8s-spec install`, run from the
//! test venv) with EG's `KubernetesProcessProxy` metadata and the image `kernel-py`, whose
//! entrypoint runs GP's `launch_ipykernel.py` as elyra's `bootstrap-kernel.sh` does. Both are
//! configured in-cluster, as in EG's Helm chart: `KUBERNETES_SERVICE_HOST`/`_PORT` and the
//! service account at `/var/run/secrets/kubernetes.io/serviceaccount/`, which each gateway sees
//! in a private mount namespace of its own (`unshare --mount`, an overlay on `/run` whose upper
//! dir is in the gateway's temp dir), so nothing on the host is written. Neither shares the
//! namespace: each kernel gets one, with its RoleBinding, deleted with it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use resource_managers::kubernetes::client::{Kind, PODS};
use resource_managers::kubernetes::{ClusterConfig, KubeClient};

use super::proc;
use super::target::Spec;
use test_support::proc::Proc;

/// The kernelspec's name.
pub(crate) const SPEC_NAME: &str = "bench_python_k8s";

/// The kernel image the kernelspec names.
const IMAGE: &str = "kernel-py";

/// The emulator's bearer token.
const TOKEN: &str = "bench-token";

/// The line the emulator prints once it serves.
const READY_LINE: &str = "READY";

/// How long the emulator may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a kernel's pod may take to go after its DELETE returned.
const END_GRACE: Duration = Duration::from_secs(10);

/// Where GP's scripts are installed under the benchmark's temp dir (`jupyter-k8s-spec install
/// --prefix`); the kernelspec's argv names `launch_kubernetes.py` there.
fn gp_scripts(dir: &Path) -> PathBuf {
    dir.join("k8s-gp/share/jupyter/kernels/k8s_gp/scripts")
}

/// The kernelspec both gateways start: the test venv's interpreter runs GP's
/// `launch_kubernetes.py`, which renders GP's pod template and creates the pod.
pub(crate) fn spec(root: &Path, dir: &Path) -> Spec {
    let python = root.join(".venv/bin/python");
    let script = gp_scripts(dir).join("launch_kubernetes.py");
    let argv = [
        python.to_string_lossy().as_ref(),
        script.to_string_lossy().as_ref(),
        "--kernel-id",
        "{kernel_id}",
        "--port-range",
        "{port_range}",
        "--response-address",
        "{response_address}",
        "--public-key",
        "{public_key}",
        "--kernel-class-name",
        "ipykernel.ipkernel.IPythonKernel",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    Spec {
        name: SPEC_NAME,
        argv,
        metadata: serde_json::json!({"process_proxy": {
            "class_name": "enterprise_gateway.services.processproxies.k8s.KubernetesProcessProxy",
            "config": {"image_name": IMAGE},
        }}),
    }
}

/// The step run inside a gateway's private mount namespace: an overlay on `/run`, the service
/// account bound at the in-cluster path, then the gateway.
const IN_CLUSTER_SHIM: &str = r#"set -e
run="$1"; upper="$2"; work="$3"; account="$4"; shift 4
mount -t overlay overlay -o "lowerdir=$run,upperdir=$upper,workdir=$work" "$run"
mkdir -p "$run/secrets/kubernetes.io/serviceaccount"
mount --bind "$account" "$run/secrets/kubernetes.io/serviceaccount"
exec "$@"
"#;

/// What a gateway needs to reach the emulated cluster.
#[derive(Debug, Clone)]
pub(crate) struct K8sAccess {
    /// The API server's port on 127.0.0.1.
    pub(crate) port: u16,
    /// The service-account directory (`token`, `ca.crt`, `namespace`).
    account: PathBuf,
}

impl K8sAccess {
    /// Environment for a gateway (both read it, as in a pod).
    pub(crate) fn gateway_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
            ("KUBERNETES_SERVICE_PORT", self.port.to_string()),
        ]
    }

    /// `cmd` (program, arguments, environment changes, working directory) run in a private
    /// mount namespace where the service account is at the in-cluster path; the overlay's dirs
    /// go under `scratch`. The gateway keeps its process id (`unshare`, `sh` and `prlimit` exec).
    pub(crate) fn in_cluster(&self, cmd: &Command, scratch: &Path) -> Result<Command> {
        let (upper, work) = (scratch.join("run-upper"), scratch.join("run-work"));
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&work)?;
        // /var/run is a link to /run on Debian; the overlay goes on what it resolves to.
        let run = std::fs::canonicalize("/var/run").context("resolving /var/run")?;
        let mut wrapped = Command::new("unshare");
        wrapped.args(["--mount", "--propagation", "private"]);
        if !nix::unistd::Uid::effective().is_root() {
            wrapped.arg("--map-root-user");
        }
        wrapped
            .args(["/bin/sh", "-c", IN_CLUSTER_SHIM, "in-cluster"])
            .arg(run)
            .arg(upper)
            .arg(work)
            .arg(&self.account)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        Ok(wrapped)
    }

    /// A client of the API server, as the gateways see it.
    fn client(&self) -> Result<KubeClient> {
        let config = ClusterConfig::in_cluster("127.0.0.1", &self.port.to_string(), &self.account)?;
        Ok(KubeClient::new(&config, Duration::from_secs(10))?)
    }

    /// The pods labelled with `kernel_id` (both gateways' `kernel_id=<id>,component=kernel`).
    async fn pods_of(&self, kernel_id: &str) -> Result<Vec<serde_json::Value>> {
        let selector = format!("kernel_id={kernel_id},component=kernel");
        // Every namespace's pods (`/api/v1/pods`): each kernel has a namespace of its own.
        let all_namespaces = Kind {
            namespaced: false,
            ..PODS
        };
        let (pods, _) = self.client()?.list(all_namespaces, None, &selector).await?;
        Ok(pods)
    }
}

/// The running emulator; stopped when dropped (SIGTERM: it kills every container's process
/// group; then SIGKILL for anything left).
#[derive(Debug)]
pub(crate) struct K8sCluster {
    _guard: Proc,
    access: K8sAccess,
}

impl K8sCluster {
    /// Installs GP's Kubernetes scripts under `dir` (where [`spec`] expects them), writes the
    /// kernel image's entrypoint around `launcher_script` (GP's assembled `launch_ipykernel.py`),
    /// and starts `<bin_dir>/k8s-emulator` on a free port of 127.0.0.1 with TLS and a token.
    pub(crate) async fn start(
        root: &Path,
        bin_dir: &Path,
        dir: &Path,
        launcher_script: &str,
    ) -> Result<K8sCluster> {
        let program = bin_dir.join("k8s-emulator");
        if !program.exists() {
            bail!(
                "{} is missing; build it: cargo build --release -p tests --bins",
                program.display()
            );
        }
        let venv_bin = root.join(".venv/bin");
        let out = tokio::process::Command::new(venv_bin.join("jupyter-k8s-spec"))
            .arg("install")
            .arg(format!("--prefix={}", dir.join("k8s-gp").display()))
            .arg("--kernel-name=k8s_gp")
            .arg(format!("--image-name={IMAGE}"))
            .kill_on_drop(true)
            .output()
            .await
            .context("running jupyter-k8s-spec (cargo xtask setup installs it)")?;
        if !out.status.success() {
            bail!(
                "jupyter-k8s-spec install failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let bootstrap = dir.join("k8s-bootstrap-kernel.sh");
        std::fs::write(
            &bootstrap,
            format!(
                "#!/bin/bash\n# What elyra's bootstrap-kernel.sh does for KERNEL_LANGUAGE=python.\n\
                 exec {} {launcher_script} --kernel-id \"$KERNEL_ID\" \
                 --port-range \"${{PORT_RANGE:-0..0}}\" --response-address \"$RESPONSE_ADDRESS\" \
                 --public-key \"$PUBLIC_KEY\" --spark-context-initialization-mode none\n",
                venv_bin.join("python").display()
            ),
        )?;
        let account = dir.join("k8s-serviceaccount");
        std::fs::create_dir_all(&account)?;
        let ca = account.join("ca.crt");
        let mut path = OsString::from(&venv_bin);
        path.push(":/usr/bin:/bin");
        let mut cmd = Command::new(&program);
        cmd.args([
            "--addr",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--tls",
            "--ca-out",
        ])
        .arg(&ca)
        .arg("--image")
        .arg(format!("{IMAGE}=/bin/bash,{}", bootstrap.display()))
        .arg("--image-env")
        .arg(format!("{IMAGE}:TMPDIR={}", dir.join("tmp").display()))
        .env("PATH", path);
        let log = dir.join("logs/k8s-emulator.log");
        let guard = tokio::task::spawn_blocking({
            let log = log.clone();
            move || {
                proc::spawn(
                    "k8s-emulator",
                    cmd,
                    Some(&log),
                    Some(READY_LINE),
                    START_TIMEOUT,
                )
            }
        })
        .await??;
        let printed = std::fs::read_to_string(&log).unwrap_or_default();
        let port = api_port(&printed)
            .with_context(|| format!("the emulator printed no `URL <url>` line:\n{printed}"))?;
        std::fs::write(account.join("token"), TOKEN)?;
        std::fs::write(account.join("namespace"), "default")?;
        if !ca.is_file() {
            bail!("the emulator wrote no CA to {}", ca.display());
        }
        Ok(K8sCluster {
            _guard: guard,
            access: K8sAccess { port, account },
        })
    }

    /// How gateways and checks reach the API server.
    pub(crate) fn access(&self) -> K8sAccess {
        self.access.clone()
    }
}

/// The port in the emulator's `URL https://127.0.0.1:<port>` line.
fn api_port(printed: &str) -> Option<u16> {
    printed.lines().find_map(|line| {
        let url = line.strip_prefix("URL ")?.trim();
        url.strip_prefix("https://127.0.0.1:")?.parse().ok()
    })
}

/// Checks that the started kernel runs in a pod made for it: exactly one pod carries its labels,
/// it is Running, and the kernel's `HOSTNAME` (the kubelet sets it to the pod's name) is that pod.
pub(crate) async fn check_pod_running(
    access: &K8sAccess,
    kernel_id: &str,
    hostname: &str,
) -> Result<()> {
    let pods = access.pods_of(kernel_id).await?;
    let facts: Vec<(String, String)> = pods
        .iter()
        .map(|p| {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let phase = p["status"]["phase"].as_str().unwrap_or_default();
            (name.to_owned(), phase.to_owned())
        })
        .collect();
    match facts.as_slice() {
        [(name, phase)] if phase == "Running" && name == hostname.trim() => Ok(()),
        _ => bail!(
            "expected one Running pod for kernel {kernel_id} named as the kernel's HOSTNAME \
             `{}`, the API lists {facts:?}",
            hostname.trim()
        ),
    }
}

/// After a Kubernetes kernel's DELETE: its pod is gone and none of its processes is left.
pub(crate) async fn await_kernel_gone(access: &K8sAccess, kernel_id: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + END_GRACE;
    let pod_gone = loop {
        let pods = access.pods_of(kernel_id).await?;
        if pods.is_empty() {
            break Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let names: Vec<&str> = pods
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str())
                .collect();
            break Err(anyhow::anyhow!(
                "kernel {kernel_id}'s pod is still there {END_GRACE:?} after its shutdown: {names:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let gone = proc::await_kernel_gone(kernel_id).await;
    pod_gone.and(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_port_from_the_emulator_output() {
        assert_eq!(
            api_port("URL https://127.0.0.1:40123\nREADY\n"),
            Some(40123)
        );
        assert_eq!(api_port("READY\n"), None);
        assert_eq!(api_port("URL http://127.0.0.1:5\n"), None);
    }

    #[test]
    fn the_wrapped_command_keeps_program_arguments_and_environment() {
        let access = K8sAccess {
            port: 6443,
            account: PathBuf::from("/tmp/account"),
        };
        let scratch = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("/bin/gateway");
        cmd.args(["--ip", "127.0.0.1"])
            .env("A", "1")
            .env_remove("B")
            .current_dir("/tmp");
        let wrapped = access.in_cluster(&cmd, scratch.path()).expect("wrapped");
        assert_eq!(wrapped.get_program(), "unshare");
        let args: Vec<String> = wrapped
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args[args.len() - 3..],
            ["/bin/gateway", "--ip", "127.0.0.1"]
        );
        assert!(args.contains(&"/tmp/account".to_owned()));
        let envs: Vec<_> = wrapped.get_envs().collect();
        assert!(envs.contains(&("A".as_ref(), Some("1".as_ref()))));
        assert!(envs.contains(&("B".as_ref(), None)));
        assert_eq!(wrapped.get_current_dir(), Some(Path::new("/tmp")));
    }
}
