//! The `kernel-launcher` agent with real kernels of two languages (ipykernel, bash_kernel):
//! start, execute, interrupt through the communication port, restart (new ports), shutdown, and
//! nothing left behind on either side.
use std::path::Path;
use std::process::Stdio;

use jupyter_protocol::{KernelClient, SocketOptions};
use kernel_launcher::{CommOutcome, CommPort, LauncherResponse, ResponseListener};

use crate::support::{GroupGuard, SECOND, eventually, group_exists, kernel_id, listener, python};

/// One kernel language: its argv after `--`, a quick cell, a long cell and how an interrupted
/// long cell ends.
struct Language {
    argv: Vec<String>,
    quick: (&'static str, &'static str),
    long: &'static str,
    interrupted_status: &'static str,
}

fn ipykernel() -> Language {
    Language {
        argv: vec![
            python().to_string_lossy().into_owned(),
            "-m".into(),
            "ipykernel_launcher".into(),
            "-f".into(),
            "{connection_file}".into(),
        ],
        quick: ("print(6 * 7)", "42"),
        long: "import time; time.sleep(30)",
        interrupted_status: "error",
    }
}

fn bash_kernel() -> Language {
    Language {
        argv: vec![
            python().to_string_lossy().into_owned(),
            "-m".into(),
            "bash_kernel".into(),
            "-f".into(),
            "{connection_file}".into(),
        ],
        quick: ("echo $((6 * 7))", "42"),
        long: "sleep 30",
        interrupted_status: "abort",
    }
}

/// A running agent: its process, its group guard, and what it sent back.
struct Agent {
    child: tokio::process::Child,
    _guard: GroupGuard,
    _kernel_guard: GroupGuard,
    response: LauncherResponse,
    comm: CommPort,
}

/// Starts the agent with EG's or gateway_provisioners' argument names and waits for its payload.
async fn start(
    listener: &ResponseListener,
    id: &str,
    language: &Language,
    eg_names: bool,
    tmp: &Path,
) -> anyhow::Result<Agent> {
    let mut pending = listener.register(id)?;
    let prefix = if eg_names {
        "--RemoteProcessProxy."
    } else {
        "--"
    };
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kernel-launcher"));
    for (name, value) in [
        ("kernel-id", id.to_owned()),
        ("response-address", listener.response_address()),
        ("public-key", listener.public_key_b64().to_owned()),
        ("port-range", "0..0".to_owned()),
    ] {
        command.arg(format!("{prefix}{name}")).arg(value);
    }
    if eg_names {
        command.args([
            "--RemoteProcessProxy.spark-context-initialization-mode",
            "none",
        ]);
    } else {
        command.args(["--transport-encryption", ""]);
    }
    let log = std::fs::File::create(tmp.join(format!("agent-{id}.log")))?;
    let child = command
        .arg("--")
        .args(&language.argv)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let guard = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0));
    let response = tokio::time::timeout(30 * SECOND, &mut pending)
        .await
        .map_err(|_| anyhow::anyhow!("no payload from the agent: {}", agent_log(tmp, id)))??;
    let comm_port = response
        .comm_port
        .ok_or_else(|| anyhow::anyhow!("no comm_port"))?;
    let kernel_guard = GroupGuard(response.pgid.unwrap_or(0));
    Ok(Agent {
        child,
        _guard: guard,
        _kernel_guard: kernel_guard,
        comm: CommPort::new(([127, 0, 0, 1], comm_port).into(), SECOND),
        response,
    })
}

fn agent_log(tmp: &Path, id: &str) -> String {
    std::fs::read_to_string(tmp.join(format!("agent-{id}.log"))).unwrap_or_default()
}

async fn client(agent: &Agent) -> anyhow::Result<KernelClient> {
    let mut connection = agent.response.connection.clone();
    assert_eq!(connection.ip, "0.0.0.0");
    connection.ip = "127.0.0.1".to_owned();
    Ok(KernelClient::connect(&connection, &SocketOptions::default()).await?)
}

/// Stops the agent the way the gateway does, and checks nothing is left.
async fn shut_down(
    mut agent: Agent,
    mut client: KernelClient,
    restart: bool,
) -> anyhow::Result<()> {
    let kernel_group = agent.response.pgid.unwrap_or(0);
    // The order EG uses: shutdown_request, then {"signum": 15} and {"shutdown": 1}.
    let _ = client.shutdown(restart, 10 * SECOND).await;
    drop(client);
    let _ = agent.comm.signal(15).await;
    let _ = agent.comm.shutdown().await;
    let status = tokio::time::timeout(15 * SECOND, agent.child.wait()).await??;
    assert!(
        status.code().is_some() || status.signal_free(),
        "{status:?}"
    );
    assert!(
        eventually(5 * SECOND, || !group_exists(kernel_group)).await,
        "the kernel's process group {kernel_group} outlived the agent"
    );
    assert_eq!(agent.comm.probe().await, CommOutcome::Refused);
    Ok(())
}

trait SignalFree {
    fn signal_free(&self) -> bool;
}

impl SignalFree for std::process::ExitStatus {
    fn signal_free(&self) -> bool {
        std::os::unix::process::ExitStatusExt::signal(self).is_none()
    }
}

async fn full_cycle(language: Language, eg_names: bool) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let listener = listener().await?;
    let id = kernel_id();
    let agent = start(&listener, &id, &language, eg_names, tmp.path()).await?;
    assert_eq!(agent.response.kernel_id(), Some(id.as_str()));
    assert_eq!(agent.response.pid, agent.response.pgid);
    assert_eq!(
        uuid::Uuid::parse_str(&agent.response.connection.key)
            .map(|u| u.get_version_num())
            .ok(),
        Some(4),
        "the key is a UUID4 string"
    );
    assert_eq!(agent.comm.probe().await, CommOutcome::Delivered);

    let mut kernel = client(&agent).await?;
    let info = kernel.kernel_info(60 * SECOND).await?;
    assert_eq!(info.status, "ok");
    let (code, expected) = language.quick;
    let outcome = kernel.execute(code, 30 * SECOND).await?;
    assert_eq!(outcome.status, "ok", "{outcome:?}");
    assert_eq!(outcome.stdout.trim(), expected);

    // Interrupt a long cell through the communication port.
    let long = language.long;
    let running = tokio::spawn(async move {
        let outcome = kernel.execute(long, 60 * SECOND).await;
        (kernel, outcome)
    });
    tokio::time::sleep(SECOND).await;
    let started = tokio::time::Instant::now();
    assert_eq!(agent.comm.signal(2).await, CommOutcome::Delivered);
    let (kernel, outcome) = tokio::time::timeout(20 * SECOND, running).await??;
    let outcome = outcome?;
    assert_eq!(outcome.status, language.interrupted_status, "{outcome:?}");
    assert!(started.elapsed() < 10 * SECOND);
    assert_eq!(
        agent.comm.probe().await,
        CommOutcome::Delivered,
        "still alive"
    );

    // Restart: the old launch goes away, a new one comes back with new ports and key.
    let first = agent.response.connection.clone();
    shut_down(agent, kernel, true).await?;
    let agent = start(&listener, &id, &language, eg_names, tmp.path()).await?;
    assert_ne!(agent.response.connection.key, first.key);
    assert_ne!(agent.response.comm_port, None);
    let mut kernel = client(&agent).await?;
    assert_eq!(kernel.kernel_info(60 * SECOND).await?.status, "ok");
    let outcome = kernel.execute(code, 30 * SECOND).await?;
    assert_eq!(outcome.stdout.trim(), expected);

    // Shutdown: nothing left, and the agent's private files are gone.
    shut_down(agent, kernel, false).await?;
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("kernel-launcher-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_ipykernel_with_eg_arguments() -> anyhow::Result<()> {
    full_cycle(ipykernel(), true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_bash_kernel_with_provisioner_arguments() -> anyhow::Result<()> {
    full_cycle(bash_kernel(), false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_stops_the_kernel_when_killed_by_sigterm_and_reports_exit() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let listener = listener().await?;
    let id = kernel_id();
    let language = Language {
        argv: vec!["/bin/sh".into(), "-c".into(), "sleep 60".into()],
        quick: ("", ""),
        long: "",
        interrupted_status: "",
    };
    let mut agent = start(&listener, &id, &language, true, tmp.path()).await?;
    let kernel_group = agent.response.pgid.unwrap_or(0);
    assert!(group_exists(kernel_group));
    let agent_pid = agent
        .child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or(0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_pid),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(10 * SECOND, agent.child.wait()).await??;
    // sh was killed by the forwarded SIGTERM: 128 + 15.
    assert_eq!(status.code(), Some(143));
    assert!(eventually(5 * SECOND, || !group_exists(kernel_group)).await);
    Ok(())
}

#[tokio::test]
async fn agent_refuses_bad_arguments_and_reports_a_dead_gateway() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = |args: Vec<String>| {
        let tmp = tmp.path().to_owned();
        async move {
            tokio::time::timeout(
                30 * SECOND,
                tokio::process::Command::new(env!("CARGO_BIN_EXE_kernel-launcher"))
                    .args(args)
                    .env("TMPDIR", tmp)
                    .kill_on_drop(true)
                    .output(),
            )
            .await
        }
    };
    let output = run(vec!["--kernel-id".into(), "x".into()]).await??;
    assert_eq!(output.status.code(), Some(2));
    // Nobody listens at the response address: the kernel is stopped and the agent fails.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let keys = kernel_launcher::payload::KeyPair::generate()?;
    let output = run(vec![
        "--kernel-id".into(),
        kernel_id(),
        "--response-address".into(),
        closed.to_string(),
        "--public-key".into(),
        keys.public_key_b64().to_owned(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        "sleep 60".into(),
    ])
    .await??;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot send the connection info"));
    assert_eq!(
        std::fs::read_dir(tmp.path())?.count(),
        0,
        "files left behind"
    );
    Ok(())
}
