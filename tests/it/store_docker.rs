//! Docker kernels outlive their gateway: on a real engine (the harness of [`crate::docker`]),
//! a gateway with a SQLite kernel store, talking to the engine over a plain TCP `DOCKER_HOST` on
//! loopback, starts one kernel through EG's path (`launch_docker.py`) and one through the native
//! path; it is killed with SIGKILL and started again on the same store. Both kernels are
//! re-attached from their records (same id, same container, no second container), their state
//! is still there, and DELETE then removes each container.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;

use crate::docker::{Engine, build_image, driver, kernel_id, kernelspec};
use crate::persistence::listed;
use crate::support::{Gateway, GatewayConfig, Impl};

/// Runs `code` in kernel `id` through the persistence driver; its output must hold `expected`.
fn execute(
    dir: &std::path::Path,
    gateway: &Gateway,
    id: &str,
    code: &str,
    expected: &str,
) -> Result<()> {
    let out = crate::persistence::driver(
        dir,
        &gateway.url(),
        "-",
        &["exec", id, code, expected],
        &format!("exec-{id}.log"),
    )?;
    if !out.contains("OK:") {
        bail!("kernel {id}: {out}");
    }
    Ok(())
}

#[tokio::test]
async fn e2e_docker_kernels_reattached_after_kill_9() -> Result<()> {
    // Short: dockerd's and containerd's socket paths live under it.
    let dir = tempfile::Builder::new().prefix("dks").tempdir_in("/tmp")?;
    let d = dir.path();
    let mut engine = Engine::start(d)?;
    build_image(&engine, d)?;
    let share = d.join("share");
    kernelspec(&share, "docker_eg", "DockerProcessProxy", false)?;
    kernelspec(&share, "docker_native", "DockerProcessProxy", true)?;
    let config = GatewayConfig {
        jupyter_path: vec![share.clone()],
        env: vec![
            ("DOCKER_HOST".into(), engine.tcp_host()),
            // The restarted gateway listens on another port: the same name takes its kernels
            // back at once.
            ("EG_GATEWAY_ID".into(), "docker-store-test".into()),
            ("EG_DOCKER_NETWORK".into(), "host".into()),
            ("EG_KERNEL_LAUNCH_TIMEOUT".into(), "40".into()),
            (
                "EG_KERNEL_LOG_DIR".into(),
                d.join("kernel-logs").display().to_string(),
            ),
        ],
        args: vec![format!("--store={}", d.join("kernels.sqlite").display())],
    };

    let mut first = Gateway::start(Impl::Ours, &config)?;
    let env = r#"{"KERNEL_USERNAME": "alice"}"#;
    let mut kernels = Vec::new();
    for spec in ["docker_eg", "docker_native"] {
        let out = driver(
            d,
            &first,
            &["start", spec, env],
            &format!("{spec}-start.log"),
        )?;
        let id = kernel_id(&out)?;
        let containers = engine.containers_of(&id)?;
        assert_eq!(containers.len(), 1, "{spec}: one container: {containers:?}");
        // The driver left x = 7 in the kernel.
        kernels.push((spec, id, containers));
    }

    let killed = Instant::now();
    first.proc.signal(Signal::SIGKILL)?;
    first
        .proc
        .wait_exit(Duration::from_secs(10))
        .context("the gateway did not die")?;
    first.proc.mark_passed();
    drop(first);
    let mut second = Gateway::start(Impl::Ours, &config)?;
    println!("gateway back after {:.1?}", killed.elapsed());
    let mut ids: Vec<String> = kernels.iter().map(|(_, id, _)| id.clone()).collect();
    ids.sort();
    assert_eq!(listed(second.port)?, ids, "both kernels listed again");
    assert!(
        second.proc.log_text().contains("re-attached kernel"),
        "{}",
        second.proc.log_tail(30)
    );
    for (spec, id, containers) in &kernels {
        execute(d, &second, id, "print(x + 1)", "8")
            .with_context(|| format!("{spec}: the re-attached kernel"))?;
        assert_eq!(
            &engine.containers_of(id)?,
            containers,
            "{spec}: the same container, none started again"
        );
    }

    for (spec, id, _) in &kernels {
        driver(d, &second, &["stop", id], &format!("{spec}-stop.log"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !engine.containers_of(id)?.is_empty() {
            if Instant::now() > deadline {
                bail!("{spec}: kernel {id}'s container is still there after DELETE");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    second.proc.stop(Duration::from_secs(20));
    second.proc.mark_passed();
    engine.stop();
    Ok(())
}
