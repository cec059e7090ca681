//! Python (ipykernel), Scala (Apache Toree 0.5.0) and R (IRkernel) kernels with a real Spark
//! standalone master and worker on loopback, through our gateway with Jupyter Server 2's gateway
//! client in front (so each language's cells cross a real notebook server too).
//!
//! Spark is `.venv-spark3`'s pyspark 3.5.7 (Scala 2.12, Java 17): Toree 0.5.0 is built for
//! Spark 3 / Scala 2.12 and does not run on pyspark 4's Scala 2.13. The kernelspecs are the
//! forms deployments have, made by the tools that make them where those work:
//! * local (EG's `LocalProcessProxy`): Python as a plain ipykernel spec, Scala from Toree's own
//!   `jupyter toree install`, R as IRkernel's own kernelspec (Debian's `r-cran-irkernel`);
//! * SSH (gateway_provisioners' `distributed-provisioner`, a real sshd on 127.0.0.2): Python and
//!   Scala from `jupyter-ssh-spec install --spark --spark-init-mode lazy`, R assembled from the
//!   wheel's own template and `launch_IRkernel.R` (GP 0.5.0's installer looks for
//!   `kernel-launchers/r` while the wheel ships `kernel-launchers/R`, so `--language R` fails),
//!   and our agent (`kernel-launcher`): Python and R (IRkernel) each in lazy and in eager mode,
//!   Scala as Toree's own kernelspec (its `run.sh` argv and env) behind the agent in lazy mode
//!   (the agent passes the mode on to Toree; the test reads the argv the agent logged);
//! * YARN cluster mode (the RM emulator, the launcher as the application master): Python from
//!   and Scala from `jupyter-yarn-spec install --spark-init-mode lazy`, R from the wheel's
//!   `yarn_spark_r` template. For Scala the stand-in `spark-submit` runs GP's Toree launcher jar
//!   in the AM through the real `spark-submit` of the AM's `SPARK_HOME` (Spark's jars, `--jars`
//!   with Toree's assembly, `--class launcher.ToreeLauncher`).
//!
//! Deployment values the installers leave to the operator (`PYSPARK_PYTHON`) are set; the small
//! Spark settings come in `KERNEL_EXTRA_SPARK_OPTS` from the notebook server's environment.
//!
//! R's Spark cells are a stand-in for SparkR: SparkR cannot be installed on this machine (CRAN
//! is not reachable from it, SparkR is in neither Debian nor PyPI, and pyspark's wheel leaves
//! its R package out). The R kernels' DataFrame cell goes through Debian's `r-cran-reticulate`
//! to pyspark instead: it builds a real SparkSession on the standalone master (from the
//! kernel's `PYSPARK_SUBMIT_ARGS`, or the AM's `SPARK_CONF_DIR` on YARN), counts a DataFrame,
//! and the checks on the master (the application while the kernel lives, a new one after the
//! restart, none after the shutdown) are the same as for the other languages. What this does
//! not show is SparkR itself, nor GP's `launch_IRkernel.R` lazy/eager modes (they load SparkR),
//! so the R specs with GP's launcher keep mode `none` there. Every language's DataFrame cell
//! runs on every backend (local, SSH with GP's launchers and with our agent, YARN).
//!
//! A missing runtime fails the start at once, with the executable and the host in the reason:
//! Toree whose `JAVA_HOME` names no Java locally (`local_scala_no_java`: the kernel's log and
//! "on the gateway's host") and in the YARN application master (`yarn_scala_no_java`: the RM's
//! diagnostics with the AM's stderr, and the AM's host), and an R the agent cannot find over SSH
//! (`agent_r_missing`).
//!
//! Interrupts wait until the loop cell has printed that it is running: Toree 0.5.0 never
//! answers a cell interrupted while it is still being compiled (see the driver's
//! `wait_running`); `ssh_scala_fallback` interrupts a Toree kernel whose communication port
//! does not answer, so the gateway signals over SSH with the signal Toree listens for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use test_support::spark::SparkCluster;

use crate::jupyter_server::JupyterServer;
use crate::support::{
    Gateway, GatewayConfig, Impl, Proc, built_binary, fixture, run_bounded, site_packages, venv,
    workspace_root,
};

// The sshd harness is compiled once, as `store_ssh::sshd`.
use crate::store_ssh::sshd;

/// `.venv-spark3` (`requirements/spark3.txt`, made by `cargo xtask setup`).
fn venv_spark3() -> Result<PathBuf> {
    let dir = workspace_root().join(".venv-spark3");
    if !dir.join("bin/python").exists() {
        bail!(
            "{} is missing: run `cargo xtask setup` (pyspark 3.5.7 and Apache Toree 0.5.0 from \
             requirements/spark3.txt)",
            dir.display()
        );
    }
    Ok(dir)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Runs an installer command to completion; fails with its output.
fn install(what: &str, mut cmd: Command, data_dir: &Path, log: &Path) -> Result<()> {
    cmd.env("JUPYTER_DATA_DIR", data_dir)
        .env_remove("JUPYTER_PATH")
        .env_remove("SPARK_HOME");
    let (status, output) = run_bounded(what, cmd, log, Duration::from_secs(120))?;
    if !status.success() {
        bail!("{what} failed ({status}):\n{output}");
    }
    Ok(())
}

/// Every kernelspec of the test, under `<dir>/kernels`.
struct Specs {
    kernels: PathBuf,
}

fn make_specs(dir: &Path, spark_home: &Path, master: &str) -> Result<Specs> {
    let kernels = dir.join("kernels");
    std::fs::create_dir_all(&kernels)?;
    let spark3 = venv_spark3()?;
    let python3 = spark3.join("bin/python").display().to_string();
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let local_env = serde_json::json!({
        "SPARK_HOME": spark_home,
        "PYSPARK_PYTHON": python3,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "TMPDIR": tmp,
    });
    let small = "--conf spark.cores.max=1 --conf spark.executor.memory=512m --driver-memory 512m \
                 --conf spark.ui.enabled=false --conf spark.driver.host=127.0.0.1";

    // Local Python: a plain ipykernel spec in EG's local form; the cell builds its session from
    // PYSPARK_SUBMIT_ARGS.
    let mut env = local_env.clone();
    env["PYSPARK_SUBMIT_ARGS"] = format!("--master {master} {small} pyspark-shell").into();
    write_json(
        &kernels.join("local_python/kernel.json"),
        &serde_json::json!({
            "argv": [python3, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Spark - Python (local)",
            "language": "python",
            "env": env,
            "metadata": {"process_proxy": {"class_name":
                "enterprise_gateway.services.processproxies.processproxy.LocalProcessProxy"}},
        }),
    )?;

    // Local Scala: Toree's own installer (`jupyter toree install`, into JUPYTER_DATA_DIR).
    let mut toree = Command::new(spark3.join("bin/jupyter"));
    toree
        .args([
            "toree",
            "install",
            "--user",
            "--kernel_name=local",
            "--interpreters=Scala",
        ])
        .arg(format!("--spark_home={}", spark_home.display()))
        .arg(format!("--spark_opts=--master {master} {small}"));
    install(
        "jupyter toree install",
        toree,
        dir,
        &dir.join("toree-install.log"),
    )?;
    let scala = kernels.join("local_scala/kernel.json");
    let mut spec = read_json(&scala)?;
    spec["env"]["SPARK_LOCAL_IP"] = "127.0.0.1".into();
    write_json(&scala, &spec)?;
    // The same Toree spec on a host whose JAVA_HOME names no Java.
    spec["env"]["JAVA_HOME"] = "/opt/no-java-17".into();
    spec["display_name"] = "Toree without Java".into();
    write_json(&kernels.join("local_scala_no_java/kernel.json"), &spec)?;

    // Local R: IRkernel's own kernelspec, as Debian installs it, with the deployment's Spark
    // settings in its env (its Spark cell uses pyspark through reticulate).
    copy_dir(
        Path::new("/usr/lib/R/site-library/IRkernel/kernelspec"),
        &kernels.join("local_r"),
    )?;
    let local_r = kernels.join("local_r/kernel.json");
    let mut spec = read_json(&local_r)?;
    let mut env = local_env.clone();
    env["PYSPARK_SUBMIT_ARGS"] = format!("--master {master} {small} pyspark-shell").into();
    // The local backend gives a kernel only the composed environment, and R exports an empty
    // PATH when it has none, on which pyspark's `#!/usr/bin/env bash` spark-submit is not found.
    env["PATH"] = "/usr/bin:/bin".into();
    spec["env"] = env;
    write_json(&local_r, &spec)?;

    // SSH Python and Scala: gateway_provisioners' installer, lazy Spark context.
    for language in ["Python", "Scala"] {
        let mut gp = Command::new(venv()?.join("bin/jupyter-ssh-spec"));
        gp.args(["install", "--user", "--spark", "--spark-init-mode=lazy"])
            .arg(format!("--language={language}"))
            .arg(format!("--kernel-name=ssh_{}", language.to_lowercase()))
            .arg(format!("--spark-home={}", spark_home.display()))
            .arg(format!("--spark-master={master}"))
            .arg("--remote-hosts=127.0.0.2");
        install(
            "jupyter-ssh-spec install",
            gp,
            dir,
            &dir.join(format!("gp-{language}.log")),
        )?;
    }
    let ssh_python = kernels.join("ssh_python_spark/kernel.json");
    let mut spec = read_json(&ssh_python)?;
    spec["env"]["PYSPARK_PYTHON"] = python3.clone().into();
    spec["env"]["TMPDIR"] = tmp.display().to_string().into();
    write_json(&ssh_python, &spec)?;
    // GP's Scala spec needs Toree's assembly in its lib/ (its installer says so). GP names the
    // Python spec `<name>_spark` with --spark, the Scala one just `<name>`.
    let toree_jar = site_packages(&spark3)?.join("toree/lib/toree-assembly-0.5.0-incubating.jar");
    std::fs::copy(
        &toree_jar,
        kernels.join("ssh_scala/lib/toree-assembly-0.5.0-incubating.jar"),
    )
    .with_context(|| format!("copying {}", toree_jar.display()))?;

    // SSH R: what `jupyter-ssh-spec install --language R` would assemble.
    let gp_root = site_packages(&venv()?)?.join("gateway_provisioners");
    let r_dir = kernels.join("ssh_r");
    std::fs::create_dir_all(r_dir.join("scripts"))?;
    for (from, to) in [
        (
            "kernel-launchers/R/scripts/launch_IRkernel.R",
            "launch_IRkernel.R",
        ),
        (
            "kernel-launchers/shared/scripts/server_listener.py",
            "server_listener.py",
        ),
    ] {
        std::fs::copy(gp_root.join(from), r_dir.join("scripts").join(to))
            .with_context(|| format!("copying {from}"))?;
    }
    let template = std::fs::read_to_string(gp_root.join("kernel-specs/ssh_r/kernel.json"))?;
    let mut spec: serde_json::Value = serde_json::from_str(
        &template
            .replace("${install_dir}", &r_dir.display().to_string())
            .replace("${language}", "R")
            .replace("${display_name}", "R SSH"),
    )?;
    spec["metadata"]["kernel_provisioner"]["config"]["remote_hosts"] =
        serde_json::json!(["127.0.0.2"]);
    let mut env = local_env.clone();
    env["PYSPARK_SUBMIT_ARGS"] = format!("--master {master} {small} pyspark-shell").into();
    spec["env"] = env;
    write_json(&r_dir.join("kernel.json"), &spec)?;

    // Our agent over SSH: lazy Python, a session that cannot come up, a runtime that is missing.
    let agent = built_binary("kernel-launcher")?.display().to_string();
    let distributed = serde_json::json!({"kernel_provisioner": {
        "provisioner_name": "distributed-provisioner",
        "config": {"remote_hosts": ["127.0.0.2"], "launch_timeout": 60},
    }});
    let agent_spec = |mode: &str, kernel: &[&str], env: serde_json::Value| {
        let mut argv = vec![
            agent.clone(),
            "--kernel-id".into(),
            "{kernel_id}".into(),
            "--response-address".into(),
            "{response_address}".into(),
            "--public-key".into(),
            "{public_key}".into(),
            "--port-range".into(),
            "{port_range}".into(),
            "--spark-context-initialization-mode".into(),
            mode.to_owned(),
            "--".into(),
        ];
        argv.extend(kernel.iter().map(|s| (*s).to_owned()));
        serde_json::json!({
            "argv": argv, "display_name": "agent", "language": "python",
            "env": env, "metadata": distributed,
        })
    };
    let ipykernel = [
        python3.as_str(),
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
    ];
    let mut env = local_env.clone();
    env["PYSPARK_SUBMIT_ARGS"] = format!("--master {master} {small} pyspark-shell").into();
    write_json(
        &kernels.join("agent_python/kernel.json"),
        &agent_spec("lazy", &ipykernel, env),
    )?;
    // The same in eager mode: the start answers only once the session exists.
    let mut env = local_env.clone();
    env["PYSPARK_SUBMIT_ARGS"] = format!("--master {master} {small} pyspark-shell").into();
    write_json(
        &kernels.join("agent_python_eager/kernel.json"),
        &agent_spec("eager", &ipykernel, env),
    )?;
    // IRkernel under the agent, lazy: `spark` is bound by the agent's R profile (pyspark through
    // reticulate) and made by the first cell that uses it. In eager mode the profile makes the
    // session before IRkernel starts, so the start answers only once the application exists.
    let irkernel = [
        "R",
        "--slave",
        "-e",
        "IRkernel::main()",
        "--args",
        "{connection_file}",
    ];
    for (name, mode) in [("agent_r", "lazy"), ("agent_r_eager", "eager")] {
        let mut env = local_env.clone();
        env["PYSPARK_SUBMIT_ARGS"] = format!("--master {master} {small} pyspark-shell").into();
        let mut spec = agent_spec(mode, &irkernel, env);
        spec["language"] = "R".into();
        write_json(&kernels.join(name).join("kernel.json"), &spec)?;
    }
    // Toree under the agent, lazy: the argv and env of Toree's own kernelspec (its run.sh,
    // `__TOREE_SPARK_OPTS__` with the master), the mode passed on to Toree by the agent.
    let toree_spec = read_json(&kernels.join("local_scala/kernel.json"))?;
    let toree_argv: Vec<&str> = toree_spec["argv"]
        .as_array()
        .context("Toree's kernelspec has no argv")?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    let mut spec = agent_spec("lazy", &toree_argv, toree_spec["env"].clone());
    spec["language"] = "scala".into();
    write_json(&kernels.join("agent_scala/kernel.json"), &spec)?;
    let mut env = local_env.clone();
    env["PYSPARK_SUBMIT_ARGS"] = "--master nowhere://at-all pyspark-shell".into();
    write_json(
        &kernels.join("agent_python_bad_master/kernel.json"),
        &agent_spec("lazy", &ipykernel, env),
    )?;
    write_json(
        &kernels.join("agent_r_missing/kernel.json"),
        &agent_spec(
            "none",
            &[
                "/opt/no-r-here/bin/Rscript",
                "-e",
                "IRkernel::main()",
                "{connection_file}",
            ],
            local_env.clone(),
        ),
    )?;
    make_yarn_specs(dir, &kernels, spark_home, master)?;
    Ok(Specs { kernels })
}

/// YARN cluster mode through the RM emulator: GP's `jupyter-yarn-spec install` for Python (lazy)
/// and the wheel's `yarn_spark_r` template (assembled, as for SSH) for R, both with a
/// `SPARK_HOME` whose `bin/spark-submit` is the stand-in, so the launcher runs as the
/// application master. The emulator is not a Spark-on-YARN runtime: the session a launcher
/// makes in the AM goes to the standalone master through `SPARK_CONF_DIR` (set in the AM's
/// environment by `spark.yarn.appMasterEnv.*` in `KERNEL_EXTRA_SPARK_OPTS`).
fn make_yarn_specs(dir: &Path, kernels: &Path, spark_home: &Path, master: &str) -> Result<()> {
    let fake_home = dir.join("yarn-spark-home");
    std::fs::create_dir_all(fake_home.join("bin"))?;
    std::os::unix::fs::symlink(
        built_binary("spark-submit")?,
        fake_home.join("bin/spark-submit"),
    )?;
    let am_conf = dir.join("am-spark-conf");
    std::fs::create_dir_all(&am_conf)?;
    std::fs::write(
        am_conf.join("spark-defaults.conf"),
        format!(
            "spark.master {master}\nspark.cores.max 1\nspark.executor.memory 512m\n\
             spark.driver.memory 512m\nspark.ui.enabled false\nspark.driver.host 127.0.0.1\n"
        ),
    )?;
    let _ = spark_home;
    let python3 = venv_spark3()?.join("bin/python").display().to_string();

    let mut gp = Command::new(venv()?.join("bin/jupyter-yarn-spec"));
    gp.args([
        "install",
        "--user",
        "--language=Python",
        "--spark-init-mode=lazy",
        "--kernel-name=yarn_python",
    ])
    .arg(format!("--spark-home={}", fake_home.display()));
    install(
        "jupyter-yarn-spec install",
        gp,
        dir,
        &dir.join("gp-yarn.log"),
    )?;
    let path = kernels.join("yarn_python/kernel.json");
    let mut spec = read_json(&path)?;
    spec["env"]["PYSPARK_PYTHON"] = python3.clone().into();
    spec["env"]["HADOOP_CONF_DIR"] = dir.join("hadoop-conf").display().to_string().into();
    write_json(&path, &spec)?;

    // Scala: GP's installer too, with Toree's assembly in the spec's lib/ (as for SSH). The AM
    // runs GP's Toree launcher jar as a Spark driver through the real spark-submit of the AM's
    // SPARK_HOME.
    let mut gp = Command::new(venv()?.join("bin/jupyter-yarn-spec"));
    gp.args([
        "install",
        "--user",
        "--language=Scala",
        "--spark-init-mode=lazy",
        "--kernel-name=yarn_scala",
    ])
    .arg(format!("--spark-home={}", fake_home.display()));
    install(
        "jupyter-yarn-spec install --language=Scala",
        gp,
        dir,
        &dir.join("gp-yarn-scala.log"),
    )?;
    let toree_jar =
        site_packages(&venv_spark3()?)?.join("toree/lib/toree-assembly-0.5.0-incubating.jar");
    std::fs::copy(
        &toree_jar,
        kernels.join("yarn_scala/lib/toree-assembly-0.5.0-incubating.jar"),
    )
    .with_context(|| format!("copying {}", toree_jar.display()))?;
    let path = kernels.join("yarn_scala/kernel.json");
    let mut spec = read_json(&path)?;
    spec["env"]["HADOOP_CONF_DIR"] = dir.join("hadoop-conf").display().to_string().into();
    write_json(&path, &spec)?;
    // The same on a cluster whose nodes have no Java where the spec says (the AM's JAVA_HOME,
    // set as a deployment sets it): the application master fails at once.
    let opts = spec["env"]["__TOREE_SPARK_OPTS__"]
        .as_str()
        .context("GP's Scala spec has no __TOREE_SPARK_OPTS__")?
        .to_owned();
    spec["env"]["__TOREE_SPARK_OPTS__"] =
        format!("--conf spark.yarn.appMasterEnv.JAVA_HOME=/opt/no-java-17 {opts}").into();
    spec["display_name"] = "Toree on YARN without Java".into();
    write_json(&kernels.join("yarn_scala_no_java/kernel.json"), &spec)?;

    let gp_root = site_packages(&venv()?)?.join("gateway_provisioners");
    let r_dir = kernels.join("yarn_r");
    std::fs::create_dir_all(r_dir.join("scripts"))?;
    std::fs::create_dir_all(r_dir.join("bin"))?;
    for (from, to) in [
        (
            "kernel-launchers/R/scripts/launch_IRkernel.R",
            "scripts/launch_IRkernel.R",
        ),
        (
            "kernel-launchers/shared/scripts/server_listener.py",
            "scripts/server_listener.py",
        ),
        ("kernel-specs/yarn_spark_r/bin/run.sh", "bin/run.sh"),
    ] {
        std::fs::copy(gp_root.join(from), r_dir.join(to))
            .with_context(|| format!("copying {from}"))?;
    }
    let template = std::fs::read_to_string(gp_root.join("kernel-specs/yarn_spark_r/kernel.json"))?;
    let mut spec: serde_json::Value = serde_json::from_str(
        &template
            .replace("${install_dir}", &r_dir.display().to_string())
            .replace("${language}", "R")
            .replace("${display_name}", "R on YARN")
            .replace("${spark_home}", &fake_home.display().to_string())
            .replace("${python_root}", "/usr")
            .replace("${extra_spark_opts}", "")
            .replace("${spark_init_mode}", "none"),
    )?;
    spec["env"]["HADOOP_CONF_DIR"] = dir.join("hadoop-conf").display().to_string().into();
    write_json(&r_dir.join("kernel.json"), &spec)?;
    Ok(())
}

/// The RM emulator on a free port, with `<dir>/hadoop-conf/yarn-site.xml` pointing at it;
/// returns the guard and the RM's port.
fn start_yarn(dir: &Path) -> Result<(Proc, u16)> {
    let (tmp, conf) = (dir.join("tmp"), dir.join("hadoop-conf"));
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&conf)?;
    let mut cmd = Command::new(built_binary("yarn-emulator")?);
    cmd.args(["--addr", "127.0.0.1:0"]).env("TMPDIR", &tmp);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("HADOOP_") || k.starts_with("YARN_") || k.starts_with("SPARK_") {
            cmd.env_remove(&key);
        }
    }
    let emulator = Proc::spawn(
        "yarn-emulator",
        cmd,
        &dir.join("yarn-emulator.log"),
        Some("READY"),
        Duration::from_secs(30),
    )?;
    let port: u16 = emulator
        .log_text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("RM 0 http://127.0.0.1:")?
                .trim()
                .parse()
                .ok()
        })
        .context("the emulator printed no RM address")?;
    std::fs::write(
        conf.join("yarn-site.xml"),
        format!(
            "<?xml version=\"1.0\"?>\n<configuration><property><name>yarn.resourcemanager.webapp.address</name>\
             <value>127.0.0.1:{port}</value></property></configuration>\n"
        ),
    )?;
    Ok((emulator, port))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The argvs our agent logged it started ("starting the kernel: ...") in the kernel logs under
/// `dir` that contain `needle`; fails the test when there is none.
fn agent_started(dir: &Path, needle: &str) -> Vec<String> {
    let argvs: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.split_once("starting the kernel: ").map(|(_, a)| a.trim()))
                .filter(|argv| argv.contains(needle))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        !argvs.is_empty(),
        "no agent log in {} starts {needle:?}",
        dir.display()
    );
    argvs
}

/// One driver run against Jupyter Server; its output, or an error with it.
fn drive(server: &JupyterServer, dir: &Path, args: &[&str], log: &str) -> Result<String> {
    let url = format!("http://127.0.0.1:{}", server.port);
    drive_at(&url, &server.token, dir, args, log, &[])
}

/// [`drive`] against `url` with `token` (the gateway itself for the refused starts: Jupyter
/// Server 2.21 answers a gateway error with "Error from Gateway: [%s] %s", dropping the reason).
/// `kernel_env`: `KERNEL_*` variables the driver sends in the start's env (what Jupyter Server
/// sends from its own environment).
fn drive_at(
    url: &str,
    token: &str,
    dir: &Path,
    args: &[&str],
    log: &str,
    kernel_env: &[(&str, &str)],
) -> Result<String> {
    let (command, rest) = args.split_first().context("no driver command")?;
    let mut cmd = Command::new(venv()?.join("bin/python"));
    cmd.arg(fixture("spark_languages_driver.py"))
        .arg(command)
        .arg(url)
        .arg(token)
        .args(rest)
        .env("SPARK_KERNEL_LOG_DIR", dir.join("kernel-logs"))
        .env("PYTHONUNBUFFERED", "1")
        .envs(kernel_env.iter().copied());
    let (status, output) = run_bounded(log, cmd, &dir.join(log), Duration::from_secs(600))?;
    println!("{output}");
    if !status.success() {
        bail!("{log} failed ({status}):\n{output}");
    }
    Ok(output)
}

#[tokio::test]
async fn e2e_spark_languages_local_ssh_yarn() -> Result<()> {
    let started = Instant::now();
    let spark_home = site_packages(&venv_spark3()?)?.join("pyspark");
    let dir = tempfile::Builder::new()
        .prefix("spark-languages-")
        .tempdir()?;
    let d = dir.path();
    let _reaper = test_support::procfs::Reaper::new([d.display().to_string()]);
    let hosts = sshd::SshHosts::start(1)
        .await
        .context("starting sshd on 127.0.0.2")?;
    let cluster = SparkCluster::start(&spark_home, d)?;
    let (mut yarn, rm_port) = start_yarn(d)?;
    let specs = make_specs(d, &spark_home, &cluster.url)?;
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())?
        .map(|u| u.name)
        .context("this user has no name")?;

    let token = uuid::Uuid::new_v4().simple().to_string();
    // Kernel logs where the drivers can read them (SSH kernels' too: the host is this machine).
    let kernel_logs = d.join("kernel-logs");
    let gateway = Gateway::start(
        Impl::Ours,
        &GatewayConfig {
            env: [
                ("EG_AUTH_TOKEN", token.as_str()),
                ("EG_KERNELSPEC_DIRS", &specs.kernels.display().to_string()),
                ("EG_SSH_PORT", &hosts.port.to_string()),
                ("EG_REMOTE_USER", &user),
                ("EG_SSH_KEY_FILE", &hosts.user_key().display().to_string()),
                (
                    "EG_SSH_KNOWN_HOSTS",
                    &hosts.known_hosts().display().to_string(),
                ),
                ("EG_SSH_LOCAL_HOSTS", "true"),
                ("EG_KERNEL_LAUNCH_TIMEOUT", "120"),
                ("EG_KERNEL_LOG_DIR", &kernel_logs.display().to_string()),
                (
                    "EG_YARN_ENDPOINT",
                    &format!("http://127.0.0.1:{rm_port}/ws/v1/cluster"),
                ),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
            ..GatewayConfig::default()
        },
    )?;
    // The small Spark settings for every kernel; the `appMasterEnv` ones reach only the YARN
    // kernels' application masters (spark-submit outside YARN ignores them).
    let python3 = venv_spark3()?.join("bin/python");
    let extra = format!(
        "--conf spark.cores.max=1 --conf spark.executor.memory=512m --driver-memory 512m \
         --conf spark.ui.enabled=false --conf spark.driver.host=127.0.0.1 \
         --conf spark.yarn.appMasterEnv.SPARK_HOME={} \
         --conf spark.yarn.appMasterEnv.SPARK_CONF_DIR={} \
         --conf spark.yarn.appMasterEnv.PYSPARK_PYTHON={} \
         --conf spark.yarn.appMasterEnv.TMPDIR={}",
        spark_home.display(),
        d.join("am-spark-conf").display(),
        python3.display(),
        d.join("tmp").display(),
    );
    let server_dir = d.join("jupyter-server");
    let mut server = JupyterServer::start(
        &gateway.url(),
        &[format!("--GatewayClient.auth_token={token}")],
        &[
            ("KERNEL_USERNAME", user.as_str()),
            ("KERNEL_EXTRA_SPARK_OPTS", extra.as_str()),
            ("JUPYTER_GATEWAY_REQUEST_TIMEOUT", "240"),
            ("JUPYTER_GATEWAY_CONNECT_TIMEOUT", "240"),
            ("KERNEL_LAUNCH_TIMEOUT", "120"),
        ],
        &server_dir,
    )?;

    let ui = cluster.ui();
    let mut times = Vec::new();
    // `SPARK_LANGUAGES_ONLY=ssh_scala,...` runs just those kernelspecs (for debugging one).
    let only = std::env::var("SPARK_LANGUAGES_ONLY").unwrap_or_default();
    let picked = |spec: &str| only.is_empty() || only.split(',').any(|s| s == spec);
    for (spec, language, spark) in [
        ("local_python", "python", "spark"),
        ("local_r", "r", "spark"),
        ("ssh_python_spark", "python", "lazy"),
        ("ssh_r", "r", "spark"),
        ("agent_python", "python", "lazy"),
        ("agent_python_eager", "python", "eager"),
        ("agent_r", "r", "lazy"),
        ("agent_r_eager", "r", "eager"),
        ("yarn_python", "python", "lazy"),
        ("yarn_r", "r", "spark"),
        ("local_scala", "scala", "spark"),
        ("ssh_scala", "scala", "lazy"),
        ("agent_scala", "scala", "lazy"),
        ("yarn_scala", "scala", "lazy"),
    ] {
        if !picked(spec) {
            continue;
        }
        let t = Instant::now();
        let out = drive(
            &server,
            d,
            &["lifecycle", spec, language, &ui, spark],
            &format!("{spec}.log"),
        )
        .with_context(|| format!("gateway log tail:\n{}", gateway.proc.log_tail(40)))?;
        assert!(out.contains(&format!("OK: {spec}")), "{out}");
        if spec == "agent_scala" {
            // The agent passed the mode on to Toree: its log shows the argv it started.
            assert!(
                agent_started(&kernel_logs, "bin/run.sh --profile")
                    .iter()
                    .all(|argv| argv.ends_with("--spark-context-initialization-mode lazy")),
                "agent_scala: Toree was started without the agent's mode"
            );
        }
        times.push(format!("{spec} {:.0}s", t.elapsed().as_secs_f64()));
    }
    if picked("ssh_scala_fallback") {
        // The interrupt when the communication port does not answer: over SSH, with the signal
        // the kernel listens for (Toree's --alternate-sigint from __TOREE_OPTS__).
        let t = Instant::now();
        drive(
            &server,
            d,
            &[
                "interrupt-fallback",
                "ssh_scala",
                &kernel_logs.display().to_string(),
            ],
            "ssh_scala_fallback.log",
        )
        .with_context(|| format!("gateway log tail:\n{}", gateway.proc.log_tail(40)))?;
        let log = gateway.proc.log_text();
        assert!(
            log.contains("via the communication port failed")
                && log.contains("sending it over SSH"),
            "the interrupt did not go over SSH: the communication port still answered"
        );
        times.push(format!(
            "ssh_scala_fallback {:.0}s",
            t.elapsed().as_secs_f64()
        ));
    }
    if picked("agent_python_bad_master") {
        drive(
            &server,
            d,
            &[
                "spark-fails",
                "agent_python_bad_master",
                "the Spark session did not start",
            ],
            "agent_python_bad_master.log",
        )?;
    }
    if picked("local_scala_no_java") {
        drive_at(
            &gateway.url(),
            &token,
            d,
            &[
                "start-fails",
                "local_scala_no_java",
                "/opt/no-java-17/bin/java",
                "on the gateway's host",
            ],
            "local_scala_no_java.log",
            &[],
        )?;
    }
    if picked("yarn_scala_no_java") {
        // The application master fails; the RM's diagnostics carry its stderr, the backend
        // names the AM's host.
        let t = Instant::now();
        drive_at(
            &gateway.url(),
            &token,
            d,
            &[
                "start-fails",
                "yarn_scala_no_java",
                "/opt/no-java-17/bin/java",
                "ran on host",
            ],
            "yarn_scala_no_java.log",
            &[("KERNEL_EXTRA_SPARK_OPTS", extra.as_str())],
        )?;
        times.push(format!(
            "yarn_scala_no_java {:.0}s",
            t.elapsed().as_secs_f64()
        ));
    }
    if picked("agent_r_missing") {
        drive_at(
            &gateway.url(),
            &token,
            d,
            &[
                "start-fails",
                "agent_r_missing",
                "/opt/no-r-here/bin/Rscript",
                "host",
            ],
            "agent_r_missing.log",
            &[],
        )?;
    }

    println!(
        "spark languages: {} (total {:.0}s)",
        times.join(", "),
        started.elapsed().as_secs_f64()
    );
    server.proc.mark_passed();
    let mut gateway = gateway;
    gateway.proc.mark_passed();
    drop(server);
    drop(gateway);
    cluster.stop();
    yarn.stop(Duration::from_secs(10));
    yarn.mark_passed();
    Ok(())
}
