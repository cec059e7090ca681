//! The PostgreSQL kernel store with Debian's PostgreSQL: kernels recorded there survive a
//! `kill -9` of the gateway, and while the database is down starts answer 503 with a clear
//! reason, running kernels keep working, and the gateway reconnects by itself once it is back.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use crate::persistence::{KernelReaper, Place, driver, kernel_pids, listed, started_ids};
use crate::postgres::Postgres;
use crate::support::free_port;

#[tokio::test]
async fn e2e_kernel_store_postgres_down_and_back() -> Result<()> {
    let mut pg = Postgres::start()?;
    let dir = tempfile::Builder::new().prefix("store-pg-").tempdir()?;
    let place = Place {
        port: free_port()?,
        dir: dir.path().to_path_buf(),
        args: vec![format!("--store={}", pg.url()), "--lease_ttl=3".to_owned()],
    };
    let mut gateway = place.start("gateway-1", &[])?;
    let url = format!("http://127.0.0.1:{}", place.port);
    let d = dir.path();
    let mut ids = started_ids(&driver(d, &url, "-", &["start", "1"], "start.log")?)?;
    let _reaper = KernelReaper(ids.clone());
    assert_eq!(
        pg.psql("SELECT count(*) FROM kernels WHERE record IS NOT NULL")?,
        "1"
    );
    assert_eq!(pg.psql("SELECT version FROM schema_version")?, "1");

    pg.stop();
    let refused = driver(d, &url, "-", &["post", "python3"], "post-down.log")?;
    assert!(
        refused.contains("STATUS 503")
            && refused.contains("kernel store")
            && refused.contains("unavailable"),
        "a start while the store is down: {refused}"
    );
    let first = ids.first().context("no kernel")?.clone();
    let running = driver(
        d,
        &url,
        "-",
        &["exec", &first, "print(survivor)", "still here"],
        "exec-down.log",
    )?;
    assert!(running.contains("OK:"), "{running}");
    assert_eq!(listed(place.port)?, ids, "the list does not need the store");

    pg.resume()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let answer = driver(d, &url, "-", &["post", "python3"], "post-back.log")?;
        if let Some(id) = answer.lines().find_map(|l| l.strip_prefix("STATUS 201 ")) {
            break id.trim().to_owned();
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway did not reconnect to the store: {answer}\n{}",
                gateway.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ids.push(second);
    ids.sort();
    let log = gateway.log_text();
    assert!(
        log.contains("the kernel store is unavailable") && log.contains("answers again"),
        "{log}"
    );

    // Both kernels, the one from before the outage and the one after it, survive a crash.
    let before = kernel_pids(&ids);
    gateway.signal(Signal::SIGKILL)?;
    gateway
        .wait_exit(Duration::from_secs(10))
        .context("the gateway did not die")?;
    gateway.mark_passed();
    let mut restarted = place.start("gateway-2", &[])?;
    assert_eq!(listed(place.port)?, ids);
    assert_eq!(kernel_pids(&ids), before, "re-attached, not relaunched");
    let back = driver(
        d,
        &url,
        "-",
        &["exec", &first, "print(survivor)", "still here"],
        "exec-after.log",
    )?;
    assert!(back.contains("OK:"), "{back}");
    // A clean stop shuts them down and forgets them.
    restarted.stop(Duration::from_secs(20));
    restarted.mark_passed();
    assert_eq!(pg.psql("SELECT count(*) FROM kernels")?, "0");
    assert!(kernel_pids(&ids).values().all(Vec::is_empty));
    pg.mark_passed();
    Ok(())
}
