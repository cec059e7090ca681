//! The fake scheduler + NodeManager: moves an application through its states and runs its AM
//! command as a local process group.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use super::state::{RmAppState, Shared, Termination, grace, now_ms};

pub(crate) use test_support::procfs::{group_alive, signal_group};

/// The last `max` lines of a file, or an empty string.
fn tail(path: &Path, max: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max)..].join("\n")
}

/// Replaces YARN's container-command placeholders.
fn expand(text: &str, log_dir: &Path) -> String {
    let mut out = text
        .replace("<LOG_DIR>", &log_dir.display().to_string())
        .replace("<CPS>", ":");
    // `{{VAR}}` is YARN's cross-platform form of `$VAR`.
    while let Some(start) = out.find("{{") {
        let Some(len) = out[start..].find("}}") else {
            break;
        };
        let var = out[start + 2..start + len].to_owned();
        out = format!("{}${var}{}", &out[..start], &out[start + len + 2..]);
    }
    out
}

/// Runs one application's life: NEW → NEW_SAVING → SUBMITTED → ACCEPTED → (held?) → RUNNING →
/// FINISHED | FAILED | KILLED.
pub(crate) async fn drive(shared: Arc<Shared>, id: String) {
    let delay = shared.config.transition_delay;
    let Some(wake) = shared.lock().apps.get(&id).map(|a| a.wake.clone()) else {
        return;
    };
    for next in [
        RmAppState::NewSaving,
        RmAppState::Submitted,
        RmAppState::Accepted,
    ] {
        tokio::time::sleep(delay).await;
        let mut st = shared.lock();
        let Some(app) = st.apps.get_mut(&id) else {
            return;
        };
        if app.pending.is_some() {
            break;
        }
        app.state = next;
    }
    // Wait for capacity (the test's hold), or for a kill/fail.
    loop {
        {
            let st = shared.lock();
            let Some(app) = st.apps.get(&id) else { return };
            if app.pending.is_some() || !app.held {
                break;
            }
        }
        wake.notified().await;
    }
    let pending = shared.lock().apps.get(&id).and_then(|a| a.pending.clone());
    if let Some(term) = pending {
        // Never placed: a short KILLING phase, then final.
        tokio::time::sleep(delay).await;
        finish_terminated(&shared, &id, term, None);
        return;
    }
    let child = match spawn(&shared, &id) {
        Ok(child) => child,
        Err(message) => {
            let mut st = shared.lock();
            if let Some(app) = st.apps.get_mut(&id) {
                app.state = RmAppState::Failed;
                app.final_status = "FAILED";
                app.finished = now_ms();
                app.diagnostics = format!(
                    "Application {id} failed 1 times due to AM container launch failure: {message}. \
                     Failing the application."
                );
            }
            return;
        }
    };
    supervise(shared, id, child, wake).await;
}

/// Starts the AM command (as `bash -c`, its own process group) and marks the app RUNNING.
fn spawn(shared: &Arc<Shared>, id: &str) -> Result<Child, String> {
    let mut st = shared.lock();
    let ts = st.cluster_ts;
    let node = shared.config.node_http_address.clone();
    let Some(app) = st.apps.get_mut(id) else {
        return Err("application vanished".into());
    };
    let container = app.container_id(ts);
    let work_dir = shared.log_root.join(id).join(&container);
    let log_dir = shared.log_root.join("userlogs").join(id).join(&container);
    for dir in [&work_dir, &log_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let out = std::fs::File::create(log_dir.join("prelaunch.out")).map_err(|e| e.to_string())?;
    let err = std::fs::File::create(log_dir.join("prelaunch.err")).map_err(|e| e.to_string())?;
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let (nm_host, nm_http_port) = node.rsplit_once(':').unwrap_or((node.as_str(), "8042"));
    let mut cmd = Command::new(shell);
    cmd.arg("-c")
        .arg(expand(&app.command, &log_dir))
        .current_dir(&work_dir)
        .env("CONTAINER_ID", &container)
        .env("APPLICATION_WEB_PROXY_BASE", format!("/proxy/{id}"))
        .env("APP_SUBMIT_TIME_ENV", app.started.to_string())
        .env("NM_HOST", nm_host)
        .env("NM_HTTP_PORT", nm_http_port)
        .env("NM_PORT", "45454")
        .env("LOG_DIRS", &log_dir)
        .env("LOCAL_DIRS", &work_dir)
        .env("PWD", &work_dir)
        .env("USER", &app.user)
        .env("LOGNAME", &app.user)
        .env("HADOOP_USER_NAME", &app.user);
    for (k, v) in &app.env {
        cmd.env(k, expand(v, &log_dir));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {shell}: {e}"))?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    app.pgid = pgid;
    app.log_dir = log_dir;
    app.launched = now_ms();
    app.state = RmAppState::Running;
    if let Some(p) = pgid {
        st.every_pgid.insert(p);
    }
    Ok(child)
}

/// Waits for the AM to exit, or for a kill/fail request.
async fn supervise(
    shared: Arc<Shared>,
    id: String,
    mut child: Child,
    wake: Arc<tokio::sync::Notify>,
) {
    let pgid = shared.lock().apps.get(&id).and_then(|a| a.pgid);
    loop {
        tokio::select! {
            status = child.wait() => {
                // Stragglers of the container die with it, as on a real NodeManager.
                if let Some(p) = pgid { signal_group(p, Signal::SIGKILL); }
                let code = status.ok().and_then(|s| {
                    use std::os::unix::process::ExitStatusExt;
                    s.code().or_else(|| s.signal().map(|sig| 128 + sig))
                });
                let pending = shared.lock().apps.get(&id).and_then(|a| a.pending.clone());
                match pending {
                    Some(term) => finish_terminated(&shared, &id, term, code),
                    None => finish_exited(&shared, &id, code.unwrap_or(-1)),
                }
                return;
            }
            () = wake.notified() => {
                let pending = shared.lock().apps.get(&id).and_then(|a| a.pending.clone());
                let Some(term) = pending else { continue };
                if let Some(p) = pgid {
                    signal_group(p, Signal::SIGTERM);
                    if tokio::time::timeout(grace(&shared.config), child.wait()).await.is_err() {
                        signal_group(p, Signal::SIGKILL);
                    }
                }
                let status = child.wait().await;
                if let Some(p) = pgid { signal_group(p, Signal::SIGKILL); }
                let code = status.ok().and_then(|s| s.code());
                finish_terminated(&shared, &id, term, code);
                return;
            }
        }
    }
}

fn finish_exited(shared: &Shared, id: &str, code: i32) {
    let mut st = shared.lock();
    let ts = st.cluster_ts;
    let Some(app) = st.apps.get_mut(id) else {
        return;
    };
    app.exit_code = Some(code);
    app.finished = now_ms();
    app.pgid = None;
    if code == 0 {
        app.state = RmAppState::Finished;
        app.final_status = "SUCCEEDED";
    } else {
        let mut stderr = tail(&app.log_dir.join("stderr"), 20);
        if stderr.is_empty() {
            stderr = tail(&app.log_dir.join("prelaunch.err"), 20);
        }
        app.state = RmAppState::Failed;
        app.final_status = "FAILED";
        app.diagnostics = format!(
            "Application {id} failed 1 times (global limit =1; local limit is =1) due to AM Container \
             for {} exited with  exitCode: {code}\nFailing this attempt.Diagnostics: Exception from \
             container-launch.\nContainer id: {}\nExit code: {code}\n[last lines of stderr]\n{stderr}\n\
             . Failing the application.",
            app.attempt_id(ts),
            app.container_id(ts),
        );
    }
}

fn finish_terminated(shared: &Shared, id: &str, term: Termination, code: Option<i32>) {
    let mut st = shared.lock();
    let Some(app) = st.apps.get_mut(id) else {
        return;
    };
    app.exit_code = code;
    app.finished = now_ms();
    app.pgid = None;
    match term {
        Termination::Kill(diag) => {
            app.state = RmAppState::Killed;
            app.final_status = "KILLED";
            app.diagnostics = diag;
        }
        Termination::Fail(diag) => {
            app.state = RmAppState::Failed;
            app.final_status = "FAILED";
            app.diagnostics = diag;
        }
    }
}
