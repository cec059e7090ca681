//! A real ipykernel through the local backend, from the venv's kernelspec (argv[0] `python`)
//! with an environment that has no PATH.
use std::time::Duration;

use jupyter_protocol::{KernelClient, SocketOptions};
use resource_managers::{ProcessState, ResourceManager};

use test_support::permission_bits;

use crate::support::{Fixture, group_exists, pid_exists, pid_pgid, request, venv_python3_spec};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_runs_answers_interrupts_and_terminates_cleanly() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let spec = venv_python3_spec()?;
    assert_eq!(spec.argv.first().map(String::as_str), Some("python"));
    let request = request(spec);
    assert!(!request.env.contains_key("PATH"));
    let kernel_id = request.kernel_id.clone();
    let kernel = fx.backend.launch(request).await?;
    let (pid, pgid) = pid_pgid(kernel.process.as_ref());

    // The connection file: private, and what the kernel was told.
    let file = fx.connection_file(&kernel_id);
    assert_eq!(permission_bits(&file)?, 0o600);
    assert_eq!(
        jupyter_protocol::ConnectionInfo::read(&file)?,
        kernel.connection
    );

    // The kernel answers (ipykernel takes a couple of seconds to start on a busy machine).
    let mut client = KernelClient::connect(&kernel.connection, &SocketOptions::default()).await?;
    let info = client.kernel_info(60 * SECOND).await?;
    assert_eq!(info.status, "ok");
    assert_eq!(info.implementation, "ipython");

    // It runs the venv's interpreter, with exactly the env it was given.
    let probe = client
        .execute(
            "import os, sys; print(sys.prefix); print('PATH' in os.environ, os.environ['JPY_PARENT_PID']); \
             os.write(1, b'straight-to-the-log\\n')",
            30 * SECOND,
        )
        .await?;
    assert_eq!(probe.status, "ok", "{probe:?}");
    let venv = crate::support::workspace().join(".venv").canonicalize()?;
    let mut lines = probe.stdout.lines();
    let prefix = lines
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    assert_eq!(prefix.canonicalize()?, venv);
    assert_eq!(
        lines.next(),
        Some(format!("False {}", std::process::id()).as_str())
    );

    // Interrupt by signal while a cell sleeps.
    let running = tokio::spawn(async move {
        let outcome = client
            .execute("import time; time.sleep(60)", 60 * SECOND)
            .await;
        (client, outcome)
    });
    tokio::time::sleep(SECOND).await;
    let started = tokio::time::Instant::now();
    kernel.process.interrupt().await?;
    let (_client, outcome) = tokio::time::timeout(20 * SECOND, running).await??;
    let outcome = outcome?;
    assert_eq!(outcome.status, "error");
    assert_eq!(
        outcome.error.map(|e| e.ename).as_deref(),
        Some("KeyboardInterrupt")
    );
    assert!(started.elapsed() < 10 * SECOND);
    assert_eq!(
        kernel.process.poll().await,
        ProcessState::Running,
        "an interrupt does not stop the kernel"
    );

    // Terminate: nothing left in the group, no zombie, connection file removed by cleanup.
    let state = kernel.process.terminate(5 * SECOND).await?;
    assert!(matches!(state, ProcessState::Exited { .. }), "{state:?}");
    assert!(
        !group_exists(pgid),
        "process group {pgid} still has members"
    );
    assert!(!pid_exists(pid), "kernel {pid} left a zombie");
    assert!(
        kernel.process.log_tail(50).contains("straight-to-the-log"),
        "{}",
        kernel.process.log_tail(50)
    );
    // The final cleanup takes the connection file and the kernel's log with it.
    kernel.process.cleanup(false).await;
    assert!(!file.exists());
    assert_eq!(
        kernel.process.log_tail(50),
        "",
        "the kernel's log outlived it"
    );
    Ok(())
}
