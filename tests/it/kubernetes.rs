//! The kubernetes backend and Enterprise Gateway against the API-server emulator, both with GP's
//! own kernelspec (`jupyter-k8s-spec install`) and its launch_kubernetes.py and kernel-pod.yaml.j2:
//!
//! * our gateway binary through the REST API — a bad `KERNEL_*` value is a 400 naming it, an
//!   unschedulable pod a 503 with the scheduler's reason, a kernel starts (GP's
//!   launch_kubernetes.py creates its pod in its own namespace) and its DELETE removes pod and
//!   namespace;
//! * Enterprise Gateway 3.3.0's own `KubernetesProcessProxy`, unchanged, configured in-cluster as
//!   in its Helm chart: it starts, executes, interrupts and stops a kernel through the emulator
//!   (namespace and RoleBinding created and removed, pod gone). EG's module calls
//!   `load_incluster_config()` at import, which reads the service account from the fixed path
//!   `/var/run/secrets/kubernetes.io/serviceaccount/`; EG runs in a private mount namespace
//!   (`unshare --mount`) where an overlay on `/run` holds the emulator's token and CA there, so
//!   nothing on the host is written.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::json;
use tests::kubernetes::{EmulatorConfig, Image, K8sEmulator};

use crate::support::{Gateway, GatewayConfig, Impl, http_request, venv};

fn post_kernel(port: u16, env: serde_json::Value) -> Result<crate::support::HttpResponse> {
    let body = json!({"name": "k8s_python", "env": env});
    http_request(
        port,
        "POST",
        "/api/kernels",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// The emulator's bearer token.
const TOKEN: &str = "gw-token";

/// The emulator (TLS, [`TOKEN`]) with the kernel image `kernel-py` (GP's assembled
/// launch_ipykernel.py from the venv), a kubeconfig for it, and GP's kernelspec `k8s_python`
/// under `prefix/share/jupyter`.
struct Cluster {
    dir: tempfile::TempDir,
    emu: K8sEmulator,
    kubeconfig: std::path::PathBuf,
    prefix: std::path::PathBuf,
}

impl Cluster {
    async fn start() -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let venv = venv()?;
        let image_dir = dir.path().join("image");
        let status = std::process::Command::new(venv.join("bin/jupyter-ssh-spec"))
            .arg("install")
            .arg(format!("--prefix={}", image_dir.display()))
            .arg("--kernel-name=image_launchers")
            .output()?;
        anyhow::ensure!(status.status.success(), "jupyter-ssh-spec install failed");
        let launcher =
            image_dir.join("share/jupyter/kernels/image_launchers/scripts/launch_ipykernel.py");
        let bootstrap = dir.path().join("bootstrap-kernel.sh");
        std::fs::write(
            &bootstrap,
            format!(
                "#!/bin/bash\nexec {} {} --kernel-id \"$KERNEL_ID\" --port-range \"${{PORT_RANGE:-0..0}}\" \
                 --response-address \"$RESPONSE_ADDRESS\" --public-key \"$PUBLIC_KEY\" --spark-context-initialization-mode none\n",
                venv.join("bin/python").display(),
                launcher.display()
            ),
        )?;
        let image = Image {
            entrypoint: vec!["/bin/bash".into(), bootstrap.display().to_string()],
            ..Image::default()
        };
        let config = EmulatorConfig {
            token: Some(TOKEN.into()),
            tls: true,
            images: [("kernel-py".to_owned(), image)].into_iter().collect(),
            ..EmulatorConfig::default()
        };
        let emu = K8sEmulator::start(config, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let kubeconfig = dir.path().join("kubeconfig");
        let ca = base64::engine::general_purpose::STANDARD.encode(emu.ca_pem().context("tls")?);
        std::fs::write(
            &kubeconfig,
            format!(
                "current-context: emu\nclusters:\n- name: emu\n  cluster: {{server: '{}', certificate-authority-data: {ca}}}\n\
                 users:\n- name: gw\n  user: {{token: {TOKEN}}}\ncontexts:\n- name: emu\n  context: {{cluster: emu, user: gw}}\n",
                emu.url()
            ),
        )?;
        let prefix = dir.path().join("prefix");
        let out = std::process::Command::new(venv.join("bin/jupyter-k8s-spec"))
            .arg("install")
            .arg(format!("--prefix={}", prefix.display()))
            .arg("--kernel-name=k8s_python")
            .arg("--image-name=kernel-py")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "jupyter-k8s-spec install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Cluster {
            dir,
            emu,
            kubeconfig,
            prefix,
        })
    }

    /// Waits (bounded) until no pod, no namespace `namespace`, no RoleBinding and no container
    /// process is left. The emulator's kubelet kills a deleted pod's processes as a kubelet does,
    /// after the API object is gone, so the processes are waited for too.
    async fn await_nothing_left(&self, namespace: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pods = self.emu.pods();
            let ns_left = self.emu.namespaces().iter().any(|n| n == namespace);
            let bindings = self.emu.objects("rolebindings");
            let live = self.emu.live_process_groups();
            if pods.is_empty() && !ns_left && bindings.is_empty() && live.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "left: pods {pods:?}, namespace {namespace} {ns_left}, rolebindings {bindings:?}, \
                 process groups {live:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kubernetes_kernel_through_the_gateway() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (emu, kubeconfig, prefix) = (&cluster.emu, &cluster.kubeconfig, &cluster.prefix);

    let gateway = tokio::task::block_in_place(|| {
        Gateway::start(
            Impl::Ours,
            &GatewayConfig {
                jupyter_path: vec![prefix.join("share/jupyter")],
                env: vec![
                    ("KUBECONFIG".into(), kubeconfig.display().to_string()),
                    ("EG_KERNEL_LAUNCH_TIMEOUT".into(), "60".into()),
                ],
                args: Vec::new(),
            },
        )
    })?;
    let port = gateway.port;

    // A bad value is the client's fault: 400 naming the variable; nothing reaches the API.
    let bad = tokio::task::block_in_place(|| post_kernel(port, json!({"KERNEL_CPUS": "lots"})))?;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("KERNEL_CPUS"), "{}", bad.text());
    // No room for the pod: 503 with the scheduler's reason, within a second or two.
    let started = Instant::now();
    let full = tokio::task::block_in_place(|| post_kernel(port, json!({"KERNEL_CPUS": "64"})))?;
    assert_eq!(full.status, 503, "{}", full.text());
    assert!(full.text().contains("Insufficient cpu"), "{}", full.text());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(emu.pods().is_empty(), "{:?}", emu.pods());

    // A kernel: GP's launcher creates the pod in its own namespace.
    let started = Instant::now();
    let created =
        tokio::task::block_in_place(|| post_kernel(port, json!({"KERNEL_USERNAME": "bob"})))?;
    assert_eq!(created.status, 201, "{}", created.text());
    let took = started.elapsed();
    let id = created.json()["id"].as_str().context("id")?.to_owned();
    let pods = emu.pods();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].name, format!("bob-{id}"));
    assert_eq!(pods[0].namespace, format!("bob-{id}"));
    assert_eq!(pods[0].phase(), "Running");
    let gone = tokio::task::block_in_place(|| {
        http_request(port, "DELETE", &format!("/api/kernels/{id}"), &[], b"")
    })?;
    assert_eq!(gone.status, 204, "{}", gone.text());
    cluster.await_nothing_left(&format!("bob-{id}")).await?;
    println!("kubernetes kernel through the gateway: started in {took:?}");
    drop(gateway);
    cluster.emu.stop().await;
    Ok(())
}

/// Writes EG's kernelspec `k8s_python_eg` beside GP's: the same launch_kubernetes.py and
/// kernel-pod.yaml.j2 (GP's `scripts/`, linked), with EG's `process_proxy` metadata for its
/// `KubernetesProcessProxy` in place of GP's `kernel_provisioner`. EG 3.3.0 fills no
/// `{transport_encryption}`, so that argument pair is left out.
fn eg_kernelspec(prefix: &std::path::Path) -> Result<()> {
    let kernels = prefix.join("share/jupyter/kernels");
    let gp = kernels.join("k8s_python");
    let eg = kernels.join("k8s_python_eg");
    std::fs::create_dir_all(&eg)?;
    std::os::unix::fs::symlink(gp.join("scripts"), eg.join("scripts"))?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gp.join("kernel.json"))?)?;
    let argv: Vec<serde_json::Value> = spec["argv"]
        .as_array()
        .context("GP's argv")?
        .iter()
        .map(|a| {
            let text = a.as_str().unwrap_or_default();
            json!(text.replace("/kernels/k8s_python/", "/kernels/k8s_python_eg/"))
        })
        .collect();
    let mut kept = Vec::new();
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--transport-encryption" {
            it.next();
        } else {
            kept.push(arg);
        }
    }
    spec["argv"] = json!(kept);
    spec["display_name"] = json!("Kubernetes Python (EG)");
    spec["metadata"] = json!({"process_proxy": {
        "class_name": "enterprise_gateway.services.processproxies.k8s.KubernetesProcessProxy",
        "config": {"image_name": "kernel-py"}}});
    std::fs::write(eg.join("kernel.json"), spec.to_string())?;
    Ok(())
}

/// The shell step run inside EG's private mount namespace: an overlay on `/run` (upper and work
/// dirs in the test's temp dir), the service-account dir bound at the in-cluster path, then EG.
const IN_CLUSTER_SHIM: &str = r#"set -e
run="$1"; upper="$2"; work="$3"; account="$4"; shift 4
mount -t overlay overlay -o "lowerdir=$run,upperdir=$upper,workdir=$work" "$run"
mkdir -p "$run/secrets/kubernetes.io/serviceaccount"
mount --bind "$account" "$run/secrets/kubernetes.io/serviceaccount"
exec "$@"
"#;

/// Enterprise Gateway 3.3.0 configured in-cluster for the emulator, in a private mount namespace.
fn start_eg(cluster: &Cluster) -> Result<(crate::support::Proc, u16)> {
    use crate::support::{Proc, free_port, path_with, venv_eg};
    let d = cluster.dir.path();
    let account = d.join("serviceaccount");
    std::fs::create_dir_all(&account)?;
    std::fs::write(account.join("token"), TOKEN)?;
    std::fs::write(account.join("ca.crt"), cluster.emu.ca_pem().context("tls")?)?;
    std::fs::write(account.join("namespace"), "default")?;
    let (upper, work) = (d.join("run-upper"), d.join("run-work"));
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&work)?;
    // /var/run is a link to /run on Debian; the overlay goes on whatever it resolves to.
    let run = std::fs::canonicalize("/var/run")?;
    let port = free_port()?;
    let api_port = cluster
        .emu
        .url()
        .rsplit(':')
        .next()
        .context("the emulator's port")?
        .to_owned();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private"]);
    if !nix::unistd::Uid::effective().is_root() {
        cmd.arg("--map-root-user");
    }
    cmd.args(["/bin/sh", "-c", IN_CLUSTER_SHIM, "in-cluster"])
        .arg(&run)
        .arg(&upper)
        .arg(&work)
        .arg(&account)
        .arg(venv_eg()?.join("bin/jupyter-enterprisegateway"))
        .arg("--ip=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--port_retries=0")
        .current_dir(d);
    crate::support::clear_inherited_config(&mut cmd);
    for sub in ["config", "data", "runtime"] {
        std::fs::create_dir_all(d.join("eg").join(sub))?;
    }
    cmd.env_remove("KUBECONFIG")
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", api_port)
        .env("JUPYTER_PATH", cluster.prefix.join("share/jupyter"))
        .env("PATH", path_with(&[&venv()?.join("bin")]))
        .env("JUPYTER_CONFIG_DIR", d.join("eg/config"))
        .env("JUPYTER_DATA_DIR", d.join("eg/data"))
        .env("JUPYTER_RUNTIME_DIR", d.join("eg/runtime"))
        .env("EG_LIST_KERNELS", "True")
        .env("EG_UNAUTHORIZED_USERS", "nobody")
        .env("EG_RESPONSE_IP", "127.0.0.1")
        .env("EG_RESPONSE_PORT", free_port()?.to_string())
        .env("EG_RESPONSE_PORT_RETRIES", "0")
        .env("EG_KERNEL_LAUNCH_TIMEOUT", "60")
        .env("EG_KERNEL_LOG_DIR", d)
        .env("EG_POD_TEMPLATE_DIR", d)
        .env("PYTHONUNBUFFERED", "1");
    let proc = Proc::spawn(
        "Enterprise Gateway 3.3.0 (in-cluster)",
        cmd,
        &d.join("eg.log"),
        Some(crate::support::GATEWAY_READY),
        Duration::from_secs(60),
    )?;
    Ok((proc, port))
}

/// Runs the kernel driver (tests/fixtures/docker_driver.py) against EG; its output.
fn driver(dir: &std::path::Path, port: u16, args: &[&str], log: &str) -> Result<String> {
    let mut cmd = std::process::Command::new(venv()?.join("bin/python"));
    cmd.arg(crate::support::fixture("docker_driver.py"))
        .arg(args[0])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("-")
        .args(&args[1..])
        .env("PYTHONUNBUFFERED", "1");
    let (status, output) =
        crate::support::run_bounded(log, cmd, &dir.join(log), Duration::from_secs(120))?;
    anyhow::ensure!(status.success(), "{log} failed ({status}):\n{output}");
    Ok(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kubernetes_eg_process_proxy_through_the_emulator() -> Result<()> {
    let cluster = Cluster::start().await?;
    eg_kernelspec(&cluster.prefix)?;
    let (mut eg, port) = start_eg(&cluster)?;
    let d = cluster.dir.path().to_path_buf();
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| {
        driver(
            &d,
            port,
            &["start", "k8s_python_eg", r#"{"KERNEL_USERNAME": "bob"}"#],
            "eg-start.log",
        )
    })
    .with_context(|| format!("EG's log:\n{}", eg.log_tail(40)))?;
    let took = started.elapsed();
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("KERNEL "))
        .context("the driver printed no kernel id")?
        .trim()
        .to_owned();
    anyhow::ensure!(out.contains("INTERRUPTED"), "{out}");
    // EG made the kernel's namespace, its RoleBinding to EG_KERNEL_CLUSTER_ROLE (cluster-admin
    // by default) and, through launch_kubernetes.py, the pod from GP's template.
    let name = format!("bob-{id}");
    let pods = cluster.emu.pods();
    anyhow::ensure!(
        pods.len() == 1 && pods[0].name == name && pods[0].namespace == name,
        "{pods:?}"
    );
    assert_eq!(pods[0].phase(), "Running");
    let bindings = cluster.emu.objects("rolebindings");
    anyhow::ensure!(
        bindings.len() == 1
            && bindings[0].0 == name
            && bindings[0].2["roleRef"]["name"] == "cluster-admin",
        "{bindings:?}"
    );
    tokio::task::block_in_place(|| driver(&d, port, &["stop", &id], "eg-stop.log"))?;
    cluster.await_nothing_left(&name).await?;
    // Its shutdown read the API's answers without complaint (the client version matters:
    // requirements/eg-itests.txt).
    let log = eg.log_text();
    anyhow::ensure!(!log.contains("Error occurred"), "EG's log:\n{log}");
    // The service account went to the overlay in the test's temp dir, not to the host's /run.
    anyhow::ensure!(
        d.join("run-upper/secrets/kubernetes.io/serviceaccount")
            .is_dir(),
        "the overlay holds the service-account mount point"
    );
    println!("Enterprise Gateway's KubernetesProcessProxy: kernel started and used in {took:?}");
    eg.mark_passed();
    drop(eg);
    cluster.emu.stop().await;
    Ok(())
}
