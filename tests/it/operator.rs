//! The binary as an Enterprise Gateway operator meets it: the environment EG's Helm chart and
//! Docker image set, EG's Python config file, `--generate-config` / `--convert-config`, and the
//! warnings and errors an operator reads. Every effect is checked through the API or the log.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::support::{
    GATEWAY_READY, Proc, built_binary, clear_inherited_config, free_port, http_get, path_with,
    run_bounded, venv,
};

/// The one start-up warning about settings the gateway does not use.
const UNSUPPORTED_WARNING: &str = "ignoring settings this gateway does not support";

/// A scratch directory with kernelspecs `python3` (the test venv's ipykernel) and two that are
/// only listed (`spark_like`, `r_like`), and the Jupyter directories a gateway writes to.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Result<Site> {
        let dir = tempfile::Builder::new().prefix("operator-").tempdir()?;
        for sub in ["config", "data", "runtime"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        for name in ["spark_like", "r_like"] {
            let spec = dir.path().join("share/kernels").join(name);
            std::fs::create_dir_all(&spec)?;
            std::fs::write(
                spec.join("kernel.json"),
                serde_json::json!({
                    "argv": ["/bin/false", "{connection_file}"],
                    "display_name": name,
                    "language": "python",
                })
                .to_string(),
            )?;
        }
        Ok(Site { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary with nothing inherited that could configure it: only the Jupyter paths, so
    /// every EG variable a test sets is the only configuration there is.
    fn command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(built_binary("enterprise-gateway")?);
        cmd.args(args).current_dir(self.dir.path());
        clear_inherited_config(&mut cmd);
        let jupyter_path =
            std::env::join_paths([venv()?.join("share/jupyter"), self.path("share")])?;
        cmd.env("JUPYTER_PATH", jupyter_path)
            .env("PATH", path_with(&[&venv()?.join("bin")]))
            .env("JUPYTER_CONFIG_DIR", self.path("config"))
            .env("JUPYTER_DATA_DIR", self.path("data"))
            .env("JUPYTER_RUNTIME_DIR", self.path("runtime"))
            // Not in EG's chart: keeps the callback listener off the host's primary address.
            .env("EG_RESPONSE_IP", "127.0.0.1");
        Ok(cmd)
    }

    fn start(&self, name: &str, cmd: Command) -> Result<Proc> {
        Proc::spawn(
            name,
            cmd,
            &self.path(&format!("{name}.log")),
            Some(GATEWAY_READY),
            Duration::from_secs(60),
        )
    }

    /// Runs the binary to its exit (bounded): the status code and everything it printed.
    fn run(&self, name: &str, cmd: Command) -> Result<(Option<i32>, String)> {
        let (status, output) = run_bounded(
            name,
            cmd,
            &self.path(&format!("{name}.log")),
            Duration::from_secs(30),
        )?;
        Ok((status.code(), output))
    }
}

/// `GET path` as JSON, failing on anything but `want`.
fn get_json(port: u16, path: &str, want: u16) -> Result<Value> {
    let response = http_get(port, path)?;
    let body = String::from_utf8_lossy(&response.body).into_owned();
    if response.status != want {
        bail!("GET {path}: {} (wanted {want}): {body}", response.status);
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
}

/// `POST path` with a JSON body; the status code (the body is not needed here).
fn post_status(port: u16, path: &str, body: &str) -> Result<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    raw.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("POST {path}: no status line in {raw:?}"))
}

fn kernelspec_names(listing: &Value) -> Vec<String> {
    listing["kernelspecs"]
        .as_object()
        .map(|specs| specs.keys().cloned().collect())
        .unwrap_or_default()
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn e2e_helm_style_environment_only_deployment() -> Result<()> {
    let site = Site::new()?;
    let (port, response_port) = (free_port()?, free_port()?);
    // What etc/kubernetes/helm/enterprise-gateway/templates/deployment.yaml sets, then what
    // start-enterprise-gateway.sh adds; no command-line arguments at all.
    let helm: Vec<(&str, String)> = vec![
        ("EG_PORT", port.to_string()),
        ("EG_RESPONSE_PORT", response_port.to_string()),
        ("EG_NAMESPACE", "enterprise-gateway".to_owned()),
        ("EG_KERNEL_CLUSTER_ROLE", "kernel-controller".to_owned()),
        ("EG_SHARED_NAMESPACE", "False".to_owned()),
        ("EG_MIRROR_WORKING_DIRS", "False".to_owned()),
        ("EG_CULL_IDLE_TIMEOUT", "3600".to_owned()),
        ("EG_CULL_CONNECTED", "False".to_owned()),
        ("EG_LOG_LEVEL", "DEBUG".to_owned()),
        ("EG_KERNEL_LAUNCH_TIMEOUT", "60".to_owned()),
        ("EG_KERNEL_INFO_TIMEOUT", "60".to_owned()),
        ("EG_ALLOWED_KERNELS", r#"["python3","r_like"]"#.to_owned()),
        ("EG_DEFAULT_KERNEL_NAME", "python3".to_owned()),
        (
            "EG_DEFAULT_KERNEL_SERVICE_ACCOUNT_NAME",
            "default".to_owned(),
        ),
        ("EG_AUTH_TOKEN", "helm-secret".to_owned()),
        ("EG_SSH_PORT", "2122".to_owned()),
        ("EG_IP", "127.0.0.1".to_owned()),
        ("KG_IP", "127.0.0.1".to_owned()),
        ("EG_PORT_RETRIES", "0".to_owned()),
        ("EG_ENABLE_TUNNELING", "False".to_owned()),
        ("EG_LIST_KERNELS", "True".to_owned()),
        ("EG_CULL_INTERVAL", "60".to_owned()),
        ("EG_BASE_URL", "/gw".to_owned()),
        // Not the chart's, but what an operator may have added: a variable this gateway does
        // not use, which the start-up warning must name.
        ("EG_POD_TEMPLATE_DIR", "/etc/eg/templates".to_owned()),
    ];
    let mut cmd = site.command(&[])?;
    cmd.envs(helm.iter().map(|(k, v)| (*k, v.as_str())));
    let mut gateway = site.start("helm", cmd)?;

    // EG_PORT, EG_BASE_URL, EG_AUTH_TOKEN.
    assert_eq!(
        http_get(port, "/api")?.status,
        404,
        "everything is under /gw"
    );
    assert_eq!(http_get(port, "/gw/api/kernelspecs")?.status, 401);
    let specs = get_json(port, "/gw/api/kernelspecs?token=helm-secret", 200)?;
    // EG_ALLOWED_KERNELS (Helm's JSON list) and EG_DEFAULT_KERNEL_NAME.
    assert_eq!(kernelspec_names(&specs), ["python3", "r_like"], "{specs}");
    assert_eq!(specs["default"], "python3");
    // EG_LIST_KERNELS.
    assert_eq!(
        get_json(port, "/gw/api/kernels?token=helm-secret", 200)?,
        serde_json::json!([])
    );
    // A refused start and a failed launch: one warn line each, naming the user and the
    // kernelspec (not one each from the API, the supervisor and the error response).
    let refused = r#"{"name": "python3", "env": {"KERNEL_USERNAME": "root"}}"#;
    assert_eq!(
        post_status(port, "/gw/api/kernels?token=helm-secret", refused)?,
        403
    );
    let failing = r#"{"name": "r_like", "env": {"KERNEL_USERNAME": "alice"}}"#;
    let status = post_status(port, "/gw/api/kernels?token=helm-secret", failing)?;
    assert!(
        (500..600).contains(&status),
        "a kernel that exits at once: {status}"
    );
    gateway.stop(Duration::from_secs(10));
    let log = gateway.log_text();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("start failed"))
        .collect();
    assert_eq!(failures.len(), 2, "{log}");
    assert!(
        failures[0].contains("user=gateway-service") && failures[0].contains("kernelspec=python3"),
        "{}",
        failures[0]
    );
    assert!(failures[0].contains("'root'"), "{}", failures[0]);
    assert!(failures[1].contains("kernelspec=r_like"), "{}", failures[1]);
    let others: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("start failed"))
        .filter(|l| !l.contains(UNSUPPORTED_WARNING) && !l.contains("authentication failed"))
        .collect();
    assert!(
        others.is_empty(),
        "unexpected warnings:\n{}",
        others.join("\n")
    );
    // The failed kernel's log went with it.
    let logs: Vec<_> = std::fs::read_dir(site.path("runtime"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.path())
        .collect();
    assert!(logs.is_empty(), "kernel logs left behind: {logs:?}");
    // EG_LOG_LEVEL=DEBUG, and an access line per request with client and user.
    assert!(log.contains(" DEBUG "), "no debug lines:\n{log}");
    let access = lines_with(&log, "GET /gw/api/kernels 200");
    assert_eq!(access.len(), 1, "{log}");
    assert!(
        access[0].contains("client=127.0.0.1:") && access[0].contains("user=gateway-service"),
        "{}",
        access[0]
    );
    assert!(
        lines_with(&log, "GET /gw/api/kernelspecs 401")
            .iter()
            .all(|l| l.contains("user=-")),
        "{log}"
    );
    // The chart's Kubernetes variables are read by the Kubernetes backend, so the one warning
    // names only the variable nothing reads, with why.
    let warnings = lines_with(&log, UNSUPPORTED_WARNING);
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("EG_POD_TEMPLATE_DIR"),
        "{}",
        warnings[0]
    );
    for name in [
        "EG_DEFAULT_KERNEL_SERVICE_ACCOUNT_NAME",
        "EG_KERNEL_CLUSTER_ROLE",
        "EG_MIRROR_WORKING_DIRS",
        "EG_NAMESPACE",
        "EG_SHARED_NAMESPACE",
        "EG_PORT",
    ] {
        assert!(!warnings[0].contains(name), "{name}: {}", warnings[0]);
    }
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
    gateway.mark_passed();

    // Helm renders an unset list as `null`: every kernelspec, no warning about it.
    let port = free_port()?;
    let mut cmd = site.command(&[])?;
    cmd.env("EG_PORT", port.to_string())
        .env("EG_ALLOWED_KERNELS", "null")
        .env("EG_PORT_RETRIES", "0");
    let mut gateway = site.start("helm-null", cmd)?;
    let names = kernelspec_names(&get_json(port, "/api/kernelspecs", 200)?);
    assert_eq!(names, ["python3", "r_like", "spark_like"]);
    gateway.stop(Duration::from_secs(10));
    assert!(lines_with(&gateway.log_text(), UNSUPPORTED_WARNING).is_empty());
    gateway.mark_passed();

    // The command line etc/docker/enterprise-gateway/start-enterprise-gateway.sh builds.
    let port = free_port()?;
    let mut cmd = site.command(&[
        "--log-level=DEBUG",
        "--KernelSpecManager.whitelist=['python3','spark_like']",
        "--RemoteMappingKernelManager.cull_idle_timeout=43200",
        "--RemoteMappingKernelManager.cull_interval=60",
        "--RemoteMappingKernelManager.cull_connected=False",
        "--RemoteMappingKernelManager.default_kernel_name=spark_like",
        "--RemoteMappingKernelManager.kernel_info_timeout=60",
    ])?;
    cmd.env("EG_PORT", port.to_string())
        .env("EG_PORT_RETRIES", "0");
    let mut gateway = site.start("docker-script", cmd)?;
    let specs = get_json(port, "/api/kernelspecs", 200)?;
    assert_eq!(kernelspec_names(&specs), ["python3", "spark_like"]);
    assert_eq!(specs["default"], "spark_like");
    gateway.stop(Duration::from_secs(10));
    gateway.mark_passed();

    // Every chart variable that has no API-visible effect is still read: a bad value is refused,
    // naming the option.
    for (var, option) in [
        ("EG_CULL_IDLE_TIMEOUT", "--cull_idle_timeout"),
        ("EG_CULL_INTERVAL", "--cull_interval"),
        ("EG_CULL_CONNECTED", "--cull_connected"),
        ("EG_KERNEL_LAUNCH_TIMEOUT", "--launch_timeout"),
        ("EG_KERNEL_INFO_TIMEOUT", "--kernel_info_timeout"),
        ("EG_RESPONSE_PORT", "--response_port"),
        ("EG_SSH_PORT", "--ssh_port"),
        ("EG_ENABLE_TUNNELING", "--enable_tunneling"),
        ("EG_LOG_LEVEL", "--log_level"),
        ("EG_PORT_RETRIES", "--port_retries"),
    ] {
        let mut cmd = site.command(&[])?;
        cmd.env(var, "not-a-value");
        let (code, output) = site.run("bad-value", cmd)?;
        assert_eq!(code, Some(64), "{var}: {output}");
        let errors = lines_with(&output, "enterprise-gateway: error: ");
        assert_eq!(errors.len(), 1, "{var}: {output}");
        assert!(errors[0].contains(option), "{var}: {output}");
    }
    Ok(())
}

#[test]
fn e2e_eg_python_config_is_read_or_refused() -> Result<()> {
    let site = Site::new()?;
    let port = free_port()?;
    let config = site.path("jupyter_enterprise_gateway_config.py");
    std::fs::write(
        &config,
        format!(
            "# Configuration file for jupyter-enterprise-gateway.\n\
             c = get_config()  # noqa\n\
             c.EnterpriseGatewayApp.port = {port}\n\
             c.EnterpriseGatewayApp.port_retries = 0\n\
             c.EnterpriseGatewayApp.list_kernels = False\n\
             c.KernelSpecManager.whitelist = [\n    'spark_like',\n    'python3',\n]\n\
             c.EnterpriseGatewayApp.kernel_spec_manager_class = 'enterprise_gateway.services.kernelspecs.KernelSpecCache'\n"
        ),
    )?;
    let path = config.to_str().context("utf-8 path")?;
    let mut gateway = site.start("py-config", site.command(&["--config", path])?)?;
    let specs = get_json(port, "/api/kernelspecs", 200)?;
    assert_eq!(kernelspec_names(&specs), ["python3", "spark_like"]);
    assert_eq!(
        http_get(port, "/api/kernels")?.status,
        403,
        "list_kernels = False"
    );
    gateway.stop(Duration::from_secs(10));
    let log = gateway.log_text();
    let warnings = lines_with(&log, UNSUPPORTED_WARNING);
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("EnterpriseGatewayApp.kernel_spec_manager_class"),
        "{}",
        warnings[0]
    );
    gateway.mark_passed();

    // --convert-config writes TOML that --config accepts, with the same effect.
    let (code, toml_text) = site.run("convert", site.command(&["--convert-config", path])?)?;
    assert_eq!(code, Some(0), "{toml_text}");
    assert!(toml_text.contains("allowed_kernelspecs = [\"spark_like\", \"python3\"]"));
    assert!(toml_text.contains("# not converted: EnterpriseGatewayApp.kernel_spec_manager_class"));
    let converted = site.path("converted.toml");
    std::fs::write(&converted, &toml_text)?;
    let converted = converted.to_str().context("utf-8 path")?;
    let mut gateway = site.start("toml-config", site.command(&["--config", converted])?)?;
    let specs = get_json(port, "/api/kernelspecs", 200)?;
    assert_eq!(kernelspec_names(&specs), ["python3", "spark_like"]);
    gateway.stop(Duration::from_secs(10));
    gateway.mark_passed();

    // Where EG would find it by itself (the Jupyter config dir), it is named, not read.
    let found = site.path("config/jupyter_enterprise_gateway_config.py");
    std::fs::copy(&config, &found)?;
    let other_port = free_port()?;
    let args = [
        format!("--port={other_port}"),
        "--port_retries=0".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut gateway = site.start("py-found", site.command(&args)?)?;
    let specs = get_json(other_port, "/api/kernelspecs", 200)?;
    assert_eq!(
        kernelspec_names(&specs),
        ["python3", "r_like", "spark_like"]
    );
    gateway.stop(Duration::from_secs(10));
    let log = gateway.log_text();
    let warnings = lines_with(&log, UNSUPPORTED_WARNING);
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains(&format!("{}: Enterprise Gateway reads", found.display())),
        "{}",
        warnings[0]
    );
    std::fs::remove_file(&found)?;
    gateway.mark_passed();

    // A config that is a program is refused: what it is, the line, how to convert; said once.
    std::fs::write(
        &config,
        "c = get_config()\nimport os\nc.EnterpriseGatewayApp.port = int(os.environ['PORT'])\n",
    )?;
    let (code, output) = site.run("py-refused", site.command(&["--config", path])?)?;
    assert_eq!(code, Some(64), "{output}");
    let errors = lines_with(&output, "enterprise-gateway: error: ");
    assert_eq!(errors.len(), 1, "{output}");
    for needle in [
        "Python config",
        "line 2: ",
        "--convert-config",
        "--generate-config",
    ] {
        assert!(errors[0].contains(needle), "{needle}: {output}");
    }
    assert_eq!(output.matches("line 2: ").count(), 1, "{output}");
    Ok(())
}

#[test]
fn e2e_generated_config_and_operator_errors() -> Result<()> {
    let site = Site::new()?;
    let (code, generated) = site.run("generate", site.command(&["--generate-config"])?)?;
    assert_eq!(code, Some(0), "{generated}");
    // Every setting uncommented, so each default is read back as a real value.
    let settings: String = generated
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let file = site.path("gateway.toml");
    std::fs::write(&file, settings)?;
    let file = file.to_str().context("utf-8 path")?;
    let port = free_port()?;
    let mut cmd = site.command(&[
        "--config",
        file,
        &format!("--port={port}"),
        "--port_retries=0",
    ])?;
    // An unknown EG variable: one warning naming it and the nearest real one.
    cmd.env("EG_PROT", "9999");
    let mut gateway = site.start("generated", cmd)?;
    let specs = get_json(port, "/api/kernelspecs", 200)?;
    assert_eq!(specs["default"], "python3");
    gateway.stop(Duration::from_secs(10));
    let log = gateway.log_text();
    let warnings = lines_with(&log, UNSUPPORTED_WARNING);
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("EG_PROT: unknown (did you mean EG_PORT?)"),
        "{}",
        warnings[0]
    );
    gateway.mark_passed();

    // Configuration errors: one prefix, the nearest option for a typo, nothing said twice.
    let typo = site.path("typo.toml");
    std::fs::write(&typo, "list_kernel = true\n")?;
    let typo = typo.to_str().context("utf-8 path")?;
    for (args, needle) in [
        (
            vec!["--log_level=verbose"],
            "--log_level: \"verbose\" is not a log level",
        ),
        (
            vec!["--config", typo],
            "unknown option \"list_kernel\" (did you mean \"list_kernels\"?)",
        ),
        (
            vec!["--list_kernel=true"],
            "unexpected argument '--list_kernel' found (did you mean --list_kernels?)",
        ),
        (vec!["--port=99999"], "--port: \"99999\""),
    ] {
        let (code, output) = site.run("usage", site.command(&args)?)?;
        assert_eq!(code, Some(64), "{args:?}: {output}");
        assert!(
            output.starts_with("enterprise-gateway: error: "),
            "{args:?}: {output}"
        );
        assert_eq!(output.matches("error:").count(), 1, "{args:?}: {output}");
        assert!(output.contains(needle), "{args:?}: {output}");
    }

    // No kernelspec anywhere: said at start, with where the gateway looked.
    let port = free_port()?;
    let mut cmd = site.command(&[&format!("--port={port}"), "--port_retries=0"])?;
    cmd.env("JUPYTER_PATH", site.path("nowhere"))
        .env("HOME", site.path("home"))
        .env("PATH", "/nonexistent")
        .env_remove("VIRTUAL_ENV")
        .env_remove("CONDA_PREFIX");
    let mut gateway = site.start("no-kernelspecs", cmd)?;
    let specs = get_json(port, "/api/kernelspecs", 200)?;
    assert_eq!(specs["default"], "", "an absent default is not advertised");
    gateway.stop(Duration::from_secs(10));
    let log = gateway.log_text();
    let warning = lines_with(&log, "no kernelspecs found");
    assert_eq!(warning.len(), 1, "{log}");
    assert!(
        warning[0].contains(&site.path("nowhere").join("kernels").display().to_string()),
        "{}",
        warning[0]
    );
    gateway.mark_passed();
    Ok(())
}

/// Lines of a log that report an HTTP 403 or 5xx (an access line or a client's error line).
fn bad_status_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            let http = ["GET ", "POST ", "PATCH ", "DELETE ", "PUT ", "HTTP"]
                .iter()
                .any(|m| line.contains(m));
            http && line.split_whitespace().any(|token| {
                token == "403"
                    || (token.len() == 3 && token.starts_with('5') && token.parse::<u16>().is_ok())
            })
        })
        .collect()
}

#[test]
fn e2e_jupyterlab_through_the_gateway_is_quiet() -> Result<()> {
    let site = Site::new()?;
    // The gateway as `cargo xtask serve` runs it: defaults only.
    let port = free_port()?;
    let gateway_cmd = site.command(&[&format!("--port={port}"), "--port_retries=0"])?;
    let mut gateway = site.start("gateway", gateway_cmd)?;

    let lab_dir = site.path("lab");
    for sub in ["notebooks", "config", "data", "runtime"] {
        std::fs::create_dir_all(lab_dir.join(sub))?;
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let lab_port = free_port()?;
    let mut lab_cmd = Command::new(venv()?.join("bin/jupyter-lab"));
    lab_cmd
        .arg(format!("--gateway-url=http://127.0.0.1:{port}"))
        .arg(format!("--ServerApp.token={token}"))
        .arg("--ip=127.0.0.1")
        .arg(format!("--port={lab_port}"))
        .arg("--port-retries=0")
        .arg(format!(
            "--ServerApp.root_dir={}",
            lab_dir.join("notebooks").display()
        ))
        .arg("--no-browser")
        .arg("--allow-root")
        .current_dir(&lab_dir);
    clear_inherited_config(&mut lab_cmd);
    lab_cmd
        .env("KERNEL_USERNAME", "alice")
        .env("JUPYTER_CONFIG_DIR", lab_dir.join("config"))
        .env("JUPYTER_DATA_DIR", lab_dir.join("data"))
        .env("JUPYTER_RUNTIME_DIR", lab_dir.join("runtime"))
        .env("JUPYTER_GATEWAY_REQUEST_TIMEOUT", "60")
        .env("PYTHONUNBUFFERED", "1");
    let mut lab = Proc::spawn(
        "jupyter-lab",
        lab_cmd,
        &site.path("jupyter-lab.log"),
        Some("is running at"),
        Duration::from_secs(90),
    )?;

    // A minute of use keeps CI short; LAB_RUN_SECONDS runs it longer by hand.
    let seconds = std::env::var("LAB_RUN_SECONDS").unwrap_or_else(|_| "60".to_owned());
    let mut driver = Command::new(venv()?.join("bin/python"));
    driver
        .arg(crate::support::fixture("lab_driver.py"))
        .arg(format!("http://127.0.0.1:{lab_port}"))
        .arg(&token)
        .arg(&seconds)
        .env("PYTHONUNBUFFERED", "1");
    let timeout = Duration::from_secs(seconds.parse::<u64>().unwrap_or(60) + 120);
    let (status, output) = run_bounded("lab_driver.py", driver, &site.path("driver.log"), timeout)?;
    println!("{output}");
    assert!(
        status.success() && output.contains("OK: all steps passed"),
        "driver failed ({status}):\n{output}\n--- jupyter-lab log tail ---\n{}\n--- gateway log tail ---\n{}",
        lab.log_tail(40),
        gateway.log_tail(40)
    );
    lab.stop(Duration::from_secs(10));
    gateway.stop(Duration::from_secs(10));
    let (lab_log, gateway_log) = (lab.log_text(), gateway.log_text());
    let lab_bad = bad_status_lines(&lab_log);
    assert!(
        lab_bad.is_empty(),
        "403/5xx in Jupyter Lab's log:\n{}",
        lab_bad.join("\n")
    );
    let gateway_bad = bad_status_lines(&gateway_log);
    assert!(
        gateway_bad.is_empty(),
        "403/5xx in the gateway's log:\n{}",
        gateway_bad.join("\n")
    );
    // The polling was seen (and logged) by the gateway.
    assert!(
        lines_with(&gateway_log, "GET /api/kernels 200").len() >= 10,
        "{gateway_log}"
    );
    lab.mark_passed();
    gateway.mark_passed();
    Ok(())
}
