//! A YARN kernel outlives its gateway: the RM emulator (`yarn-emulator`) runs the kernel as an
//! application whose AM is gateway_provisioners' `launch_ipykernel.py`; the gateway is killed with
//! SIGKILL and started again on the same SQLite store; it re-attaches to the application over
//! REST and its communication port, the variable set before the crash is still there, and no
//! second application was submitted.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use crate::persistence::{Place, driver, listed};
use crate::support::{Proc, built_binary, free_port, http_get, site_packages, venv};

/// The applications named `kernel_id` as `(state, id)`.
fn apps(rm_port: u16, kernel_id: &str) -> Result<Vec<(String, String)>> {
    let resp = http_get(rm_port, &format!("/ws/v1/cluster/apps?name={kernel_id}"))?;
    let listing: serde_json::Value = serde_json::from_slice(&resp.body)?;
    Ok(listing
        .pointer("/apps/app")
        .and_then(|a| a.as_array())
        .map(|apps| {
            apps.iter()
                .filter_map(|a| {
                    Some((
                        a.get("state")?.as_str()?.to_owned(),
                        a.get("id")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// A kernelspec submitting the GP launcher to YARN through the stand-in `spark-submit`.
fn yarn_kernelspec(dir: &Path, tmp: &Path, conf: &Path) -> Result<()> {
    let launchers = site_packages(&venv()?)?.join("gateway_provisioners/kernel-launchers");
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts)?;
    std::fs::copy(
        launchers.join("python/scripts/launch_ipykernel.py"),
        scripts.join("launch_ipykernel.py"),
    )?;
    std::fs::copy(
        launchers.join("shared/scripts/server_listener.py"),
        scripts.join("server_listener.py"),
    )?;
    let python = venv()?.join("bin/python");
    let mut argv = vec![built_binary("spark-submit")?.display().to_string()];
    argv.extend(
        tests::yarn::CLUSTER_SUBMIT_ARGS
            .iter()
            .map(|a| (*a).to_owned()),
    );
    for (key, value) in [("PYSPARK_PYTHON", &python), ("TMPDIR", &tmp.to_path_buf())] {
        argv.push("--conf".into());
        argv.push(format!("spark.yarn.appMasterEnv.{key}={}", value.display()));
    }
    argv.push(scripts.join("launch_ipykernel.py").display().to_string());
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
        "--spark-context-initialization-mode",
        "none",
    ] {
        argv.push(arg.to_owned());
    }
    let spec_dir = dir.join("kernels/yarn_python");
    std::fs::create_dir_all(&spec_dir)?;
    let spec = serde_json::json!({
        "argv": argv,
        "display_name": "Python on YARN",
        "language": "python",
        "metadata": {"process_proxy": {"class_name":
            "enterprise_gateway.services.processproxies.yarn.YarnClusterProcessProxy"}},
        "env": {"TMPDIR": tmp, "HADOOP_CONF_DIR": conf},
    });
    std::fs::write(spec_dir.join("kernel.json"), spec.to_string())?;
    Ok(())
}

#[tokio::test]
async fn e2e_yarn_kernel_reattached_after_kill_9() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("store-yarn-").tempdir()?;
    let d = dir.path();
    let (tmp, conf) = (d.join("tmp"), d.join("hadoop-conf"));
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&conf)?;
    let mut emulator_cmd = Command::new(built_binary("yarn-emulator")?);
    emulator_cmd
        .args(["--addr", "127.0.0.1:0"])
        .env("TMPDIR", &tmp);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("HADOOP_") || k.starts_with("YARN_") || k.starts_with("SPARK_") {
            emulator_cmd.env_remove(&key);
        }
    }
    let mut emulator = Proc::spawn(
        "yarn-emulator",
        emulator_cmd,
        &d.join("yarn-emulator.log"),
        Some("READY"),
        Duration::from_secs(30),
    )?;
    let rm_port: u16 = emulator
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
             <value>127.0.0.1:{rm_port}</value></property></configuration>\n"
        ),
    )?;
    yarn_kernelspec(d, &tmp, &conf)?;

    let place = Place {
        port: free_port()?,
        dir: d.join("gateway"),
        args: vec![
            format!("--store={}", d.join("kernels.sqlite").display()),
            format!("--kernelspec_dirs={}", d.join("kernels").display()),
            format!("--yarn_endpoint=http://127.0.0.1:{rm_port}/ws/v1/cluster"),
        ],
    };
    std::fs::create_dir_all(&place.dir)?;
    let mut first = place.start("gateway-1", &[])?;
    let url = format!("http://127.0.0.1:{}", place.port);
    let posted = driver(d, &url, "-", &["post", "yarn_python"], "post.log")?;
    let id = posted
        .lines()
        .find_map(|l| l.strip_prefix("STATUS 201 "))
        .with_context(|| format!("starting the YARN kernel: {posted}\n{}", first.log_tail(30)))?
        .trim()
        .to_owned();
    let set = "survivor = 'still here'; print(survivor)";
    driver(d, &url, "-", &["exec", &id, set, "still here"], "set.log")?;
    let before = apps(rm_port, &id)?;
    assert!(
        matches!(before.as_slice(), [(state, _)] if state == "RUNNING"),
        "{before:?}"
    );

    first.signal(Signal::SIGKILL)?;
    first
        .wait_exit(Duration::from_secs(10))
        .context("the gateway did not die")?;
    first.mark_passed();
    let mut second = place.start("gateway-2", &[])?;
    assert_eq!(listed(place.port)?, vec![id.clone()]);
    assert!(second.log_text().contains("re-attached kernel"));
    let read = driver(
        d,
        &url,
        "-",
        &["exec", &id, "print(survivor)", "still here"],
        "read.log",
    )?;
    assert!(read.contains("OK:"), "{read}");
    assert_eq!(
        apps(rm_port, &id)?,
        before,
        "the same application, none submitted again"
    );

    // A clean stop shuts the kernel down: its application ends.
    second.stop(Duration::from_secs(30));
    second.mark_passed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while apps(rm_port, &id)?
        .iter()
        .any(|(state, _)| state == "RUNNING")
    {
        if Instant::now() > deadline {
            bail!("the application still runs: {:?}", apps(rm_port, &id)?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    emulator.mark_passed();
    Ok(())
}
