//! Two gateways on one PostgreSQL kernel store behind Debian's HAProxy (round robin, no
//! stickiness), a Jupyter Server 2 client in front: any gateway answers for any kernel, limits
//! hold across both, a `kill -9` of one gateway loses no state, and its kernels are supervised by
//! the other within the lease bound (a killed kernel is restarted exactly once).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::jupyter_server::JupyterServer;
use crate::persistence::{KernelReaper, Place, driver, kernel_pids, listed, started_ids};
use crate::postgres::Postgres;
use crate::support::{Proc, free_port};

/// HAProxy on a loopback port in front of `backends`, round robin, each request balanced on its
/// own; a backend that refuses connections is taken out by the health check and requests are
/// re-dispatched.
pub(crate) fn haproxy(dir: &std::path::Path, backends: &[u16]) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, p)| format!("  server g{i} 127.0.0.1:{p} check inter 500ms fall 2 rise 1\n"))
        .collect();
    let config = format!(
        "global\n  maxconn 512\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 300s\n  timeout server 300s\n  \
         timeout tunnel 1h\n  option redispatch\n  retries 3\n\
         frontend gateways\n  bind 127.0.0.1:{port}\n  default_backend gateways\n\
         backend gateways\n  balance roundrobin\n  option httpchk GET /api\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let mut cmd = Command::new("/usr/sbin/haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let proc = Proc::spawn(
        "haproxy",
        cmd,
        &dir.join("haproxy.log"),
        None,
        Duration::from_secs(10),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("haproxy did not listen:\n{}", proc.log_tail(20));
        }
        std::thread::yield_now();
    }
    Ok((proc, port))
}

/// `id|gateway|restart_count` rows of the store.
fn leases(pg: &Postgres) -> Result<Vec<(String, String, u32)>> {
    let text = pg.psql("SELECT id, gateway, restart_count FROM kernels ORDER BY id")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('|');
            Some((
                parts.next()?.to_owned(),
                parts.next()?.to_owned(),
                parts.next()?.parse().ok()?,
            ))
        })
        .collect())
}

#[tokio::test]
async fn e2e_two_gateways_behind_haproxy_one_killed() -> Result<()> {
    let pg = Postgres::start()?;
    let dir = tempfile::Builder::new()
        .prefix("active-active-")
        .tempdir()?;
    let place = |name: &str| -> Result<Place> {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub)?;
        Ok(Place {
            port: free_port()?,
            dir: sub,
            args: vec![
                format!("--store={}", pg.url()),
                "--lease_ttl=3".to_owned(),
                format!("--gateway_id={name}"),
                "--max_kernels=3".to_owned(),
            ],
        })
    };
    let places = [place("gw-a")?, place("gw-b")?];
    let mut gateways = [places[0].start("gw-a", &[])?, places[1].start("gw-b", &[])?];
    let (mut balancer, port) = haproxy(dir.path(), &[places[0].port, places[1].port])?;
    let balanced = format!("http://127.0.0.1:{port}");
    let server_dir = dir.path().join("jupyter-server");
    let mut server =
        JupyterServer::start(&balanced, &[], &[("KERNEL_USERNAME", "bob")], &server_dir)?;
    let server_url = format!("http://127.0.0.1:{}", server.port);
    let d = dir.path();

    // Through the balancer: two kernels start, a variable is set in the first.
    let mut ids = started_ids(&driver(
        d,
        &server_url,
        &server.token,
        &["start", "2"],
        "start.log",
    )?)?;
    // Jupyter Server lists only the kernels it started.
    let of_server = ids.clone();
    let first = ids.first().context("no kernel")?.clone();
    let _reaper = KernelReaper(ids.clone());
    // The same list from either gateway, whichever started what.
    ids.sort();
    assert_eq!(listed(places[0].port)?, ids);
    assert_eq!(listed(places[1].port)?, ids);
    // max_kernels=3 holds across both gateways: one more starts, the next is refused.
    let third = driver(
        d,
        &format!("http://127.0.0.1:{}", places[1].port),
        "-",
        &["post", "python3"],
        "third.log",
    )?;
    let third = third
        .lines()
        .find_map(|l| l.strip_prefix("STATUS 201 "))
        .with_context(|| format!("a third kernel: {third}"))?
        .trim()
        .to_owned();
    let _reaper_third = KernelReaper(vec![third.clone()]);
    let fourth = driver(
        d,
        &format!("http://127.0.0.1:{}", places[0].port),
        "-",
        &["post", "python3"],
        "fourth.log",
    )?;
    assert!(
        fourth.contains("STATUS 403") && fourth.contains("max kernels"),
        "{fourth}"
    );
    ids.push(third);
    ids.sort();

    // Kill the gateway that supervises the kernel holding the variable.
    let holder = leases(&pg)?
        .into_iter()
        .find(|(id, _, _)| *id == first)
        .map(|(_, gateway, _)| gateway)
        .context("the first kernel has no lease")?;
    let (dead, alive) = if holder == "gw-a" { (0, 1) } else { (1, 0) };
    let survivor = if dead == 0 { "gw-b" } else { "gw-a" };
    let before = kernel_pids(&ids);
    let killed_at = Instant::now();
    gateways[dead].signal(Signal::SIGKILL)?;
    gateways[dead]
        .wait_exit(Duration::from_secs(10))
        .context("the gateway did not die")?;
    gateways[dead].mark_passed();

    // The client's reconnect lands on the survivor, with the kernel's state.
    let mut check = vec!["check", first.as_str()];
    check.extend(
        of_server
            .iter()
            .filter(|id| **id != first)
            .map(String::as_str),
    );
    let checked = driver(d, &server_url, &server.token, &check, "check.log")?;
    assert!(checked.contains("OK: state survived"), "{checked}");
    assert_eq!(
        kernel_pids(&ids),
        before,
        "no kernel was relaunched or duplicated"
    );

    // Within the lease bound every kernel is supervised by the survivor.
    let deadline = Instant::now() + Duration::from_secs(30);
    while leases(&pg)?
        .iter()
        .any(|(_, gateway, _)| gateway != survivor)
    {
        if Instant::now() > deadline {
            bail!(
                "not taken over: {:?}\n{}",
                leases(&pg)?,
                gateways[alive].log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "taken over {:.1} s after the kill (lease_ttl 3 s)",
        killed_at.elapsed().as_secs_f64()
    );

    // A kernel of the dead gateway dies: the survivor restarts it, exactly once.
    let victim = &first;
    let old_pid = *before
        .get(victim)
        .and_then(|p| p.first())
        .context("no process")?;
    kill(Pid::from_raw(old_pid), Signal::SIGKILL)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids = kernel_pids(std::slice::from_ref(victim));
        let now = pids.get(victim).cloned().unwrap_or_default();
        if now.len() == 1 && now[0] != old_pid {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the killed kernel was not restarted: {now:?}\n{}",
                gateways[alive].log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give a second supervisor (there must be none) time to restart it again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = kernel_pids(std::slice::from_ref(victim));
    assert_eq!(
        after.get(victim).map(Vec::len),
        Some(1),
        "one process: {after:?}"
    );
    let restarts = leases(&pg)?
        .into_iter()
        .find(|(id, _, _)| id == victim)
        .map(|(_, _, n)| n);
    assert_eq!(restarts, Some(1), "restarted exactly once");
    let log = gateways[alive].log_text();
    let restarted = log
        .lines()
        .filter(|l| l.contains(victim.as_str()) && l.contains("restarting it"))
        .count();
    assert_eq!(restarted, 1, "{log}");
    assert_eq!(listed(port)?, ids);

    gateways[alive].stop(Duration::from_secs(30));
    gateways[alive].mark_passed();
    balancer.stop(Duration::from_secs(5));
    balancer.mark_passed();
    server.proc.mark_passed();
    Ok(())
}
