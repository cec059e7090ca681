//! The handle of a real process started here, and the end state machine.

use super::*;
use crate::ssh::balance::Balancer;

#[test]
fn the_end_is_decided_once_stopped_and_detach_does_not_undo_a_stop() {
    let open = Ending::default();
    assert!(open.owned() && open.ended_on_its_own());
    open.detach();
    assert!(!open.owned(), "detached: left running");
    assert!(open.ended_on_its_own(), "its later end is still news");
    open.stop();
    assert!(!open.owned() && !open.ended_on_its_own());

    let stopped = Ending::default();
    stopped.stop();
    stopped.detach();
    assert!(!stopped.ended_on_its_own(), "still stopped by the gateway");
}

/// A handle of a real process started here (`sleep`, in its own process group), without a
/// communication port, counted on host `h` of `balancer`.
fn here(balancer: &Balancer, log_dir: &std::path::Path) -> (SshKernelProcess, Pid) {
    let json = serde_json::json!({
        "argv": ["sleep", "60"], "display_name": "S", "language": "none",
    });
    let spec = kernel_launcher::KernelSpec::from_json("s", log_dir, &json).expect("kernelspec");
    let request = crate::LaunchRequest {
        kernel_id: "k".to_owned(),
        spec,
        env: std::collections::BTreeMap::new(),
        cwd: None,
        port_range: kernel_launcher::PortRange::ANY,
        timeout: Duration::from_secs(5),
        previous: None,
        username: "u".to_owned(),
        run_as: None,
        placement: Default::default(),
    };
    let argv = ["sleep".to_owned(), "60".to_owned()];
    let log = log_dir.join("kernel-k.log");
    let process = LauncherProcess::spawn_independent(
        &request,
        std::path::Path::new("/bin/sleep"),
        &argv,
        &log,
        "launcher",
    )
    .expect("sleep starts");
    let pid = process.pid();
    let found = Found {
        kernel_id: "k".to_owned(),
        host: "h".to_owned(),
        ip: IpAddr::from([127, 0, 0, 1]),
        connection: ConnectionInfo::from_json(
            br#"{"ip": "127.0.0.1", "shell_port": 1, "iopub_port": 2, "stdin_port": 3,
                 "control_port": 4, "hb_port": 5, "key": "secret"}"#,
        )
        .expect("connection info"),
        comm: None,
        comm_port: None,
        pid: Some(pid.as_raw()),
        pgid: Some(pid.as_raw()),
        log_path: log_dir.join("kernel-k.log"),
        interrupt_signal: Signal::SIGUSR2,
    };
    let launcher = LocalLauncher {
        process,
        kernel_group: None,
    };
    let slot = balancer.acquire("h");
    (
        SshKernelProcess::new(found, Launched::Here(launcher), slot),
        pid,
    )
}

#[tokio::test]
async fn a_launcher_here_without_a_port_is_signalled_and_stopped_through_its_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let balancer = Balancer::default();
    let (kernel, pid) = here(&balancer, dir.path());
    assert_eq!(balancer.active("h"), 1);
    assert_eq!(kernel.poll().await, ProcessState::Running);

    let record = kernel.record();
    assert_eq!(record.resource_manager, NAME);
    let stored = SshRecord::from_json(&record.process).expect("an ssh record");
    assert_eq!(stored.launcher_pid, Some(pid.as_raw()));
    assert_eq!((stored.user, stored.launcher_group), (None, None));
    assert_eq!(stored.interrupt_signal, "SIGUSR2");
    assert!(!stored.tunneled && stored.remote_connection.is_none());

    // No port: a probe and a signal go to the process group.
    kernel.signal(0).await.expect("alive");
    assert!(matches!(
        kernel.signal(1 << 20).await,
        Err(Error::Unsupported(_))
    ));
    let end = kernel
        .terminate(Duration::from_secs(5))
        .await
        .expect("terminated");
    assert_eq!(
        end,
        ProcessState::Exited {
            code: None,
            signal: Some(Signal::SIGTERM as i32)
        }
    );
    assert_eq!(kernel.poll().await, end);
    assert!(matches!(kernel.signal(0).await, Err(Error::NotRunning(_))));
    assert!(matches!(
        kernel.interrupt().await,
        Err(Error::NotRunning(_))
    ));
    kernel.cleanup(false).await;
    assert_eq!(balancer.active("h"), 0, "cleanup releases the host");
}

#[tokio::test]
async fn a_dropped_handle_kills_its_launcher_unless_detached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let balancer = Balancer::default();
    let (owned, pid) = here(&balancer, dir.path());
    let launcher = match &owned.launched {
        Launched::Here(launcher) => launcher.process.clone(),
        _ => unreachable!("a launch here"),
    };
    drop(owned);
    let state = tokio::time::timeout(Duration::from_secs(5), launcher.wait()).await;
    assert!(
        matches!(
            state,
            Ok(ProcessState::Exited {
                signal: Some(9),
                ..
            })
        ),
        "{state:?} (pid {pid})"
    );
    assert_eq!(balancer.active("h"), 0, "the slot goes with the handle");

    let (detached, pid) = here(&balancer, dir.path());
    detached.detach();
    drop(detached);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(kill(pid, None).is_ok(), "a detached kernel keeps running");
    let _ = killpg(pid, Signal::SIGKILL);
}
