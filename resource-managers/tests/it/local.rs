//! The local backend with small shell "kernels": spawn failures, exits, logs, signals,
//! termination, orphans, restart and re-attachment.
use std::time::Duration;

use resource_managers::{Error, ProcessState, ResourceManager};

use test_support::permission_bits;

use crate::support::{
    Fixture, eventually, exited, group_exists, killed, pid_exists, pid_pgid, pid_running, request,
    spec, wait_for_log,
};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn missing_program_fails_with_spawn_and_leaves_nothing() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    for argv0 in ["/nonexistent/kernel-program", "no-such-kernel-program"] {
        let request = request(spec(
            fx.dir.path(),
            "missing",
            &[argv0, "{connection_file}"],
            &[],
        )?);
        let kernel_id = request.kernel_id.clone();
        let err = fx.backend.launch(request).await.err();
        let Some(Error::Spawn(message)) = &err else {
            anyhow::bail!("expected Spawn for {argv0}, got {err:?}");
        };
        assert!(
            message.contains("missing"),
            "message names the kernelspec: {message}"
        );
        assert!(
            message.contains(argv0),
            "message names the program: {message}"
        );
        assert!(
            !fx.connection_file(&kernel_id).exists(),
            "connection file left behind for {argv0}"
        );
    }
    let leftovers = std::fs::read_dir(fx.runtime_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0);
    Ok(())
}

#[tokio::test]
async fn immediate_exit_is_reported_with_its_code() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let kernel = fx.launch("quitter", &["/bin/sh", "-c", "exit 3"]).await?;
    let state = tokio::time::timeout(5 * SECOND, kernel.process.wait()).await?;
    assert_eq!(state, exited(3));
    assert_eq!(kernel.process.poll().await, state);
    let (pid, _) = pid_pgid(kernel.process.as_ref());
    assert!(!pid_exists(pid), "the exited kernel was reaped");
    assert!(matches!(
        kernel.process.signal(0).await,
        Err(Error::NotRunning(_))
    ));
    assert!(matches!(
        kernel.process.interrupt().await,
        Err(Error::NotRunning(_))
    ));
    // Terminating an exited kernel just reports its end.
    assert_eq!(kernel.process.terminate(SECOND).await?, state);
    Ok(())
}

#[tokio::test]
async fn log_gets_stdout_stderr_and_templated_args() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let script = r#"echo "out-line"; echo "err-line" >&2; echo "args=$0 $1""#;
    let request = request(spec(
        fx.dir.path(),
        "talker",
        &["/bin/sh", "-c", script, "{kernel_id}", "{port_range}"],
        &[],
    )?);
    let kernel_id = request.kernel_id.clone();
    let kernel = fx.backend.launch(request).await?;
    let state = tokio::time::timeout(5 * SECOND, kernel.process.wait()).await?;
    assert_eq!(state, exited(0));
    let log = std::fs::read_to_string(fx.log_file(&kernel_id))?;
    assert!(
        log.contains("out-line\n") && log.contains("err-line\n"),
        "{log}"
    );
    let tail = kernel.process.log_tail(2);
    assert_eq!(tail, format!("err-line\nargs={kernel_id} 0..0"));
    assert_eq!(permission_bits(&fx.log_file(&kernel_id))?, 0o600);
    Ok(())
}

#[tokio::test]
async fn the_kernel_gets_exactly_the_request_env() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let request = request(spec(
        fx.dir.path(),
        "env",
        &["/usr/bin/env"],
        &[("FROM_SPEC", "not-applied-here")],
    )?);
    let mut expected: Vec<String> = request
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    expected.push(format!("JPY_PARENT_PID={}", std::process::id()));
    expected.sort();
    let kernel = fx.backend.launch(request).await?;
    tokio::time::timeout(5 * SECOND, kernel.process.wait()).await?;
    let mut got: Vec<String> = kernel
        .process
        .log_tail(100)
        .lines()
        .map(str::to_owned)
        .collect();
    got.sort();
    assert_eq!(got, expected);
    Ok(())
}

#[tokio::test]
async fn terminate_escalates_to_sigkill_and_empties_the_group() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    // Ignores SIGTERM, using only shell builtins so the group holds just this process.
    let script = r#"trap "" TERM; echo ready; while :; do :; done"#;
    let kernel = fx.launch("stubborn", &["/bin/sh", "-c", script]).await?;
    wait_for_log(kernel.process.as_ref(), "ready", 5 * SECOND).await?;
    let (pid, pgid) = pid_pgid(kernel.process.as_ref());
    assert_eq!(pid, pgid, "the kernel leads its own process group");
    assert_ne!(
        Some(pgid),
        nix::unistd::getpgid(None).ok().map(|p| p.as_raw()),
        "not the test's group"
    );
    kernel.process.signal(0).await?;
    let started = tokio::time::Instant::now();
    let state = kernel.process.terminate(Duration::from_millis(300)).await?;
    assert_eq!(state, killed(9));
    assert!(
        started.elapsed() < 3 * SECOND,
        "took {:?}",
        started.elapsed()
    );
    assert!(!group_exists(pgid), "no process left in the group");
    assert!(!pid_exists(pid), "no zombie left");
    Ok(())
}

/// How a test ends a kernel that started a child of its own.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The gateway terminates it (SIGTERM to the group).
    Terminate,
    /// It exits by itself, leaving the child behind.
    Exits,
}

/// Launches `script`, which starts `/bin/sleep 300` in the background and prints `child=<pid>`,
/// ends it as `end` says, expects `state`, and checks that the child no longer runs (it is not
/// ours to reap and may linger as init's zombie, but it must not run).
async fn check_child_does_not_outlive(
    script: &str,
    end: End,
    state: ProcessState,
) -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let kernel = fx.launch("parent", &["/bin/sh", "-c", script]).await?;
    wait_for_log(kernel.process.as_ref(), "child=", 5 * SECOND).await?;
    let child = child_pid(&kernel.process.log_tail(5))?;
    let ended = match end {
        End::Terminate => {
            assert!(pid_running(child));
            kernel.process.terminate(5 * SECOND).await?
        }
        End::Exits => tokio::time::timeout(5 * SECOND, kernel.process.wait()).await?,
    };
    assert_eq!(ended, state, "{end:?}");
    assert!(
        eventually(2 * SECOND, || !pid_running(child)).await,
        "{end:?}: child {child} still runs"
    );
    Ok(())
}

#[tokio::test]
async fn terminate_reaches_the_whole_group() -> anyhow::Result<()> {
    let script = r#"/bin/sleep 300 & echo "child=$!"; wait"#;
    check_child_does_not_outlive(script, End::Terminate, killed(15)).await
}

#[tokio::test]
async fn leftovers_of_a_kernel_that_exits_are_killed() -> anyhow::Result<()> {
    let script = r#"/bin/sleep 300 & echo "child=$!"; exit 0"#;
    check_child_does_not_outlive(script, End::Exits, exited(0)).await
}

#[tokio::test]
async fn interrupt_uses_the_alternate_signal_and_signal_zero_probes() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let script = r#"trap "echo got-usr2; exit 7" USR2; trap "echo got-int" INT; echo ready; while :; do :; done"#;
    let spec = spec(
        fx.dir.path(),
        "usr2",
        &["/bin/sh", "-c", script],
        &[("EG_ALTERNATE_SIGINT", "SIGUSR2")],
    )?;
    let kernel = fx.backend.launch(request(spec)).await?;
    wait_for_log(kernel.process.as_ref(), "ready", 5 * SECOND).await?;
    kernel.process.signal(0).await?;
    assert_eq!(kernel.process.poll().await, ProcessState::Running);
    assert_eq!(
        kernel.process.record().process["interrupt_signal"],
        "SIGUSR2"
    );
    kernel.process.interrupt().await?;
    let state = tokio::time::timeout(5 * SECOND, kernel.process.wait()).await?;
    assert_eq!(state, exited(7));
    let log = kernel.process.log_tail(10);
    assert!(
        log.contains("got-usr2") && !log.contains("got-int"),
        "{log}"
    );
    assert!(matches!(
        kernel.process.signal(0).await,
        Err(Error::NotRunning(_))
    ));
    assert!(matches!(
        kernel.process.signal(12345).await,
        Err(Error::NotRunning(_))
    ));
    Ok(())
}

#[tokio::test]
async fn invalid_signal_numbers_are_refused() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let kernel = fx.launch("sleeper", &["/bin/sleep", "300"]).await?;
    assert!(matches!(
        kernel.process.signal(12345).await,
        Err(Error::Unsupported(_))
    ));
    assert_eq!(kernel.process.poll().await, ProcessState::Running);
    kernel.process.terminate(5 * SECOND).await?;
    Ok(())
}

#[tokio::test]
async fn dropped_handle_kills_the_kernel() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let kernel = fx.launch("sleeper", &["/bin/sleep", "300"]).await?;
    let (pid, pgid) = pid_pgid(kernel.process.as_ref());
    assert!(pid_running(pid));
    drop(kernel);
    assert!(
        eventually(5 * SECOND, || !group_exists(pgid)).await,
        "group {pgid} survived its handle"
    );
    Ok(())
}

#[tokio::test]
async fn restart_keeps_ports_and_key_and_cleanup_removes_the_file() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let spec = spec(fx.dir.path(), "sleeper", &["/bin/sleep", "300"], &[])?;
    let first_request = request(spec.clone());
    let kernel_id = first_request.kernel_id.clone();
    let first = fx.backend.launch(first_request).await?;
    let file = fx.connection_file(&kernel_id);
    assert_eq!(permission_bits(&file)?, 0o600);
    assert_eq!(
        jupyter_protocol::ConnectionInfo::read(&file)?,
        first.connection
    );
    assert_eq!(first.connection.ip, "127.0.0.1");
    assert_eq!(first.connection.kernel_name, "sleeper");
    assert_eq!(first.connection.key.len(), 32);
    first.process.terminate(5 * SECOND).await?;
    first.process.cleanup(true).await;
    assert!(file.exists(), "kept for the restart");
    assert!(
        fx.log_file(&kernel_id).exists(),
        "the log is kept for the restart"
    );

    let mut second_request = request(spec);
    second_request.kernel_id = kernel_id.clone();
    second_request.previous = Some(first.connection.clone());
    let second = fx.backend.launch(second_request).await?;
    assert_eq!(second.connection, first.connection);
    assert_eq!(
        jupyter_protocol::ConnectionInfo::read(&file)?,
        first.connection
    );
    second.process.terminate(5 * SECOND).await?;
    second.process.cleanup(false).await;
    second.process.cleanup(false).await;
    assert!(!file.exists());
    assert!(
        !fx.log_file(&kernel_id).exists(),
        "the log goes with the kernel"
    );
    Ok(())
}

#[tokio::test]
async fn ports_honour_the_range() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let mut request = request(spec(fx.dir.path(), "sleeper", &["/bin/sleep", "300"], &[])?);
    request.port_range = kernel_launcher::PortRange::parse("40000..41000")?;
    let kernel = fx.backend.launch(request).await?;
    let c = &kernel.connection;
    let ports = [
        c.shell_port,
        c.iopub_port,
        c.stdin_port,
        c.control_port,
        c.hb_port,
    ];
    assert!(
        ports.iter().all(|p| (40000..=41000).contains(p)),
        "{ports:?}"
    );
    assert_eq!(
        ports
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        5
    );
    kernel.process.terminate(5 * SECOND).await?;
    Ok(())
}

#[tokio::test]
async fn reattach_controls_a_detached_kernel() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let kernel = fx.launch("sleeper", &["/bin/sleep", "300"]).await?;
    let record = kernel.process.record();
    let (pid, pgid) = pid_pgid(kernel.process.as_ref());
    // The record survives a JSON round trip, as a persisted session would.
    let record: resource_managers::KernelRecord =
        serde_json::from_str(&serde_json::to_string(&record)?)?;
    kernel.process.detach();
    drop(kernel);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(pid_running(pid), "a detached kernel survives its handle");

    let again = fx.backend.reattach(&record).await?;
    assert_eq!(again.connection, record.connection);
    assert_eq!(again.process.poll().await, ProcessState::Running);
    again.process.signal(0).await?;
    let state = again.process.terminate(5 * SECOND).await?;
    assert!(matches!(state, ProcessState::Exited { .. }), "{state:?}");
    assert!(eventually(2 * SECOND, || !group_exists(pgid)).await);

    let gone = fx.backend.reattach(&record).await.err();
    assert!(matches!(gone, Some(Error::NotRunning(_))), "{gone:?}");
    let mut foreign = record.clone();
    foreign.resource_manager = "yarn".to_owned();
    assert!(matches!(
        fx.backend.reattach(&foreign).await,
        Err(Error::Config(_))
    ));
    Ok(())
}

fn child_pid(log: &str) -> anyhow::Result<i32> {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("child="))
        .ok_or_else(|| anyhow::anyhow!("no child pid in {log}"))?;
    Ok(line.trim().parse()?)
}
