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
    // The lease loop reports an outage it saw on one of its ticks, and then the recovery on a
    // later tick, which may come after the first successful start. (A tick that was waiting on
    // the pool through the whole outage sees none, and says nothing.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = gateway.log_text();
        let saw_outage = log.contains("starts are refused until it is back");
        if !saw_outage || log.contains("answers again") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the outage and the recovery are not both logged:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

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

/// The PostgreSQL store's own guarantees against a real server: of two gateways claiming the
/// same expired leases at once exactly one wins each, limits are counted across both, a row a
/// foreign program wrote is skipped, and a schema from a newer gateway is refused.
#[tokio::test]
async fn e2e_postgres_store_claims_limits_bad_rows_and_newer_schema() -> Result<()> {
    use gateway_http::store::{KernelStore, Limits, PostgresStore, Reservation, StoredKernel};

    let mut pg = Postgres::start()?;
    let a = PostgresStore::connect(&pg.url()).await?;
    let b = PostgresStore::connect(&pg.url()).await?;
    let now = time::OffsetDateTime::now_utc();
    let row = |user: &str| StoredKernel {
        id: uuid::Uuid::new_v4().to_string(),
        kernelspec: "python3".to_owned(),
        username: user.to_owned(),
        record: None,
        env: std::collections::BTreeMap::new(),
        cwd: None,
        restart_count: 0,
        created: now,
        last_activity: now,
        execution_state: "idle".to_owned(),
        gateway: "gw-dead".to_owned(),
        lease_until: now,
    };
    // Twenty kernels of a dead gateway, their leases already expired.
    let mut ids = Vec::new();
    for _ in 0..20 {
        let kernel = row("alice");
        assert_eq!(
            a.reserve(&kernel, Limits::default(), Duration::ZERO)
                .await?,
            Reservation::Reserved
        );
        ids.push(kernel.id);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let race = |store: PostgresStore, name: &'static str, ids: Vec<String>| {
        tokio::spawn(async move {
            let mut won = Vec::new();
            for id in ids {
                if store.claim(&id, name, Duration::from_secs(60)).await? {
                    won.push(id);
                }
            }
            anyhow::Ok(won)
        })
    };
    let mut reversed = ids.clone();
    reversed.reverse();
    let (won_a, won_b) = (
        race(a.clone(), "gw-a", ids.clone()),
        race(b.clone(), "gw-b", reversed),
    );
    let (won_a, won_b) = (won_a.await??, won_b.await??);
    assert_eq!(
        won_a.len() + won_b.len(),
        ids.len(),
        "every lease taken exactly once"
    );
    assert!(won_a.iter().all(|id| !won_b.contains(id)));
    assert_eq!(
        pg.psql("SELECT count(*) FROM kernels WHERE gateway = 'gw-dead'")?,
        "0"
    );

    // Limits across gateways: 20 of alice's exist; a limit of 21 admits one more, from either.
    let limits = Limits {
        max_total: Some(21),
        max_per_user: None,
    };
    assert_eq!(
        a.reserve(&row("bob"), limits, Duration::from_secs(60))
            .await?,
        Reservation::Reserved
    );
    assert!(matches!(
        b.reserve(&row("carol"), limits, Duration::from_secs(60))
            .await?,
        Reservation::Full { total: 21, .. }
    ));

    // A foreign row is skipped with a log line; the others load.
    pg.psql(
        "INSERT INTO kernels (id, kernelspec, username, record, env, cwd, restart_count, created_ms, \
         last_activity_ms, execution_state, gateway, lease_until_ms) \
         VALUES ('not-a-uuid', 's', 'u', '{', '{}', NULL, 0, 0, 0, 'idle', 'x', 0)",
    )?;
    assert_eq!(b.load().await?.len(), 21);

    // A newer schema is refused with a message naming both versions.
    pg.psql("UPDATE schema_version SET version = 7")?;
    let refused = PostgresStore::connect(&pg.url())
        .await
        .err()
        .map(|e| e.to_string());
    let refused = refused.unwrap_or_default();
    assert!(
        refused.contains("schema version 7") && refused.contains("newer than the version 1"),
        "{refused}"
    );
    pg.mark_passed();
    Ok(())
}

/// `--store_ca_file`: the gateway talks to PostgreSQL over TLS only, checking the server's
/// certificate; a CA that did not sign it stops the gateway at start.
#[tokio::test]
async fn e2e_kernel_store_postgres_over_tls() -> Result<()> {
    let mut pg = Postgres::start_tls()?;
    let certificate = pg.certificate.clone().context("no certificate")?;
    let dir = tempfile::Builder::new().prefix("store-pg-tls-").tempdir()?;
    let place = Place {
        port: free_port()?,
        dir: dir.path().to_path_buf(),
        args: vec![
            format!("--store={}", pg.url()),
            format!("--store_ca_file={}", certificate.display()),
        ],
    };
    let mut gateway = place.start("gateway-tls", &[])?;
    let url = format!("http://127.0.0.1:{}", place.port);
    let ids = started_ids(&driver(
        dir.path(),
        &url,
        "-",
        &["start", "1"],
        "start.log",
    )?)?;
    let _reaper = KernelReaper(ids.clone());
    let ssl = pg.psql(
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'enterprise-gateway'",
    )?;
    assert_eq!(ssl, "t", "every connection of the gateway is TLS");
    gateway.stop(Duration::from_secs(20));
    gateway.mark_passed();

    // A CA that did not sign the server's certificate: no connection, no start.
    let other = dir.path().join("other-ca.crt");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other)
        .output()?;
    assert!(out.status.success());
    let refused = Place {
        port: free_port()?,
        dir: dir.path().join("refused"),
        args: vec![
            format!("--store={}", pg.url()),
            format!("--store_ca_file={}", other.display()),
        ],
    };
    std::fs::create_dir_all(&refused.dir)?;
    assert!(refused.start("gateway-refused", &[]).is_err());
    let log = std::fs::read_to_string(refused.dir.join("gateway-refused.log"))?;
    assert!(log.contains("kernel store"), "{log}");
    pg.mark_passed();
    Ok(())
}
