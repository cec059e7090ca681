//! The gateway binary with the kubernetes backend against the API-server emulator: GP's own
//! kernelspec (`jupyter-k8s-spec install`) through the REST API — a bad `KERNEL_*` value is a 400
//! naming it, an unschedulable pod a 503 with the scheduler's reason, a kernel starts (GP's
//! launch_kubernetes.py creates its pod in its own namespace) and its DELETE removes pod and
//! namespace.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kubernetes_kernel_through_the_gateway() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let venv = venv()?;
    // The kernel image: GP's assembled launch_ipykernel.py from the venv.
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
        token: Some("gw-token".into()),
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
             users:\n- name: gw\n  user: {{token: gw-token}}\ncontexts:\n- name: emu\n  context: {{cluster: emu, user: gw}}\n",
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
    let deadline = Instant::now() + Duration::from_secs(10);
    // The emulator's kubelet kills a deleted pod's processes as a kubelet does, after the API
    // object is gone, so the processes are waited for too.
    while !emu.pods().is_empty()
        || emu.namespaces().contains(&format!("bob-{id}"))
        || !emu.live_process_groups().is_empty()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "left: {:?} {:?} {:?}",
            emu.pods(),
            emu.namespaces(),
            emu.live_process_groups()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("kubernetes kernel through the gateway: started in {took:?}");
    drop(gateway);
    emu.stop().await;
    Ok(())
}
