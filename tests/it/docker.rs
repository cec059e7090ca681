//! The Docker and Docker Swarm backends against a real Docker engine (Debian's `docker.io`):
//! the harness starts `dockerd` on a private socket and a loopback TCP port (its own data and
//! exec roots, no bridge, no iptables rules), builds a kernel image from a directory it assembles (no registry can be
//! reached), and runs gateways of ours whose kernels join the host network.
//!
//! The image holds this machine's Python and the test venv (hard links, at their own paths,
//! with the shared libraries `ldd` names), bash, tini as process 1 (as in EG's images: a kernel
//! whose parent is process 1 stops itself) and gateway_provisioners' unchanged
//! `bootstrap-kernel.sh` as its command, so a container runs a kernel the way EG's images do.
//!
//! One test, in order (one engine, one image build): plain containers through EG's path
//! (`launch_docker.py` from the gateway_provisioners wheel, run by the gateway) and the
//! native path (the gateway creates the container through the API), each started, executed,
//! interrupted and shut down, the container found with EG's labels and the kernel's user while
//! it runs and gone afterwards, each in the client's `KERNEL_WORKING_DIR` (the gateway mirrors
//! them: the kernel's `os.getcwd()` and the container's `WorkingDir` / the service's
//! `ContainerSpec.Dir`), the native ones under a profile whose limits the engine shows
//! (`HostConfig.Memory`/`NanoCpus`, the service's `Resources.Limits`); a bad image fails
//! within the deadline with the engine's reason and leaves no container; a client's malformed image or user name is a 400 naming the field;
//! then `docker swarm init` on this single node and a swarm service kernel started, executed
//! and shut down, the service removed. Last, a second gateway with `EG_REMOVE_CONTAINER=False`
//! starts and shuts down a kernel on each container path: the container is still there,
//! exited, afterwards (the test removes it). The swarm is left and the engine stopped at the end.

use std::collections::BTreeSet;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::support::{
    Gateway, GatewayConfig, Impl, Proc, fixture, free_port, run_bounded, site_packages, venv,
};

/// The image the harness builds.
const IMAGE: &str = "eg-test/kernel-py:1";

/// The profile the native kernels start under, and the limits the engine then shows.
const PROFILE: &str = "small";
const PROFILES: &str = r#"
[[profiles]]
name = "small"
kernelspecs = ["docker_native", "swarm_native"]
resources = { memory = "1G", cpus = 1 }
"#;
const PROFILE_MEMORY: &str = "1073741824";
const PROFILE_NANO_CPUS: &str = "1000000000";

/// A Docker engine of the test's own, stopped (and its swarm left) when dropped. It listens on
/// a unix socket and on a plain TCP port on loopback.
pub(crate) struct Engine {
    dir: PathBuf,
    socket: PathBuf,
    tcp_port: u16,
    daemon: Option<Proc>,
    swarm: bool,
}

impl Engine {
    /// Starts `dockerd` under `dir` (a short path: the socket path must stay under 100 bytes).
    pub(crate) fn start(dir: &Path) -> Result<Engine> {
        let socket = dir.join("d.sock");
        let tcp_port = free_port()?;
        let mut cmd = Command::new("/usr/sbin/dockerd");
        cmd.arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--host")
            .arg(format!("tcp://127.0.0.1:{tcp_port}"))
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("d.pid"))
            .args([
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--log-level=info",
            ]);
        let daemon = Proc::spawn(
            "dockerd",
            cmd,
            &dir.join("dockerd.log"),
            Some("API listen on"),
            Duration::from_secs(60),
        )?;
        Ok(Engine {
            dir: dir.to_path_buf(),
            socket,
            tcp_port,
            daemon: Some(daemon),
            swarm: false,
        })
    }

    /// Its unix socket as `DOCKER_HOST` names it.
    pub(crate) fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Its TCP port as `DOCKER_HOST` names it.
    pub(crate) fn tcp_host(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.tcp_port)
    }

    /// Runs the docker CLI against this engine; its output, or an error with it.
    pub(crate) fn docker(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", self.host())
            .env("DOCKER_BUILDKIT", "0")
            .env("DOCKER_CONFIG", self.dir.join("cli"));
        let log = self.dir.join("docker-cli.log");
        let (status, output) = run_bounded("docker", cmd, &log, Duration::from_secs(300))?;
        if !status.success() {
            bail!("docker {args:?} failed ({status}):\n{output}");
        }
        Ok(output)
    }

    /// Ids of containers (all, running or not) labelled with the kernel id.
    pub(crate) fn containers_of(&self, kernel_id: &str) -> Result<Vec<String>> {
        let out = self.docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=kernel_id={kernel_id}"),
        ])?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }

    /// Ids of services labelled with the kernel id.
    fn services_of(&self, kernel_id: &str) -> Result<Vec<String>> {
        let out = self.docker(&[
            "service",
            "ls",
            "-q",
            "--filter",
            &format!("label=kernel_id={kernel_id}"),
        ])?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }

    fn swarm_init(&mut self) -> Result<()> {
        self.docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            "127.0.0.1:0",
        ])?;
        self.swarm = true;
        Ok(())
    }

    /// Leaves the swarm and stops the daemon (SIGTERM: it stops its containers and containerd).
    pub(crate) fn stop(&mut self) {
        if self.swarm {
            self.swarm = false;
            if let Err(err) = self.docker(&["swarm", "leave", "--force"]) {
                eprintln!("leaving the swarm: {err:#}");
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop(Duration::from_secs(30));
            daemon.mark_passed();
            // dockerd leaves its default network namespace mounted in the exec root, which
            // would keep the test's directory from being removed.
            let netns = self.dir.join("x/netns/default");
            if netns.exists() {
                let _ = Command::new("umount").arg(&netns).status();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel image
// ---------------------------------------------------------------------------------------------

/// Hard-links (copies across file systems) `src` into `root` at its own absolute path, skipping
/// relative paths `skip` refuses; symlinks are recreated.
fn link_tree(src: &Path, root: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<()> {
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let target = root.join(dir.strip_prefix("/").unwrap_or(&dir));
        std::fs::create_dir_all(&target)?;
        let mode = std::fs::metadata(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .permissions()
            .mode();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            let rel = path.strip_prefix(src).unwrap_or(&path);
            if skip(rel) {
                continue;
            }
            let kind = entry.file_type()?;
            let dest = target.join(entry.file_name());
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                symlink(std::fs::read_link(&path)?, &dest)
                    .with_context(|| format!("linking {}", dest.display()))?;
            } else if std::fs::hard_link(&path, &dest).is_err() {
                std::fs::copy(&path, &dest)
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Places one file at its canonical path under `root` (and the path asked for, as a symlink,
/// when that differs).
fn link_file(file: &Path, root: &Path) -> Result<()> {
    let real =
        std::fs::canonicalize(file).with_context(|| format!("resolving {}", file.display()))?;
    let dest = root.join(real.strip_prefix("/").unwrap_or(&real));
    if !dest.exists() {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::hard_link(&real, &dest).is_err() {
            std::fs::copy(&real, &dest)?;
        }
    }
    // The name asked for (a library's soname link), in the merged-/usr layout of the image.
    let asked = file.strip_prefix("/").unwrap_or(file);
    let merged = match asked
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy())
    {
        Some(top) if ["lib", "lib64", "bin", "sbin"].contains(&top.as_ref()) => {
            Path::new("usr").join(asked)
        }
        _ => asked.to_path_buf(),
    };
    let alias = root.join(merged);
    if alias != dest && std::fs::symlink_metadata(&alias).is_err() {
        if let Some(parent) = alias.parent() {
            std::fs::create_dir_all(parent)?;
        }
        symlink(&real, &alias).with_context(|| format!("linking {}", alias.display()))?;
    }
    Ok(())
}

/// The shared libraries `ldd` names for these files.
fn libraries_of(files: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for chunk in files.chunks(200) {
        let out = Command::new("ldd")
            .args(chunk)
            .output()
            .context("running ldd")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                // `/lib64/ld-linux-x86-64.so.2 (0x...)`, not the `/path/file:` headers.
                None if line.starts_with('/') && !line.ends_with(':') => {
                    line.split_whitespace().next()
                }
                None => None,
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libs.insert(PathBuf::from(path));
            }
        }
    }
    Ok(libs)
}

/// Every `*.so*` file under `dir`.
fn shared_objects(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            shared_objects(&path, out)?;
        } else if kind.is_file() && entry.file_name().to_string_lossy().contains(".so") {
            out.push(path);
        }
    }
    Ok(())
}

/// Assembles the image directory and builds [`IMAGE`] on the engine.
pub(crate) fn build_image(engine: &Engine, dir: &Path) -> Result<()> {
    let assembling = std::time::Instant::now();
    let ctx = dir.join("image");
    let venv = venv()?;
    let python = std::fs::canonicalize(venv.join("bin/python"))?;
    let prefix = python
        .parent()
        .and_then(Path::parent)
        .context("the venv's python has no prefix")?
        .to_path_buf();
    let version = python
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The interpreter's standard library, without its tests, site-packages (the venv has its
    // own), static library and GUI modules.
    let stdlib_skip: Vec<PathBuf> = [
        "test",
        "site-packages",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
    ]
    .iter()
    .map(|s| Path::new("lib").join(&version).join(s))
    .collect();
    link_tree(&prefix, &ctx, &|rel: &Path| {
        stdlib_skip.iter().any(|s| rel == s)
            || rel.starts_with("include")
            || rel.starts_with("share")
            || rel.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("config-") || n.to_string_lossy().ends_with(".a")
            })
    })?;
    // The venv, with the packages a kernel loads (and every package's metadata).
    let site = site_packages(&venv)?;
    let site_rel = site.strip_prefix(&venv).unwrap_or(&site).to_path_buf();
    let launchers = site.join("gateway_provisioners/kernel-launchers");
    let out = Command::new(venv.join("bin/python"))
        .arg(fixture("kernel_modules.py"))
        .arg(&launchers)
        .output()
        .context("listing the modules a kernel loads")?;
    if !out.status.success() {
        bail!(
            "kernel_modules.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wanted: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    link_tree(&venv, &ctx, &|rel: &Path| {
        rel.parent() == Some(site_rel.as_path())
            && rel.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                !(wanted.contains(n.as_ref())
                    || n.ends_with(".dist-info")
                    || n.ends_with(".pth")
                    || n.ends_with(".libs"))
            })
    })?;
    // bash and env for bootstrap-kernel.sh, and every shared library anything here needs.
    let mut objects = vec![
        python.clone(),
        PathBuf::from("/usr/bin/bash"),
        PathBuf::from("/usr/bin/env"),
    ];
    let in_image = |path: &Path| ctx.join(path.strip_prefix("/").unwrap_or(path));
    shared_objects(&in_image(&prefix.join("lib")), &mut objects)
        .context("listing the interpreter's libraries")?;
    shared_objects(&in_image(&site), &mut objects).context("listing the venv's libraries")?;
    for file in ["/usr/bin/bash", "/usr/bin/env", "/usr/bin/tini-static"] {
        link_file(Path::new(file), &ctx)?;
    }
    for lib in libraries_of(&objects)? {
        // Libraries inside the trees already linked (pyzmq's bundled ones) are there.
        if lib.starts_with(&ctx) {
            continue;
        }
        link_file(&lib, &ctx)?;
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if !ctx.join(link).exists() {
            std::fs::create_dir_all(ctx.join(to))?;
            symlink(to, ctx.join(link))?;
        }
    }
    link_file(Path::new("/lib64/ld-linux-x86-64.so.2"), &ctx)?;
    let tmp = ctx.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    // The launchers assembled as EG's images have them (gateway_provisioners' wheel keeps the
    // communication-port listener in shared/, the Python launcher expects it beside itself).
    let launchers = ctx.join("usr/local/bin/kernel-launchers");
    for (from, to) in [
        (
            "python/scripts/launch_ipykernel.py",
            "python/scripts/launch_ipykernel.py",
        ),
        (
            "shared/scripts/server_listener.py",
            "python/scripts/server_listener.py",
        ),
        (
            "bootstrap/bootstrap-kernel.sh",
            "bootstrap/bootstrap-kernel.sh",
        ),
    ] {
        let dest = launchers.join(to);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(
            site.join("gateway_provisioners/kernel-launchers")
                .join(from),
            &dest,
        )?;
    }
    let launchers = Path::new("/usr/local/bin/kernel-launchers");
    let dockerfile = format!(
        "FROM scratch\nCOPY . /\nENV PATH={venv}/bin:/usr/bin:/bin HOME=/tmp KERNEL_LAUNCHERS_DIR={launchers}\n\
         ENTRYPOINT [\"/usr/bin/tini-static\", \"-g\", \"--\"]\n\
         CMD [\"/usr/bin/bash\", \"{launchers}/bootstrap/bootstrap-kernel.sh\"]\n",
        venv = venv.display(),
        launchers = launchers.display(),
    );
    std::fs::write(dir.join("Dockerfile"), dockerfile)?;
    println!("image directory assembled in {:.1?}", assembling.elapsed());
    let started = std::time::Instant::now();
    engine.docker(&[
        "build",
        "-q",
        "-t",
        IMAGE,
        "-f",
        &dir.join("Dockerfile").display().to_string(),
        &ctx.display().to_string(),
    ])?;
    println!("image {IMAGE} built in {:.1?}", started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Kernelspecs and the driver
// ---------------------------------------------------------------------------------------------

/// A kernelspec `name` of EG's `class` (`DockerProcessProxy` or `DockerSwarmProcessProxy`),
/// EG's path (gateway_provisioners' `launch_docker.py` from the wheel) or the native one.
pub(crate) fn kernelspec(share: &Path, name: &str, class: &str, native: bool) -> Result<()> {
    let venv = venv()?;
    let script = site_packages(&venv)?
        .join("gateway_provisioners/kernel-launchers/docker/scripts/launch_docker.py");
    let mut argv = vec![
        venv.join("bin/python").display().to_string(),
        script.display().to_string(),
    ];
    for arg in [
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
    ] {
        argv.push(arg.to_owned());
    }
    let mut config = serde_json::json!({ "image_name": IMAGE });
    if native {
        config["launch"] = "native".into();
    }
    let dir = share.join("kernels").join(name);
    std::fs::create_dir_all(&dir)?;
    let spec = serde_json::json!({
        "argv": argv,
        "display_name": name,
        "language": "python",
        "metadata": {"process_proxy": {
            "class_name": format!("enterprise_gateway.services.processproxies.docker_swarm.{class}"),
            "config": config,
        }},
        "env": {"HOME": "/tmp", "IPYTHONDIR": "/tmp/.ipython"},
    });
    std::fs::write(dir.join("kernel.json"), spec.to_string())?;
    Ok(())
}

/// Runs the driver; its output (it failed: an error with it).
pub(crate) fn driver(dir: &Path, gateway: &Gateway, args: &[&str], log: &str) -> Result<String> {
    let (command, rest) = args.split_first().context("no driver command")?;
    let mut cmd = Command::new(venv()?.join("bin/python"));
    cmd.arg(fixture("docker_driver.py"))
        .arg(command)
        .arg(gateway.url())
        .arg("-")
        .args(rest)
        .env("PYTHONUNBUFFERED", "1");
    let (status, output) = run_bounded(log, cmd, &dir.join(log), Duration::from_secs(180))?;
    println!("{output}");
    if !status.success() {
        bail!(
            "{log} failed ({status}):\n{output}\ngateway log:\n{}",
            gateway.proc.log_tail(40)
        );
    }
    Ok(output)
}

/// The id a driver `start` printed.
pub(crate) fn kernel_id(output: &str) -> Result<String> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("KERNEL "))
        .map(|s| s.trim().to_owned())
        .context("the driver printed no kernel id")
}

/// `(status, seconds, body)` of a driver `post`.
fn posted(output: &str) -> Result<(u16, f64, serde_json::Value)> {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("STATUS "))
        .context("the driver printed no status")?;
    let mut parts = line.splitn(3, ' ');
    let status = parts.next().unwrap_or_default().parse()?;
    let took = parts.next().unwrap_or_default().parse()?;
    let body = serde_json::from_str(parts.next().unwrap_or_default()).unwrap_or_default();
    Ok((status, took, body))
}

/// One kernel's life: start (execute, interrupt), its workload while it runs, shutdown, and
/// nothing left afterwards.
async fn lifecycle(
    engine: &Engine,
    dir: &Path,
    gateway: &Gateway,
    spec: &str,
    swarm: bool,
) -> Result<()> {
    // Every kernel gets a working directory (the gateway mirrors them); the native ones also
    // the profile with limits (the launcher path does not apply a profile's limits).
    let native = spec.ends_with("_native");
    let work_dir = format!("/tmp/work-{spec}");
    let mut env = serde_json::json!({
        "KERNEL_USERNAME": "alice",
        "KERNEL_UID": "1000",
        "KERNEL_GID": "100",
        "KERNEL_WORKING_DIR": work_dir,
    });
    if native {
        env["KERNEL_PROFILE"] = PROFILE.into();
    }
    let out = driver(
        dir,
        gateway,
        &["start", spec, &env.to_string()],
        &format!("{spec}-start.log"),
    )?;
    assert!(
        out.contains(&format!("CWD {work_dir}\n")),
        "the kernel runs in KERNEL_WORKING_DIR: {out}"
    );
    let id = kernel_id(&out)?;
    // The native path runs as KERNEL_UID:KERNEL_GID; launch_docker.py sets the user id only
    // (the group is then the image's, 0, with KERNEL_GID and 100 added), as EG does.
    let ids = if native { "IDS 1000 100" } else { "IDS 1000 " };
    assert!(out.contains(ids), "the kernel runs as KERNEL_UID: {out}");
    if swarm {
        let services = engine.services_of(&id)?;
        assert_eq!(
            services.len(),
            1,
            "one service for kernel {id}: {services:?}"
        );
        let name = engine.docker(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.Name}}",
            &services[0],
        ])?;
        assert_eq!(name.trim(), format!("alice-{id}"));
        let task = engine.docker(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Dir}} {{with .Spec.TaskTemplate.Resources}}{{with .Limits}}{{.MemoryBytes}} {{.NanoCPUs}}{{end}}{{end}}",
            &services[0],
        ])?;
        let task: Vec<&str> = task.split_whitespace().collect();
        let expected = if native {
            vec![work_dir.as_str(), PROFILE_MEMORY, PROFILE_NANO_CPUS]
        } else {
            vec![work_dir.as_str()]
        };
        assert_eq!(task, expected, "the service's working directory and limits");
    } else {
        let containers = engine.containers_of(&id)?;
        assert_eq!(
            containers.len(),
            1,
            "one container for kernel {id}: {containers:?}"
        );
        let facts = engine.docker(&[
            "inspect",
            "--format",
            "{{.Name}} {{.Config.User}} {{.State.Status}} {{index .Config.Labels \"component\"}} {{.HostConfig.NetworkMode}} {{.Config.WorkingDir}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
            &containers[0],
        ])?;
        let facts: Vec<&str> = facts.split_whitespace().collect();
        assert_eq!(
            facts.first().copied(),
            Some(format!("/alice-{id}").as_str()),
            "{facts:?}"
        );
        assert!(
            facts.get(1).is_some_and(|u| u.starts_with("1000")),
            "{facts:?}"
        );
        let (memory, cpus) = if native {
            (PROFILE_MEMORY, PROFILE_NANO_CPUS)
        } else {
            ("0", "0")
        };
        assert_eq!(
            facts.get(2..).unwrap_or_default(),
            ["running", "kernel", "host", work_dir.as_str(), memory, cpus],
            "{facts:?}"
        );
    }
    driver(dir, gateway, &["stop", &id], &format!("{spec}-stop.log"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = if swarm {
            engine.services_of(&id)?
        } else {
            engine.containers_of(&id)?
        };
        if left.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("kernel {id}'s workload is still there after shutdown: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn e2e_docker_and_swarm_kernels_on_a_real_engine() -> Result<()> {
    // Short: dockerd's and containerd's socket paths live under it.
    let dir = tempfile::Builder::new().prefix("dk").tempdir_in("/tmp")?;
    let d = dir.path();
    let mut engine = Engine::start(d)?;
    build_image(&engine, d)?;

    let share = d.join("share");
    kernelspec(&share, "docker_eg", "DockerProcessProxy", false)?;
    kernelspec(&share, "docker_native", "DockerProcessProxy", true)?;
    kernelspec(&share, "swarm_native", "DockerSwarmProcessProxy", true)?;
    kernelspec(&share, "swarm_eg", "DockerSwarmProcessProxy", false)?;
    let profiles = d.join("profiles.toml");
    std::fs::write(&profiles, PROFILES)?;
    let config = GatewayConfig {
        jupyter_path: vec![share.clone()],
        env: vec![
            ("DOCKER_HOST".into(), engine.host()),
            ("EG_DOCKER_NETWORK".into(), "host".into()),
            ("EG_KERNEL_LAUNCH_TIMEOUT".into(), "40".into()),
            ("EG_MIRROR_WORKING_DIRS".into(), "True".into()),
            (
                "EG_KERNEL_LOG_DIR".into(),
                d.join("kernel-logs").display().to_string(),
            ),
        ],
        args: vec![format!("--profiles_file={}", profiles.display())],
    };
    let mut gateway = Gateway::start(Impl::Ours, &config)?;
    let result = kernels(&mut engine, d, &gateway).await;
    if result.is_err() {
        // The kernels' logs (the containers' output is kept there when they are removed).
        for entry in std::fs::read_dir(d.join("kernel-logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            eprintln!("----- {} -----\n{text}", entry.path().display());
        }
        return result;
    }
    gateway.proc.stop(Duration::from_secs(20));
    gateway.proc.mark_passed();

    // EG_REMOVE_CONTAINER=False: a shutdown stops the kernel's container and leaves it for
    // the operator to look at, on both paths (the launcher is told the same).
    let mut keep = config.clone();
    keep.env
        .push(("EG_REMOVE_CONTAINER".into(), "False".into()));
    let mut gateway = Gateway::start(Impl::Ours, &keep)?;
    for spec in ["docker_native", "docker_eg"] {
        kept_after_shutdown(&engine, d, &gateway, spec).await?;
    }
    gateway.proc.stop(Duration::from_secs(20));
    gateway.proc.mark_passed();
    engine.stop();
    Ok(())
}

/// A kernel started and shut down by a gateway with `EG_REMOVE_CONTAINER=False`: its container
/// must still be there, stopped; the test then removes it.
async fn kept_after_shutdown(
    engine: &Engine,
    d: &Path,
    gateway: &Gateway,
    spec: &str,
) -> Result<()> {
    let env = r#"{"KERNEL_USERNAME": "alice"}"#;
    let out = driver(
        d,
        gateway,
        &["start", spec, env],
        &format!("{spec}-keep-start.log"),
    )?;
    let id = kernel_id(&out)?;
    driver(d, gateway, &["stop", &id], &format!("{spec}-keep-stop.log"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let state = loop {
        let containers = engine.containers_of(&id)?;
        let [container] = containers.as_slice() else {
            bail!(
                "{spec}: kernel {id} should keep exactly one container after shutdown: {containers:?}"
            );
        };
        let state = engine.docker(&["inspect", "--format", "{{.State.Status}}", container])?;
        if state.trim() != "running" || std::time::Instant::now() > deadline {
            break (container.clone(), state.trim().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        state.1, "exited",
        "{spec}: the kept container of kernel {id} is stopped"
    );
    engine.docker(&["rm", "-f", &state.0])?;
    assert!(engine.containers_of(&id)?.is_empty());
    Ok(())
}

/// Every kernel of the test, on one gateway and engine.
async fn kernels(engine: &mut Engine, d: &Path, gateway: &Gateway) -> Result<()> {
    lifecycle(engine, d, gateway, "docker_native", false).await?;
    lifecycle(engine, d, gateway, "docker_eg", false).await?;

    // A bad image: the engine's reason within the deadline, nothing left behind.
    for spec in ["docker_native", "docker_eg"] {
        let env = r#"{"KERNEL_USERNAME": "alice", "KERNEL_IMAGE": "eg-test/no-such-image:1"}"#;
        let out = driver(
            d,
            gateway,
            &["post", spec, env],
            &format!("{spec}-bad-image.log"),
        )?;
        let (status, took, body) = posted(&out)?;
        let reason = body["reason"].as_str().unwrap_or_default().to_owned()
            + body["message"].as_str().unwrap_or_default();
        assert_eq!(status, 500, "{out}");
        assert!(took < 40.0, "{spec}: the failure took {took} s");
        assert!(
            reason.contains("no-such-image")
                && (reason.contains("pull")
                    || reason.contains("registry")
                    || reason.contains("No such image")),
            "{spec}: the engine's reason is missing: {reason}"
        );
        let all = engine.docker(&["ps", "-aq"])?;
        assert!(
            all.trim().is_empty(),
            "{spec}: containers left behind: {all}"
        );
    }
    // Client values the engine would refuse are 400s naming the field.
    for (env, field) in [
        (r#"{"KERNEL_IMAGE": "Bad Image!"}"#, "KERNEL_IMAGE"),
        (r#"{"KERNEL_USERNAME": "al/ice"}"#, "KERNEL_USERNAME"),
    ] {
        let out = driver(
            d,
            gateway,
            &["post", "docker_native", env],
            "bad-values.log",
        )?;
        let (status, _, body) = posted(&out)?;
        assert_eq!(status, 400, "{out}");
        assert!(body.to_string().contains(field), "{out}");
    }
    let (status, _, body) = posted(&driver(
        d,
        gateway,
        &["post", "docker_native", r#"{"KERNEL_UID": "0"}"#],
        "uid-0.log",
    )?)?;
    assert_eq!(status, 403, "{body}");

    // Swarm mode on this single node.
    engine.swarm_init()?;
    lifecycle(engine, d, gateway, "swarm_native", true).await?;
    lifecycle(engine, d, gateway, "swarm_eg", true).await?;

    Ok(())
}
