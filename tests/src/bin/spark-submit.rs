//! A stand-in for `spark-submit --master yarn --deploy-mode cluster`, for tests against the YARN
//! RM emulator (the real one speaks Hadoop IPC, which the emulator does not).
//!
//! It accepts the arguments YARN cluster-mode kernelspecs pass, finds the RM in
//! `$HADOOP_CONF_DIR/yarn-site.xml` (or `$YARN_CONF_DIR`, or the URL in `$YARN_EMULATOR_RM_URL`),
//! and submits the application through the RM's REST API with the AM command = the app file
//! and its arguments, run by the emulator's NodeManager. The app gets `--name`, `--queue`
//! (`spark.yarn.queue`), `spark.yarn.tags`, type `SPARK`, `--proxy-user` as its owner, and the
//! `spark.yarn.appMasterEnv.*` variables. It prints Spark-like log lines on stderr: first its
//! parsed arguments as Spark's `--verbose` does (queue, driver and executor memory, executor
//! count and cores), so tests read what a submit asked for from its log, then
//! `Submitted application <id>`, and exits 0 at once when
//! `spark.yarn.submit.waitAppCompletion=false`; otherwise it waits for the app to end and exits
//! non-zero unless it SUCCEEDED. Submission failures exit 1 with the reason on stderr.
//!
//! What the AM runs: `*.py` with `spark.yarn.appMasterEnv.PYSPARK_PYTHON`,
//! `spark.pyspark.python`, `$PYSPARK_PYTHON` or `python3`; `*.R` with `Rscript`; `*.jar` as a
//! Spark driver, the way a real AM runs the user class: the real `spark-submit` of the AM's
//! `SPARK_HOME` (`spark.yarn.appMasterEnv.SPARK_HOME`, else this process's `SPARK_HOME` when it
//! is not this stand-in) in client mode, with the jar, `--class`, `--jars`, `--name`,
//! `--driver-memory` and the non-YARN `--conf`s, so Spark's own jars are on the classpath and the
//! master comes from the AM's `SPARK_CONF_DIR`; anything else is executed directly. Nothing is
//! uploaded: the app file must be readable by the (local) NodeManager at its absolute path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use resource_managers::yarn::types::{
    AmContainerSpec, ApplicationTags, Commands, Environment, KeyValue, Resource,
};
use resource_managers::yarn::{Auth, SiteConfig, SubmissionContext, YarnClient, YarnClientConfig};

/// Options that take a value (spark-submit's), besides the ones handled explicitly.
const VALUE_OPTIONS: &[&str] = &[
    "--files",
    "--py-files",
    "--archives",
    "--driver-memory",
    "--driver-cores",
    "--principal",
    "--keytab",
    "--properties-file",
    "--driver-java-options",
    "--driver-library-path",
    "--driver-class-path",
    "--packages",
    "--repositories",
    "--exclude-packages",
    "--total-executor-cores",
];

#[derive(Debug, Default)]
struct Submit {
    master: Option<String>,
    deploy_mode: Option<String>,
    name: Option<String>,
    class: Option<String>,
    jars: Option<String>,
    queue: Option<String>,
    proxy_user: Option<String>,
    driver_memory: Option<String>,
    driver_cores: Option<String>,
    executor_memory: Option<String>,
    executor_cores: Option<String>,
    num_executors: Option<String>,
    conf: BTreeMap<String, String>,
    app: Option<String>,
    app_args: Vec<String>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Submit> {
    let mut s = Submit::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if s.app.is_some() {
            s.app_args.push(arg);
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .with_context(|| format!("Missing argument for option '{name}'")),
            }
        };
        match flag.as_str() {
            "--master" => s.master = Some(value("--master")?),
            "--deploy-mode" => s.deploy_mode = Some(value("--deploy-mode")?),
            "--name" => s.name = Some(value("--name")?),
            "--class" => s.class = Some(value("--class")?),
            "--jars" => s.jars = Some(value("--jars")?),
            "--queue" => s.queue = Some(value("--queue")?),
            "--proxy-user" => s.proxy_user = Some(value("--proxy-user")?),
            "--driver-memory" => s.driver_memory = Some(value("--driver-memory")?),
            "--driver-cores" => s.driver_cores = Some(value("--driver-cores")?),
            "--executor-memory" => s.executor_memory = Some(value("--executor-memory")?),
            "--executor-cores" => s.executor_cores = Some(value("--executor-cores")?),
            "--num-executors" => s.num_executors = Some(value("--num-executors")?),
            "--conf" | "-c" => {
                let kv = value("--conf")?;
                match kv.split_once('=') {
                    Some((k, v)) => {
                        s.conf.insert(k.to_owned(), v.to_owned());
                    }
                    None => eprintln!("Warning: Ignoring non-Spark config property: {kv}"),
                }
            }
            "--verbose" | "-v" | "--supervise" => {}
            f if VALUE_OPTIONS.contains(&f) => {
                value(f)?;
            }
            f if f.starts_with("--") => bail!("Unrecognized option '{f}'"),
            _ => s.app = Some(arg),
        }
    }
    Ok(s)
}

/// Spark memory strings (`512m`, `2g`, `1024`) in MB.
fn memory_mb(text: &str) -> anyhow::Result<u64> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = &t[i..];
            let mult = match unit {
                "k" | "kb" => 1.0 / 1024.0,
                "m" | "mb" => 1.0,
                "g" | "gb" => 1024.0,
                "t" | "tb" => 1024.0 * 1024.0,
                _ => bail!("invalid memory size {text:?}"),
            };
            (&t[..i], mult)
        }
        None => (t.as_str(), 1.0),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid memory size {text:?}"))?;
    Ok((n * mult).ceil() as u64)
}

/// POSIX shell quoting.
fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The real `spark-submit` a `*.jar` AM runs: `$SPARK_HOME/bin/spark-submit` of the AM's
/// environment, else of this process's, but never this stand-in itself.
fn real_spark_submit(env: &BTreeMap<String, String>) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    let homes = env
        .get("SPARK_HOME")
        .cloned()
        .into_iter()
        .chain(std::env::var("SPARK_HOME").ok());
    for home in homes {
        let submit = Path::new(&home).join("bin/spark-submit");
        let Ok(real) = std::fs::canonicalize(&submit) else {
            continue;
        };
        if Some(&real) != me.as_ref() {
            return Ok(submit);
        }
    }
    bail!(
        "a *.jar application needs a Spark distribution in the application master: set \
         spark.yarn.appMasterEnv.SPARK_HOME to one (its bin/spark-submit runs the driver)"
    )
}

/// The driver command of a `*.jar` AM: the real `spark-submit` in client mode.
fn jar_driver(
    s: &Submit,
    app: &str,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<String>> {
    let mut argv = vec![real_spark_submit(env)?.display().to_string()];
    let mut opt = |flag: &str, value: Option<&String>| {
        if let Some(v) = value {
            argv.push(flag.to_owned());
            argv.push(v.clone());
        }
    };
    opt("--class", s.class.as_ref());
    opt("--jars", s.jars.as_ref());
    opt("--name", s.name.as_ref());
    opt("--driver-memory", s.driver_memory.as_ref());
    for (k, v) in &s.conf {
        // What made this a YARN cluster submit stays here; the driver's master comes from the
        // AM's SPARK_CONF_DIR.
        let yarn = k.starts_with("spark.yarn.")
            || matches!(k.as_str(), "spark.master" | "spark.submit.deployMode");
        if !yarn {
            argv.push("--conf".into());
            argv.push(format!("{k}={v}"));
        }
    }
    argv.push(app.to_owned());
    Ok(argv)
}

fn am_command(s: &Submit, app: &Path, env: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let app_str = app.display().to_string();
    let ext = app
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut argv: Vec<String> = match ext.as_str() {
        "py" => {
            let python = env
                .get("PYSPARK_PYTHON")
                .cloned()
                .or_else(|| s.conf.get("spark.pyspark.python").cloned())
                .or_else(|| std::env::var("PYSPARK_PYTHON").ok())
                .unwrap_or_else(|| "python3".into());
            vec![python, app_str]
        }
        "r" => vec!["Rscript".into(), app_str],
        "jar" => jar_driver(s, &app_str, env)?,
        _ => vec![app_str],
    };
    argv.extend(s.app_args.iter().cloned());
    let line: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    // `exec`: the AM itself is the container's main process (like the JVM of a real Spark AM).
    Ok(format!(
        "exec {} 1><LOG_DIR>/stdout 2><LOG_DIR>/stderr",
        line.join(" ")
    ))
}

/// The RM endpoints: `$YARN_EMULATOR_RM_URL`, else yarn-site.xml in `$YARN_CONF_DIR` or
/// `$HADOOP_CONF_DIR`.
fn client_config() -> anyhow::Result<YarnClientConfig> {
    if let Ok(url) = std::env::var("YARN_EMULATOR_RM_URL")
        && !url.trim().is_empty()
    {
        return Ok(YarnClientConfig::from_endpoints(url.trim(), None));
    }
    let dir = std::env::var_os("YARN_CONF_DIR")
        .or_else(|| std::env::var_os("HADOOP_CONF_DIR"))
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let Some(dir) = dir else {
        bail!(
            "When running with master 'yarn' either HADOOP_CONF_DIR or YARN_CONF_DIR must be set \
             in the environment."
        );
    };
    // Load once to surface the file's own error before the client does.
    SiteConfig::load(&dir)?;
    Ok(YarnClientConfig::from_site(&dir)?)
}

/// The arguments as Spark's `--verbose` prints them (`Parsed arguments:`, one per line), so a
/// test can read from the submit command's log what it was asked for.
fn print_parsed(s: &Submit) {
    let none = || "null".to_owned();
    eprintln!("Parsed arguments:");
    for (name, value) in [
        ("master", s.master.clone()),
        ("deployMode", s.deploy_mode.clone()),
        ("queue", s.queue.clone()),
        ("driverMemory", s.driver_memory.clone()),
        ("driverCores", s.driver_cores.clone()),
        ("executorMemory", s.executor_memory.clone()),
        ("executorCores", s.executor_cores.clone()),
        ("numExecutors", s.num_executors.clone()),
        ("name", s.name.clone()),
        ("proxyUser", s.proxy_user.clone()),
    ] {
        eprintln!("  {name:<24}{}", value.unwrap_or_else(none));
    }
}

async fn run(s: Submit) -> anyhow::Result<ExitCode> {
    print_parsed(&s);
    let master = s
        .master
        .clone()
        .or_else(|| s.conf.get("spark.master").cloned())
        .unwrap_or_default();
    if master != "yarn" {
        bail!("this spark-submit stand-in only supports --master yarn (got {master:?})");
    }
    let mode = s
        .deploy_mode
        .clone()
        .or_else(|| s.conf.get("spark.submit.deployMode").cloned())
        .unwrap_or_else(|| "client".into());
    if mode != "cluster" {
        bail!("this spark-submit stand-in only supports --deploy-mode cluster (got {mode:?})");
    }
    let Some(app) = s.app.clone() else {
        bail!("Missing application resource.");
    };
    let app_path =
        std::path::absolute(&app).with_context(|| format!("bad application path {app}"))?;
    if !app_path.exists() {
        bail!("File {} does not exist", app_path.display());
    }
    let env: BTreeMap<String, String> = s
        .conf
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.strip_prefix("spark.yarn.appMasterEnv.")?.to_owned(),
                v.clone(),
            ))
        })
        .collect();
    let command = am_command(&s, &app_path, &env)?;
    let name = s
        .name
        .clone()
        .or_else(|| s.conf.get("spark.app.name").cloned())
        .unwrap_or_else(|| {
            app_path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let queue = s
        .queue
        .clone()
        .or_else(|| s.conf.get("spark.yarn.queue").cloned())
        .unwrap_or_else(|| "default".into());
    let tags: Vec<String> = s
        .conf
        .get("spark.yarn.tags")
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let driver_mem = memory_mb(
        s.driver_memory
            .as_deref()
            .or(s.conf.get("spark.driver.memory").map(String::as_str))
            .unwrap_or("1g"),
    )?;
    let overhead = (driver_mem / 10).max(384);
    let cores: u32 = s
        .driver_cores
        .as_deref()
        .or(s.conf.get("spark.driver.cores").map(String::as_str))
        .unwrap_or("1")
        .parse()
        .context("invalid driver cores")?;
    let wait = s
        .conf
        .get("spark.yarn.submit.waitAppCompletion")
        .is_none_or(|v| !v.eq_ignore_ascii_case("false"));
    let user = ["HADOOP_USER_NAME", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "yarn".into());

    let config = client_config()?.with_auth(Auth::Simple { user });
    let endpoints = config.endpoints.join(",");
    let client = YarnClient::new(config)?;
    eprintln!("INFO Client: Requesting a new application from cluster at {endpoints}");
    let new_app = client
        .new_application()
        .await
        .context("getNewApplication failed")?;
    let id = new_app.application_id.clone();
    let context = SubmissionContext {
        application_id: id.clone(),
        application_name: name,
        queue: Some(queue),
        application_type: "SPARK".into(),
        application_tags: ApplicationTags { tag: tags },
        am_container_spec: AmContainerSpec {
            commands: Commands { command },
            environment: Environment {
                entry: env
                    .iter()
                    .map(|(k, v)| KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            },
        },
        resource: Resource {
            memory: driver_mem + overhead,
            v_cores: cores,
        },
        max_app_attempts: s
            .conf
            .get("spark.yarn.maxAppAttempts")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        unmanaged_am: false,
    };
    eprintln!("INFO Client: Submitting application {id} to ResourceManager");
    client
        .submit_application_as(&context, s.proxy_user.as_deref())
        .await
        .with_context(|| format!("submitApplication {id} failed"))?;
    eprintln!("INFO YarnClientImpl: Submitted application {id}");
    let state = client
        .app_state(&id)
        .await
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "UNKNOWN".into());
    eprintln!("INFO Client: Application report for {id} (state: {state})");
    println!("{id}");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let app = client.app(&id).await?;
        if app.state.is_final() {
            eprintln!(
                "INFO Client: Application report for {id} (state: {}, final status: {})",
                app.state, app.final_status
            );
            if app.final_status == "SUCCEEDED" {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "Exception in thread \"main\" org.apache.spark.SparkException: Application {id} \
                 finished with failed status\n{}",
                app.diagnostics
            );
            return Ok(ExitCode::FAILURE);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let result = match parse_args(std::env::args().skip(1)) {
        Ok(s) => run(s).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Exception in thread \"main\" org.apache.spark.SparkException: {e:#}");
            ExitCode::FAILURE
        }
    }
}
