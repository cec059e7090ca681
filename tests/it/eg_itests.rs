//! Enterprise Gateway's own integration tests, unchanged, against the gateway under test.
//!
//! The tests ship inside the `jupyter-enterprise-gateway==3.3.0` wheel installed in `.venv-eg`
//! (`enterprise_gateway/itests/`, with the `authorization_test` kernelspec under `kernels/`).
//! They are run from there with pytest; nothing is copied into this repository.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::support::{
    Gateway, GatewayConfig, Impl, hostname, run_bounded, site_packages, venv, venv_eg,
};

/// The itest selection that needs only local Python kernels.
const SELECTION: [&str; 2] = [
    "test_python_kernel.py::TestPythonKernelLocal",
    "test_authorization.py",
];

/// At least this many tests must pass (5 in TestPythonKernelLocal, 2 in test_authorization).
const MIN_PASSED: u32 = 6;

#[test]
fn e2e_eg_itests() -> Result<()> {
    let started = Instant::now();
    let venv_eg = venv_eg()?;
    let itests = site_packages(&venv_eg)?.join("enterprise_gateway/itests");
    if !itests
        .join("kernels/authorization_test/kernel.json")
        .exists()
    {
        bail!(
            "{} lacks the itests; run `cargo xtask setup`",
            itests.display()
        );
    }
    let config = GatewayConfig {
        // authorization_test from the wheel, python3 (ipykernel) from the test venv.
        jupyter_path: vec![itests.clone(), venv()?.join("share/jupyter")],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::from_env()?, &config)?;

    let prefix: String = hostname()?.chars().take(3).collect();
    let dir = tempfile::Builder::new().prefix("eg-itests-").tempdir()?;
    let mut pytest = Command::new(venv_eg.join("bin/python"));
    pytest
        .args([
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-vv",
            "-o",
            "addopts=",
            "-W",
            "default",
        ])
        .args(SELECTION.iter().map(|s| itests.join(s)))
        .current_dir(dir.path())
        .env("GATEWAY_HOST", gateway.host())
        .env("KERNEL_USERNAME", "bob")
        .env("KERNEL_LAUNCH_TIMEOUT", "60")
        .env("ITEST_HOSTNAME_PREFIX", &prefix)
        .env("PYTHON_KERNEL_LOCAL_NAME", "python3")
        .env("PYTHONUNBUFFERED", "1");
    let (status, output) = run_bounded(
        "pytest (EG itests)",
        pytest,
        &dir.path().join("pytest.log"),
        Duration::from_secs(170),
    )?;
    println!("{output}");
    println!(
        "pytest finished with {status} after {:?} (gateway: {:?})",
        started.elapsed(),
        gateway.implementation
    );
    if !status.success() {
        bail!("EG itests failed ({status}); the gateway's log tail follows");
    }
    let passed = passed_count(&output).context("pytest printed no `N passed` summary")?;
    assert!(
        passed >= MIN_PASSED,
        "only {passed} itests passed (want >= {MIN_PASSED}):\n{output}"
    );
    gateway.proc.mark_passed();
    Ok(())
}

/// `N` from pytest's closing summary line (`==== 7 passed in 12.3s ====`).
fn passed_count(output: &str) -> Option<u32> {
    let summary = output
        .lines()
        .rev()
        .find(|l| l.contains(" passed") && l.trim_start().starts_with('='))?;
    let words: Vec<&str> = summary.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.trim_end_matches(',') == "passed")?;
    words.get(at.checked_sub(1)?)?.parse().ok()
}

#[test]
fn pytest_summary_is_parsed() {
    let check = |text: &str, want: Option<u32>| assert_eq!(passed_count(text), want, "{text:?}");
    check("===== 7 passed in 12.34s =====", Some(7));
    check("== 1 failed, 6 passed, 2 warnings in 20.0s ==", Some(6));
    check(
        "test_x PASSED\n===== 2 passed, 1 skipped in 1s =====\n",
        Some(2),
    );
    check("===== 3 failed in 2s =====", None);
    check("no summary here", None);
}
