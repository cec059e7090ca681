//! `resource_managers::yarn::YarnClient` ⇄ emulator, with apps submitted by the stand-in
//! `spark-submit`.

use std::time::Duration;

use resource_managers::yarn::{AppState, Auth, YarnClient, YarnClientConfig, YarnError};
use tests::yarn::{EmulatorConfig, QueueSpec, RmAppState, StandbyStyle, YarnEmulator};

use crate::{
    Workdir, any_port, client_for, fast_config, finish, launch_start_ms, pid_alive, read_pid,
    start_one, submit_kernel,
};

const KERNEL: &str = "5f0c2a9e-8d1b-4a57-9c3e-2b6f7d8e9a01";

#[tokio::test]
async fn submitted_kernel_is_found_by_tag_and_walks_accepted_running_finished() {
    let (emu, work) = start_one().await;
    let client = client_for(&[emu.url()]);
    let start = launch_start_ms();
    emu.hold_new_apps(true);
    let id = submit_kernel(&work, KERNEL, Some(&KERNEL.to_uppercase()), 0).await;

    // Held for lack of capacity: ACCEPTED, not placed.
    let snap = emu
        .wait_for_state(&id, RmAppState::Accepted, Duration::from_secs(5))
        .await
        .expect("app");
    assert_eq!(snap.state, RmAppState::Accepted);
    let found = client
        .find_app_by_tag_or_name(KERNEL, start)
        .await
        .expect("find")
        .expect("found by tag");
    assert_eq!(found.id, id);
    assert_eq!(found.state, AppState::Accepted);
    assert_eq!(found.am_host(), None);
    assert_eq!(found.application_type, "SPARK");
    assert_eq!(found.user, "alice");
    assert!(
        found.tags().any(|t| t == KERNEL),
        "tags are lower-cased: {}",
        found.application_tags
    );
    // Not found when asked for apps started later.
    assert!(
        client
            .find_app_by_tag_or_name(KERNEL, start + 3_600_000)
            .await
            .expect("find")
            .is_none()
    );

    assert!(emu.release(&id));
    emu.wait_for_state(&id, RmAppState::Running, Duration::from_secs(5))
        .await;
    let app = client.app(&id).await.expect("app");
    assert_eq!(app.state, AppState::Running);
    assert_eq!(app.am_host(), Some("127.0.0.1"));
    assert_eq!(
        client.app_state(&id).await.expect("state"),
        AppState::Running
    );
    // The AM saw the environment from spark.yarn.appMasterEnv.* and its container id.
    let am_pid = read_pid(&emu_work_pid_file(&emu, &id)).await;
    let environ = std::fs::read(format!("/proc/{am_pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("KERNEL_ID=kernel-env-check"), "{environ}");
    assert!(environ.contains("CONTAINER_ID=container_"), "{environ}");

    std::fs::write(work.release_file(KERNEL), b"").expect("release");
    let done = emu
        .wait_for_state(&id, RmAppState::Finished, Duration::from_secs(5))
        .await
        .expect("app");
    assert_eq!(done.state, RmAppState::Finished);
    let app = client.app(&id).await.expect("app");
    assert_eq!(
        (app.state, app.final_status.as_str()),
        (AppState::Finished, "SUCCEEDED")
    );
    assert!(app.finished_time >= app.started_time);
    // A finished app is no longer "the kernel's app".
    assert!(
        client
            .find_app_by_tag_or_name(KERNEL, start)
            .await
            .expect("find")
            .is_none()
    );
    finish(emu).await;
}

/// The AM's working directory holds `am.pid` (written by the script).
fn emu_work_pid_file(emu: &YarnEmulator, id: &str) -> std::path::PathBuf {
    let pgid = emu
        .app(id)
        .and_then(|a| a.pgid)
        .expect("running app has a process group");
    let cwd = std::fs::read_link(format!("/proc/{pgid}/cwd")).expect("cwd of the AM");
    cwd.join("am.pid")
}

#[tokio::test]
async fn untagged_kernel_is_found_by_name_and_the_newest_id_wins() {
    let (emu, work) = start_one().await;
    let client = client_for(&[emu.url()]);
    let start = launch_start_ms();
    let first = submit_kernel(&work, &format!("spark-{KERNEL}"), None, 0).await;
    let second = submit_kernel(&work, &format!("retry-{KERNEL}"), None, 0).await;
    let _other = submit_kernel(&work, "someone-else", None, 0).await;
    let found = client
        .find_app_by_tag_or_name(KERNEL, start)
        .await
        .expect("find")
        .expect("found by name");
    assert_eq!(found.id, second, "newest of {first} and {second}");
    for app in emu.running_apps() {
        assert_eq!(client.kill(&app.id).await.expect("kill"), AppState::Killed);
    }
    finish(emu).await;
}

#[tokio::test]
async fn am_exiting_3_fails_the_app_with_diagnostics() {
    let (emu, work) = start_one().await;
    let client = client_for(&[emu.url()]);
    std::fs::write(work.release_file("k-fail"), b"").expect("pre-release");
    let id = submit_kernel(&work, "k-fail", None, 3).await;
    let snap = emu
        .wait_for_state(&id, RmAppState::Failed, Duration::from_secs(10))
        .await
        .expect("app");
    assert_eq!(snap.exit_code, Some(3));
    let app = client.app(&id).await.expect("app");
    assert_eq!(
        (app.state, app.final_status.as_str()),
        (AppState::Failed, "FAILED")
    );
    assert!(
        app.diagnostics.contains("exitCode: 3"),
        "{}",
        app.diagnostics
    );
    assert!(
        app.diagnostics.contains("am stderr line"),
        "stderr tail in: {}",
        app.diagnostics
    );
    // Killing a final app is a no-op that reports its state.
    assert_eq!(client.kill(&id).await.expect("kill"), AppState::Failed);
    finish(emu).await;
}

#[tokio::test]
async fn kill_waits_through_202_and_kills_the_whole_process_group() {
    let (emu, work) = start_one().await;
    let client = client_for(&[emu.url()]);
    let id = submit_kernel(&work, "k-kill", None, 0).await;
    emu.wait_for_state(&id, RmAppState::Running, Duration::from_secs(5))
        .await;
    let child = read_pid(&work.path().join("release-k-kill.child")).await;
    assert!(pid_alive(child));
    assert_eq!(client.kill(&id).await.expect("kill"), AppState::Killed);
    let app = client.app(&id).await.expect("app");
    assert_eq!(
        (app.state, app.final_status.as_str()),
        (AppState::Killed, "KILLED")
    );
    assert!(
        app.diagnostics.contains("killed by user alice"),
        "{}",
        app.diagnostics
    );
    for _ in 0..100 {
        if !pid_alive(child) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !pid_alive(child),
        "the AM's background child survived the kill"
    );
    let err = client
        .app("application_1_9999")
        .await
        .expect_err("unknown app");
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("NotFoundException"), "{err}");
    finish(emu).await;
}

#[tokio::test]
async fn rm_side_kill_and_fail_controls() {
    let (emu, work) = start_one().await;
    let client = client_for(&[emu.url()]);
    let a = submit_kernel(&work, "k-a", None, 0).await;
    let b = submit_kernel(&work, "k-b", None, 0).await;
    emu.wait_for_state(&b, RmAppState::Running, Duration::from_secs(5))
        .await;
    assert!(emu.kill_app(&a));
    assert!(emu.fail_app(&b, "node lost: injected by the test"));
    emu.wait_for_state(&a, RmAppState::Killed, Duration::from_secs(5))
        .await;
    emu.wait_for_state(&b, RmAppState::Failed, Duration::from_secs(5))
        .await;
    assert_eq!(client.app_state(&a).await.expect("a"), AppState::Killed);
    let app_b = client.app(&b).await.expect("b");
    assert_eq!(app_b.state, AppState::Failed);
    assert_eq!(app_b.diagnostics, "node lost: injected by the test");
    assert!(!emu.kill_app(&a), "already final");
    finish(emu).await;
}

#[tokio::test]
async fn client_fails_over_between_standby_and_active_rms() {
    let mut emu = YarnEmulator::start_with(fast_config(), &[any_port(), any_port()])
        .await
        .expect("emulator");
    let (rm0, rm1) = (emu.rm_url(0).expect("rm0"), emu.rm_url(1).expect("rm1"));
    emu.fail_over_to(1);
    // yarn-site.xml with two rm-ids, the standby first.
    let work = Workdir::new(&[rm0.clone(), rm1.clone()]);
    let config = YarnClientConfig::from_site(work.path())
        .expect("site")
        .with_auth(Auth::Simple {
            user: "alice".into(),
        });
    assert_eq!(config.endpoints, vec![rm0.clone(), rm1.clone()]);
    let client = YarnClient::new(config).expect("client");
    assert!(client.cluster_info().await.expect("info").is_active());
    assert_eq!(client.active_endpoint().as_deref(), Some(rm1.as_str()));

    // Submission through the standby's yarn-site works too (the stand-in follows the probe).
    let id = submit_kernel(&work, "k-ha", None, 0).await;
    emu.wait_for_state(&id, RmAppState::Running, Duration::from_secs(5))
        .await;

    // Failover to rm0: rm1 now answers 307; the client re-probes and lands on rm0.
    emu.fail_over_to(0);
    assert_eq!(client.app(&id).await.expect("app after failover").id, id);
    assert_eq!(client.active_endpoint().as_deref(), Some(rm0.as_str()));

    // rm0 goes away (connection refused) and rm1 takes over.
    emu.fail_over_to(1);
    emu.stop_rm(0).await;
    assert_eq!(
        client.app_state(&id).await.expect("state"),
        AppState::Running
    );
    assert_eq!(client.active_endpoint().as_deref(), Some(rm1.as_str()));

    // No active RM at all.
    emu.set_no_active();
    let err = client.app_state(&id).await.expect_err("no active RM");
    assert!(matches!(err, YarnError::NoActiveRm { .. }), "{err}");

    emu.fail_over_to(1);
    assert_eq!(client.kill(&id).await.expect("kill"), AppState::Killed);
    finish(emu).await;
}

#[tokio::test]
async fn client_recognises_a_hadoop2_refresh_standby() {
    let config = EmulatorConfig {
        standby_style: StandbyStyle::Refresh200,
        ..fast_config()
    };
    let emu = YarnEmulator::start_with(config, &[any_port(), any_port()])
        .await
        .expect("emulator");
    let (rm0, rm1) = (emu.rm_url(0).expect("rm0"), emu.rm_url(1).expect("rm1"));
    let client = client_for(&[rm0.clone(), rm1.clone()]);
    assert!(
        client
            .apps(&Default::default())
            .await
            .expect("apps")
            .is_empty()
    );
    assert_eq!(client.active_endpoint().as_deref(), Some(rm0.as_str()));
    emu.fail_over_to(1);
    assert!(
        client
            .apps(&Default::default())
            .await
            .expect("apps after failover")
            .is_empty()
    );
    assert_eq!(client.active_endpoint().as_deref(), Some(rm1.as_str()));
    finish(emu).await;
}

#[tokio::test]
async fn auth_anonymous_disallowed_needs_user_and_kerberos_is_refused() {
    let config = EmulatorConfig {
        anonymous_allowed: false,
        ..fast_config()
    };
    let emu = YarnEmulator::start_with(config, &[any_port()])
        .await
        .expect("emulator");
    let anon = YarnClient::new(YarnClientConfig::from_endpoints(&emu.url(), None)).expect("client");
    let err = anon.cluster_info().await.expect_err("anonymous refused");
    assert!(err.to_string().contains("401"), "{err}");
    let alice = client_for(&[emu.url()]);
    assert!(alice.cluster_info().await.expect("info").is_active());
    assert!(
        alice
            .apps(&Default::default())
            .await
            .expect("apps with the cookie")
            .is_empty()
    );
    let kerberos = YarnClientConfig::from_endpoints(&emu.url(), None).with_auth(Auth::Kerberos);
    assert!(matches!(
        YarnClient::new(kerberos),
        Err(YarnError::KerberosUnsupported)
    ));
    finish(emu).await;
}

#[tokio::test]
async fn queue_partition_usage_follows_the_capacity_scheduler() {
    let config = EmulatorConfig {
        queues: vec![
            QueueSpec {
                name: "default".into(),
                capacity: 60.0,
            },
            QueueSpec {
                name: "spark".into(),
                capacity: 40.0,
            },
        ],
        node_labels: vec!["gpu".into()],
        ..fast_config()
    };
    let emu = YarnEmulator::start_with(config, &[any_port()])
        .await
        .expect("emulator");
    let client = client_for(&[emu.url()]);
    #[track_caller]
    fn near(got: Option<f64>, want: Option<f64>) {
        match (got, want) {
            (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{g} != {w}"),
            _ => assert_eq!(got, want),
        }
    }
    near(
        client
            .queue_partition_usage("spark", "")
            .await
            .expect("usage"),
        Some(0.0),
    );
    near(
        client
            .queue_partition_usage("spark", "gpu")
            .await
            .expect("usage"),
        Some(0.0),
    );
    emu.set_partition_usage("spark", "gpu", 97.5);
    near(
        client
            .queue_partition_usage("spark", "gpu")
            .await
            .expect("usage"),
        Some(97.5),
    );
    near(
        client
            .queue_partition_usage("nope", "")
            .await
            .expect("usage"),
        None,
    );
    near(
        client
            .queue_partition_usage("default", "fpga")
            .await
            .expect("usage"),
        None,
    );
    finish(emu).await;
}
