//! The `ssh` backend against real OpenSSH servers on 127.0.0.2, 127.0.0.3, ... (see `sshd.rs`):
//! placement, failover, quoting, ipykernel through gateway_provisioners' launcher and through
//! the `kernel-launcher` agent, tunnelling, host keys, and failure logs.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jupyter_protocol::{KernelClient, SocketOptions};
use kernel_launcher::{KernelSpec, ListenerOptions, ResponseListener};
use resource_managers::launcher::LauncherSettings;
use resource_managers::ssh::{
    HostKeys, LoadBalancing, Secret, SshAuth, SshConfig, SshOptions, SshResourceManager,
};
use resource_managers::{
    Error, KernelProcess, LaunchRequest, LaunchedKernel, ProcessState, ResourceManager,
};

use crate::sshd::SshHosts;
use crate::support::{eventually, group_exists, request, spec, workspace};

const SECOND: Duration = Duration::from_secs(1);

struct Remote {
    hosts: SshHosts,
    dir: tempfile::TempDir,
    listener: Arc<ResponseListener>,
}

impl Remote {
    async fn start(n: u8) -> anyhow::Result<Remote> {
        Remote::with_hosts(SshHosts::start(n).await?).await
    }

    async fn with_hosts(hosts: SshHosts) -> anyhow::Result<Remote> {
        let dir = tempfile::tempdir()?;
        let listener = ResponseListener::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            ListenerOptions::default(),
        )
        .await?;
        Ok(Remote {
            hosts,
            dir,
            listener,
        })
    }

    fn options(&self) -> SshOptions {
        SshOptions {
            port: self.hosts.port,
            remote_user: Some("root".into()),
            auth: SshAuth {
                key_file: Some(self.hosts.user_key()),
                ..SshAuth::default()
            },
            host_keys: HostKeys {
                known_hosts: Some(self.hosts.known_hosts()),
                accept_unknown: false,
            },
            connect_timeout: 5 * SECOND,
            remote_log_dir: Some(self.dir.path().join("remote-logs")),
            ssh_to_local_hosts: true,
            ..SshOptions::default()
        }
    }

    fn backend(&self, options: SshOptions) -> SshResourceManager {
        SshResourceManager::with_options(
            SshConfig {
                remote_hosts: self.hosts.names(),
                launcher: LauncherSettings {
                    search_path: vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")],
                    comm_timeout: SECOND,
                    ..LauncherSettings::new(self.listener.clone(), self.dir.path().join("logs"))
                },
            },
            options,
        )
    }
}

/// The `kernel-launcher` agent built next to this test binary.
fn agent() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("no target dir"))?;
    let agent = debug.join("kernel-launcher");
    anyhow::ensure!(
        agent.exists(),
        "{} is missing: run `cargo build -p kernel-launcher --bins` first",
        agent.display()
    );
    Ok(agent)
}

fn python() -> String {
    workspace().join(".venv/bin/python").display().to_string()
}

/// A kernelspec running the agent with `kernel` as the kernel's argv.
fn agent_spec(root: &Path, name: &str, kernel: &[&str]) -> anyhow::Result<KernelSpec> {
    let agent = agent()?.display().to_string();
    let mut argv = vec![
        agent.as_str(),
        "--RemoteProcessProxy.kernel-id",
        "{kernel_id}",
        "--RemoteProcessProxy.response-address",
        "{response_address}",
        "--RemoteProcessProxy.public-key",
        "{public_key}",
        "--RemoteProcessProxy.port-range",
        "{port_range}",
        "--",
    ];
    argv.extend_from_slice(kernel);
    spec(root, name, &argv, &[])
}

/// A kernelspec from gateway_provisioners' `jupyter-ssh-spec install`.
async fn provisioner_spec(prefix: &Path, hosts: &str) -> anyhow::Result<KernelSpec> {
    let output = tokio::process::Command::new(workspace().join(".venv/bin/jupyter-ssh-spec"))
        .args(["install", "--prefix"])
        .arg(prefix)
        .args(["--remote-hosts", hosts, "--kernel-name", "ssh_python"])
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "jupyter-ssh-spec failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(KernelSpec::load(
        &prefix.join("share/jupyter/kernels/ssh_python"),
    )?)
}

fn with_venv_path(mut launch: LaunchRequest) -> LaunchRequest {
    let bin = workspace().join(".venv/bin");
    launch
        .env
        .insert("PATH".into(), format!("{}:/usr/bin:/bin", bin.display()));
    launch
}

fn int(process: &dyn KernelProcess, key: &str) -> i32 {
    process.record().process[key]
        .as_i64()
        .and_then(|v| i32::try_from(v).ok())
        .unwrap_or(0)
}

fn host_of(kernel: &LaunchedKernel) -> String {
    kernel.process.record().process["host"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Stops a kernel the way the gateway does and checks that nothing of it is left.
async fn stop_and_check_gone(kernel: &LaunchedKernel) -> anyhow::Result<()> {
    let launcher = int(kernel.process.as_ref(), "launcher_group");
    let pgid = int(kernel.process.as_ref(), "pgid");
    assert!(launcher > 1, "{:?}", kernel.process.record());
    let state = kernel.process.terminate(5 * SECOND).await?;
    assert!(matches!(state, ProcessState::Exited { .. }), "{state:?}");
    kernel.process.cleanup(false).await;
    assert!(
        eventually(10 * SECOND, || {
            !group_exists(launcher) && (pgid <= 1 || !group_exists(pgid))
        })
        .await,
        "processes of group {launcher}/{pgid} left behind"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernels_land_round_robin_then_by_least_connection() -> anyhow::Result<()> {
    let remote = Remote::start(3).await?;
    let names = remote.hosts.names();
    let spec = agent_spec(remote.dir.path(), "sleeper", &["/bin/sleep", "60"])?;

    let rr = remote.backend(remote.options());
    let mut kernels = Vec::new();
    for _ in 0..4 {
        kernels.push(rr.launch(request(spec.clone())).await?);
    }
    let placed: Vec<String> = kernels.iter().map(host_of).collect();
    assert_eq!(placed, [names[0].as_str(), &names[1], &names[2], &names[0]]);
    for kernel in &kernels {
        assert_eq!(kernel.process.poll().await, ProcessState::Running);
        assert_eq!(kernel.connection.ip, host_of(kernel));
    }
    for kernel in kernels.drain(..) {
        stop_and_check_gone(&kernel).await?;
    }

    let lc = remote.backend(SshOptions {
        load_balancing: LoadBalancing::LeastConnection,
        ..remote.options()
    });
    // Two on the pinned first host, then least-connection fills the others first.
    for _ in 0..2 {
        let mut launch = request(spec.clone());
        launch
            .env
            .insert("KERNEL_REMOTE_HOST".into(), names[0].clone());
        kernels.push(lc.launch(launch).await?);
    }
    assert_eq!(lc.active_kernels(&names[0]), 2);
    for _ in 0..3 {
        kernels.push(lc.launch(request(spec.clone())).await?);
    }
    let placed: Vec<String> = kernels.iter().skip(2).map(host_of).collect();
    assert_eq!(placed, [names[1].as_str(), &names[2], &names[1]]);
    for kernel in kernels.drain(..) {
        stop_and_check_gone(&kernel).await?;
    }
    assert_eq!(lc.active_kernels(&names[0]), 0);
    assert_eq!(lc.active_kernels(&names[1]), 0);
    Ok(())
}

/// A kernel profile's host group replaces the configured hosts: kernels go round robin over the
/// group only, and a `KERNEL_REMOTE_HOST` outside the group does not take a kernel out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_profiles_host_group_replaces_the_configured_hosts() -> anyhow::Result<()> {
    let remote = Remote::start(3).await?;
    let names = remote.hosts.names();
    let spec = agent_spec(remote.dir.path(), "sleeper", &["/bin/sleep", "60"])?;
    let backend = SshResourceManager::with_options(
        SshConfig {
            remote_hosts: vec![names[0].clone()],
            launcher: LauncherSettings {
                search_path: vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")],
                comm_timeout: SECOND,
                ..LauncherSettings::new(remote.listener.clone(), remote.dir.path().join("logs"))
            },
        },
        remote.options(),
    );
    let group = vec![names[1].clone(), names[2].clone()];
    let under_profile = |pinned: Option<&str>| {
        let mut launch = request(spec.clone());
        launch.placement.hosts = group.clone();
        if let Some(host) = pinned {
            launch.env.insert("KERNEL_REMOTE_HOST".into(), host.into());
        }
        launch
    };
    let mut kernels = Vec::new();
    kernels.push(backend.launch(under_profile(None)).await?);
    kernels.push(backend.launch(under_profile(None)).await?);
    kernels.push(backend.launch(under_profile(Some(&names[0]))).await?);
    kernels.push(backend.launch(under_profile(Some(&names[2]))).await?);
    let placed: Vec<String> = kernels.iter().map(host_of).collect();
    assert_eq!(placed, [names[1].as_str(), &names[2], &names[1], &names[2]]);
    // Without a profile, the configured host.
    kernels.push(backend.launch(request(spec.clone())).await?);
    assert_eq!(host_of(&kernels[4]), names[0]);
    for kernel in kernels.drain(..) {
        stop_and_check_gone(&kernel).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_host_is_skipped_and_all_down_is_a_clear_error() -> anyhow::Result<()> {
    let mut remote = Remote::start(2).await?;
    let names = remote.hosts.names();
    let spec = agent_spec(remote.dir.path(), "sleeper", &["/bin/sleep", "60"])?;
    let backend = remote.backend(remote.options());
    remote.hosts.stop(0).await;
    for _ in 0..3 {
        let kernel = backend.launch(request(spec.clone())).await?;
        assert_eq!(host_of(&kernel), names[1]);
        stop_and_check_gone(&kernel).await?;
    }
    remote.hosts.stop(1).await;
    let mut launch = request(spec);
    launch.timeout = 10 * SECOND;
    let started = tokio::time::Instant::now();
    let err = backend.launch(launch).await.err();
    assert!(started.elapsed() < 10 * SECOND, "{:?}", started.elapsed());
    let Some(Error::Spawn(message)) = &err else {
        anyhow::bail!("expected Spawn, got {err:?}");
    };
    for name in &names {
        assert!(message.contains(name.as_str()), "{message}");
    }
    assert!(message.contains("refused"), "{message}");
    assert_eq!(remote.listener.pending_count(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_env_values_reach_the_kernel_verbatim_and_run_nothing() -> anyhow::Result<()> {
    let remote = Remote::start(1).await?;
    let work = remote.dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let out = work.join("env.json");
    let marker = work.join("marker");
    let m = marker.display();
    let dump = "import json, os, sys, time\n\
                json.dump({'env': dict(os.environ), 'argv': sys.argv[1:]}, open(sys.argv[1], 'w'))\n\
                time.sleep(60)";
    let out_arg = out.display().to_string();
    let hostile_arg = format!("$(touch {m})");
    let py = python();
    let spec = agent_spec(
        remote.dir.path(),
        "dumper",
        &[
            py.as_str(),
            "-c",
            dump,
            out_arg.as_str(),
            hostile_arg.as_str(),
        ],
    )?;
    let backend = remote.backend(remote.options());
    let values = [
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("; touch {m}; rm -rf ~"),
        format!("'; touch {m}; '"),
        format!("\"; touch {m}; \""),
        format!("line1\ntouch {m}\nline3"),
        "${HOME} $$ * ? ~ # & | < >".to_owned(),
    ];
    let mut launch = request(spec);
    launch.cwd = Some(work.clone());
    launch
        .env
        .insert("KERNEL_USERNAME".into(), format!("$(touch {m})"));
    let mut expected = BTreeMap::new();
    for (i, value) in values.iter().enumerate() {
        let name = format!("KERNEL_HOSTILE_{i}");
        launch.env.insert(name.clone(), value.clone());
        expected.insert(name, value.clone());
    }
    let kernel = backend.launch(launch).await?;
    assert!(
        eventually(10 * SECOND, || out.exists()).await,
        "the kernel never ran"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    for (name, value) in &expected {
        assert_eq!(seen["env"][name].as_str(), Some(value.as_str()), "{name}");
    }
    assert_eq!(
        seen["env"]["KERNEL_USERNAME"].as_str(),
        Some(format!("$(touch {m})").as_str())
    );
    assert_eq!(seen["argv"][1].as_str(), Some(hostile_arg.as_str()));
    stop_and_check_gone(&kernel).await?;
    assert!(!marker.exists(), "a value was executed by the remote shell");
    let names: Vec<_> = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "unexpected files: {names:?}");
    Ok(())
}

/// Start, execute, interrupt, restart and shutdown of an ipykernel over SSH.
async fn exercise_ipykernel(
    backend: &SshResourceManager,
    launch: LaunchRequest,
) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let kernel = backend.launch(launch.clone()).await?;
    let mut client = KernelClient::connect(&kernel.connection, &SocketOptions::default()).await?;
    assert_eq!(client.kernel_info(60 * SECOND).await?.status, "ok");
    let start_latency = started.elapsed();
    let rtt_start = tokio::time::Instant::now();
    let outcome = client.execute("1 + 1", 30 * SECOND).await?;
    let rtt = rtt_start.elapsed();
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    eprintln!(
        "ssh launch {}: start-to-kernel_info {start_latency:?}, execute round trip {rtt:?}",
        launch.spec.name
    );
    assert_eq!(kernel.process.poll().await, ProcessState::Running);

    let running = tokio::spawn(async move {
        let outcome = client
            .execute("import time; time.sleep(30)", 60 * SECOND)
            .await;
        (client, outcome)
    });
    tokio::time::sleep(SECOND).await;
    kernel.process.interrupt().await?;
    let (mut client, outcome) = tokio::time::timeout(20 * SECOND, running).await??;
    assert_eq!(
        outcome?.error.map(|e| e.ename).as_deref(),
        Some("KeyboardInterrupt")
    );

    // Restart as the gateway does: shutdown_request, stop, launch again.
    client.shutdown(true, 10 * SECOND).await?;
    drop(client);
    stop_and_check_gone(&kernel).await?;
    let second = backend.launch(launch).await?;
    assert_ne!(second.connection.key, kernel.connection.key);
    let mut client = KernelClient::connect(&second.connection, &SocketOptions::default()).await?;
    assert_eq!(client.kernel_info(60 * SECOND).await?.status, "ok");
    client.shutdown(false, 10 * SECOND).await?;
    drop(client);
    stop_and_check_gone(&second).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_over_ssh_with_the_provisioner_launcher() -> anyhow::Result<()> {
    let remote = Remote::start(2).await?;
    let spec = provisioner_spec(
        &remote.dir.path().join("prefix"),
        &remote.hosts.names().join(","),
    )
    .await?;
    assert_eq!(spec.config.remote_hosts, remote.hosts.names());
    let backend = remote.backend(remote.options());
    exercise_ipykernel(&backend, with_venv_path(request(spec))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_over_ssh_with_the_agent() -> anyhow::Result<()> {
    let remote = Remote::start(1).await?;
    let py = python();
    let spec = agent_spec(
        remote.dir.path(),
        "agent_python",
        &[
            py.as_str(),
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ],
    )?;
    let backend = remote.backend(remote.options());
    exercise_ipykernel(&backend, request(spec)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelled_kernel_bound_to_the_remote_loopback() -> anyhow::Result<()> {
    let remote = Remote::start(1).await?;
    let py = python();
    let spec = agent_spec(
        remote.dir.path(),
        "loopback_python",
        &[
            py.as_str(),
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--ip=127.0.0.1",
        ],
    )?;
    let backend = remote.backend(SshOptions {
        tunneling: true,
        ..remote.options()
    });
    let kernel = backend.launch(request(spec)).await?;
    let record = kernel.process.record();
    let remote_info = &record.process["remote_connection"];
    assert_eq!(kernel.connection.ip, "127.0.0.1");
    assert_eq!(record.process["tunneled"], true);
    let remote_shell = remote_info["shell_port"].as_u64().unwrap_or(0);
    assert!(remote_shell > 0, "{record:?}");
    assert_ne!(u64::from(kernel.connection.shell_port), remote_shell);
    assert_ne!(
        u64::from(kernel.connection.hb_port),
        remote_info["hb_port"].as_u64().unwrap_or(0)
    );
    // The kernel is not reachable on the host's address: only through the tunnel.
    let direct = SocketAddr::new(
        remote.hosts.hosts[0].addr.into(),
        u16::try_from(remote_shell)?,
    );
    assert!(tokio::net::TcpStream::connect(direct).await.is_err());

    let mut client = KernelClient::connect(&kernel.connection, &SocketOptions::default()).await?;
    assert_eq!(client.kernel_info(60 * SECOND).await?.status, "ok");
    let outcome = client.execute("print(6 * 7)", 30 * SECOND).await?;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(kernel.process.poll().await, ProcessState::Running);
    // Interrupt through the tunnelled communication port.
    let running = tokio::spawn(async move {
        let outcome = client
            .execute("import time; time.sleep(30)", 60 * SECOND)
            .await;
        (client, outcome)
    });
    tokio::time::sleep(SECOND).await;
    kernel.process.interrupt().await?;
    let (mut client, outcome) = tokio::time::timeout(20 * SECOND, running).await??;
    assert_eq!(
        outcome?.error.map(|e| e.ename).as_deref(),
        Some("KeyboardInterrupt")
    );
    client.shutdown(false, 10 * SECOND).await?;
    drop(client);
    stop_and_check_gone(&kernel).await?;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", kernel.connection.shell_port))
            .await
            .is_err(),
        "tunnel listener left open"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keys_are_checked() -> anyhow::Result<()> {
    let remote = Remote::start(1).await?;
    let spec = agent_spec(remote.dir.path(), "sleeper", &["/bin/sleep", "60"])?;
    let empty = remote.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "")?;
    let strict = remote.backend(SshOptions {
        host_keys: HostKeys {
            known_hosts: Some(empty.clone()),
            accept_unknown: false,
        },
        ..remote.options()
    });
    let err = strict.launch(request(spec.clone())).await.err();
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("is not in"), "{message}");

    // A different key recorded for the host: refused even when unknown hosts are accepted.
    let other = remote.dir.path().join("other_key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()?;
    assert!(status.success());
    let other_pub = std::fs::read_to_string(other.with_extension("pub"))?;
    let changed = remote.dir.path().join("changed_known_hosts");
    std::fs::write(
        &changed,
        format!(
            "[{}]:{} {}",
            remote.hosts.hosts[0].addr, remote.hosts.port, other_pub
        ),
    )?;
    let mismatch = remote.backend(SshOptions {
        host_keys: HostKeys {
            known_hosts: Some(changed),
            accept_unknown: true,
        },
        ..remote.options()
    });
    let err = mismatch.launch(request(spec.clone())).await.err();
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("does not match"), "{message}");

    let lenient = remote.backend(SshOptions {
        host_keys: HostKeys {
            known_hosts: Some(empty),
            accept_unknown: true,
        },
        ..remote.options()
    });
    let kernel = lenient.launch(request(spec)).await?;
    stop_and_check_gone(&kernel).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_agent_authenticates() -> anyhow::Result<()> {
    let remote = Remote::start(1).await?;
    let socket = remote.dir.path().join("agent.sock");
    let _agent = tokio::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    assert!(
        eventually(5 * SECOND, || socket.exists()).await,
        "ssh-agent did not start"
    );
    let added = tokio::process::Command::new("ssh-add")
        .arg(remote.hosts.user_key())
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .await?;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let spec = agent_spec(remote.dir.path(), "sleeper", &["/bin/sleep", "60"])?;
    let nothing = remote.backend(SshOptions {
        auth: SshAuth::default(),
        ..remote.options()
    });
    let err = nothing.launch(request(spec.clone())).await.err();
    let message = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("no SSH key file, agent or password"),
        "{message}"
    );
    // Credentials refused on every host is an authentication failure (the gateway's 403), not
    // a launch failure (§17 row 6).
    assert!(
        matches!(err, Some(resource_managers::Error::Unauthorized(_))),
        "{err:?}"
    );
    let backend = remote.backend(SshOptions {
        auth: SshAuth {
            agent_socket: Some(socket),
            ..SshAuth::default()
        },
        ..remote.options()
    });
    let kernel = backend.launch(request(spec)).await?;
    stop_and_check_gone(&kernel).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_failures_bring_the_remote_log_back() -> anyhow::Result<()> {
    let remote = Remote::start(1).await?;
    let backend = remote.backend(remote.options());
    let quitter = spec(
        remote.dir.path(),
        "quitter",
        &[
            "/bin/sh",
            "-c",
            "echo the-real-reason-{kernel_id} >&2; exit 3",
        ],
        &[],
    )?;
    let launch = request(quitter);
    let kernel_id = launch.kernel_id.clone();
    let err = backend.launch(launch).await.err();
    let Some(Error::ExitedDuringLaunch { log_tail, .. }) = &err else {
        anyhow::bail!("expected ExitedDuringLaunch, got {err:?}");
    };
    assert!(
        log_tail.contains(&format!("the-real-reason-{kernel_id}")),
        "{log_tail}"
    );

    let marker = remote.dir.path().join("silent.pid");
    let script = format!(
        "echo waiting-forever; echo $$ > {}; exec sleep 60",
        marker.display()
    );
    let silent = spec(
        remote.dir.path(),
        "silent",
        &["/bin/sh", "-c", &script],
        &[],
    )?;
    let mut launch = request(silent);
    launch.timeout = 3 * SECOND;
    let err = backend.launch(launch).await.err();
    let Some(Error::LaunchTimeout(reason)) = &err else {
        anyhow::bail!("expected LaunchTimeout, got {err:?}");
    };
    assert!(reason.contains("Waited too long (3.0s)"), "{reason}");
    assert!(reason.contains("waiting-forever"), "{reason}");
    let pid: i32 = std::fs::read_to_string(&marker)?.trim().parse()?;
    assert!(
        eventually(5 * SECOND, || !group_exists(pid)).await,
        "launcher left running"
    );
    assert_eq!(remote.listener.pending_count(), 0);
    Ok(())
}

#[tokio::test]
async fn remote_user_follows_impersonation() -> anyhow::Result<()> {
    let remote = Remote::start(1).await?;
    let spec = spec(remote.dir.path(), "any", &["/bin/true"], &[])?;
    let mut launch = request(spec);
    launch.env.insert("KERNEL_USERNAME".into(), "alice".into());
    let plain = remote.backend(remote.options());
    assert_eq!(plain.remote_user(&launch)?, "root");
    let impersonating = remote.backend(SshOptions {
        impersonation: true,
        ..remote.options()
    });
    assert_eq!(impersonating.remote_user(&launch)?, "alice");
    launch
        .env
        .insert("KERNEL_USERNAME".into(), "bob; rm -rf /".into());
    assert!(impersonating.remote_user(&launch).is_err());
    Ok(())
}

/// A system user with a random password, made for one test and deleted when dropped.
struct PasswordUser {
    name: String,
    uid: u32,
    password: String,
}

impl PasswordUser {
    fn create() -> anyhow::Result<PasswordUser> {
        let name = format!("egpw{}", std::process::id());
        let status = std::process::Command::new("useradd")
            .args(["--no-create-home", "--home-dir", "/", "--shell", "/bin/sh"])
            .arg(&name)
            .status()?;
        anyhow::ensure!(status.success(), "useradd {name} failed: {status}");
        // From here on the guard deletes the user, whatever happens next.
        let mut user = PasswordUser {
            name,
            uid: 0,
            password: uuid::Uuid::new_v4().simple().to_string(),
        };
        let mut chpasswd = std::process::Command::new("chpasswd")
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = chpasswd.stdin.take() {
            use std::io::Write as _;
            writeln!(stdin, "{}:{}", user.name, user.password)?;
        }
        anyhow::ensure!(chpasswd.wait()?.success(), "chpasswd failed");
        let id = std::process::Command::new("id")
            .args(["-u", &user.name])
            .output()?;
        user.uid = String::from_utf8_lossy(&id.stdout).trim().parse()?;
        Ok(user)
    }
}

impl Drop for PasswordUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .status();
    }
}

/// The owner of a process, from `/proc/<pid>/status`.
fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_logs_in_and_a_wrong_one_is_unauthorized() -> anyhow::Result<()> {
    let user = PasswordUser::create()?;
    let remote = Remote::with_hosts(SshHosts::start_accepting_passwords(1).await?).await?;
    // The kernel runs as the new user: its log goes where that user may write.
    let logs = tempfile::tempdir()?;
    std::fs::set_permissions(
        logs.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    let spec = agent_spec(remote.dir.path(), "sleeper", &["/bin/sleep", "60"])?;
    let with_password = |password: &str| SshOptions {
        remote_user: Some(user.name.clone()),
        auth: SshAuth {
            password: Some(Secret::new(password)),
            ..SshAuth::default()
        },
        remote_log_dir: Some(logs.path().to_path_buf()),
        ..remote.options()
    };

    let wrong = remote.backend(with_password("not-the-password"));
    let err = wrong.launch(request(spec.clone())).await.err();
    assert!(matches!(err, Some(Error::Unauthorized(_))), "{err:?}");
    let told = format!(
        "{err:?} {}",
        err.as_ref().map(ToString::to_string).unwrap_or_default()
    );
    assert!(
        !told.contains("not-the-password"),
        "the password leaked: {told}"
    );

    let right = remote.backend(with_password(&user.password));
    let kernel = right.launch(request(spec)).await?;
    assert_eq!(kernel.process.poll().await, ProcessState::Running);
    let pgid = int(kernel.process.as_ref(), "pgid");
    assert_eq!(
        uid_of(pgid),
        Some(user.uid),
        "the kernel runs as the SSH user"
    );
    let launcher = int(kernel.process.as_ref(), "launcher_group");
    assert_eq!(uid_of(launcher), Some(user.uid));
    stop_and_check_gone(&kernel).await
}
