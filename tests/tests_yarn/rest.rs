//! The emulator's exact HTTP answers (raw requests), and the stand-in `spark-submit`'s failures.

use std::time::Duration;

use tests::yarn::{EmulatorConfig, RmAppState, YarnEmulator};

use crate::{
    Workdir, any_port, fast_config, finish, raw, read_pid, spark_submit, start_one, submit_kernel,
    submit_kernel_with,
};

#[tokio::test]
async fn apps_listing_filters_and_null_when_empty() {
    let (emu, work) = start_one().await;
    let url = emu.url();
    let empty = raw("GET", &format!("{url}/ws/v1/cluster/apps"), &[], None)
        .await
        .expect("apps");
    assert_eq!(
        (empty.status, empty.body.as_str()),
        (200, r#"{"apps":null}"#)
    );

    let a = submit_kernel(&work, "filter-a", Some("t1,T2"), 0).await;
    let b = submit_kernel(&work, "filter-b", None, 0).await;
    emu.wait_for_state(&b, RmAppState::Running, Duration::from_secs(5))
        .await;

    #[track_caller]
    fn ids(body: &serde_json::Value) -> Vec<String> {
        body["apps"]["app"]
            .as_array()
            .map(|apps| {
                apps.iter()
                    .map(|a| a["id"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("states=running", vec![&a, &b]),
        ("states=FINISHED,killed", vec![]),
        ("applicationTags=x,t2", vec![&a]),
        ("user=alice&queue=default", vec![&a, &b]),
        ("user=bob", vec![]),
        ("limit=1", vec![&a]),
        ("name=filter-b", vec![&b]),
        ("applicationTypes=spark", vec![&a, &b]),
        ("startedTimeBegin=99999999999999", vec![]),
    ];
    for (query, want) in cases {
        let r = raw(
            "GET",
            &format!("{url}/ws/v1/cluster/apps?{query}"),
            &[],
            None,
        )
        .await
        .expect("apps");
        assert_eq!(r.status, 200, "{query}");
        assert_eq!(ids(&r.json()), want, "{query}");
        if want.is_empty() {
            assert_eq!(r.body, r#"{"apps":null}"#, "{query}");
        }
    }
    let bad = raw(
        "GET",
        &format!("{url}/ws/v1/cluster/apps?states=BOGUS"),
        &[],
        None,
    )
    .await
    .expect("bad");
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["RemoteException"]["exception"],
        "BadRequestException"
    );

    for id in [&a, &b] {
        assert!(emu.kill_app(id));
        emu.wait_for_state(id, RmAppState::Killed, Duration::from_secs(5))
            .await;
    }
    finish(emu).await;
}

#[tokio::test]
async fn put_state_needs_a_user_answers_202_then_final_and_rejects_other_states() {
    // An AM that ignores SIGTERM: the kill takes the whole grace period, then SIGKILL.
    let config = EmulatorConfig {
        kill_grace: Duration::from_millis(1500),
        ..fast_config()
    };
    let emu = YarnEmulator::start_with(config, &[any_port()])
        .await
        .expect("emulator");
    let url = emu.url();
    let work = Workdir::new(std::slice::from_ref(&url));
    let conf = ["spark.yarn.appMasterEnv.AM_IGNORE_TERM=1"];
    let id = submit_kernel_with(&work, "put-state", None, 0, &conf).await;
    emu.wait_for_state(&id, RmAppState::Running, Duration::from_secs(5))
        .await;
    // RUNNING means the AM was spawned, not that its shell has set its TERM trap yet (a SIGTERM
    // before that ends it at once); it writes its child's pid right after the trap.
    read_pid(&work.release_file("put-state").with_extension("child")).await;
    let state_url = format!("{url}/ws/v1/cluster/apps/{id}/state");

    let anon = raw("PUT", &state_url, &[], Some(r#"{"state":"KILLED"}"#))
        .await
        .expect("put");
    assert_eq!(anon.status, 401);
    assert_eq!(
        anon.json()["RemoteException"]["exception"],
        "AuthorizationException"
    );

    // user.name hands out a hadoop.auth cookie, which then identifies the caller on its own.
    let login = raw(
        "GET",
        &format!("{url}/ws/v1/cluster/info?user.name=bob"),
        &[],
        None,
    )
    .await
    .expect("login");
    let set_cookie = login
        .header("set-cookie")
        .expect("hadoop.auth cookie")
        .to_owned();
    assert!(
        set_cookie.starts_with("hadoop.auth=\"u=bob&p=bob&t=simple&e="),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();

    let wrong = raw(
        "PUT",
        &state_url,
        &[("Cookie", &cookie)],
        Some(r#"{"state":"FINISHED"}"#),
    )
    .await
    .expect("put");
    assert_eq!(wrong.status, 400);
    assert_eq!(
        wrong.json()["RemoteException"]["message"],
        "Only 'KILLED' is allowed as a target state."
    );

    let same = raw(
        "PUT",
        &state_url,
        &[("Cookie", &cookie)],
        Some(r#"{"state":"RUNNING"}"#),
    )
    .await
    .expect("put");
    assert_eq!(
        (same.status, same.json()["state"].as_str()),
        (200, Some("RUNNING")),
        "already there"
    );

    let forged = cookie.replace("u=bob", "u=eve");
    let forged_put = raw(
        "PUT",
        &state_url,
        &[("Cookie", &forged)],
        Some(r#"{"state":"KILLED"}"#),
    )
    .await
    .expect("put");
    assert_eq!(forged_put.status, 401, "a forged cookie is anonymous");

    let first = raw(
        "PUT",
        &state_url,
        &[("Cookie", &cookie)],
        Some(r#"{"state":"KILLED"}"#),
    )
    .await
    .expect("put");
    assert_eq!(first.status, 202);
    assert_eq!(first.json()["state"], "KILLING");
    assert!(
        first
            .header("location")
            .is_some_and(|l| l.ends_with("/state"))
    );
    let during = raw("GET", &format!("{url}/ws/v1/cluster/apps/{id}"), &[], None)
        .await
        .expect("app");
    assert_eq!(
        during.json()["app"]["state"],
        "RUNNING",
        "external state hides KILLING"
    );
    let raw_state = raw("GET", &state_url, &[], None).await.expect("state");
    assert_eq!(
        raw_state.json()["state"],
        "KILLING",
        "/state shows the internal state"
    );
    let killed = emu
        .wait_for_state(&id, RmAppState::Killed, Duration::from_secs(10))
        .await
        .expect("app");
    assert_eq!(
        killed.state,
        RmAppState::Killed,
        "SIGKILL after the grace period"
    );
    assert!(emu.live_process_groups().is_empty());
    let again = raw(
        "PUT",
        &state_url,
        &[("Cookie", &cookie)],
        Some(r#"{"state":"KILLED"}"#),
    )
    .await
    .expect("put");
    assert_eq!(
        (again.status, again.json()["state"].as_str()),
        (200, Some("KILLED"))
    );
    finish(emu).await;
}

#[tokio::test]
async fn standby_redirects_except_info_and_probe_paths_answer() {
    let emu = YarnEmulator::start_with(fast_config(), &[any_port(), any_port()])
        .await
        .expect("emulator");
    let (rm0, rm1) = (emu.rm_url(0).expect("rm0"), emu.rm_url(1).expect("rm1"));
    emu.fail_over_to(1);
    let r = raw(
        "GET",
        &format!("{rm0}/ws/v1/cluster/apps?states=RUNNING"),
        &[],
        None,
    )
    .await
    .expect("apps");
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location"),
        Some(format!("{rm1}/ws/v1/cluster/apps?states=RUNNING").as_str())
    );
    assert!(r.body.starts_with("This is standby RM."), "{}", r.body);
    let info = raw("GET", &format!("{rm0}/ws/v1/cluster/info"), &[], None)
        .await
        .expect("info");
    assert_eq!(
        (info.status, info.json()["clusterInfo"]["haState"].as_str()),
        (200, Some("STANDBY"))
    );
    let active = raw("GET", &format!("{rm0}/isActive"), &[], None)
        .await
        .expect("isActive");
    assert_eq!(active.status, 405);
    for probe in ["/cluster", "/ws/v1/cluster/cluster"] {
        let r = raw("GET", &format!("{rm1}{probe}"), &[], None)
            .await
            .expect("probe");
        assert_eq!(r.status, 200, "{probe}");
    }
    let metrics = raw("GET", &format!("{rm1}/ws/v1/cluster/metrics"), &[], None)
        .await
        .expect("metrics");
    assert_eq!(metrics.json()["clusterMetrics"]["totalMB"], 8192);
    let sched = raw("GET", &format!("{rm1}/ws/v1/cluster/scheduler"), &[], None)
        .await
        .expect("scheduler");
    let info = &sched.json()["scheduler"]["schedulerInfo"];
    assert_eq!(info["type"], "capacityScheduler");
    assert_eq!(
        info["queues"]["queue"][0]["capacities"]["queueCapacitiesByPartition"][0]["partitionName"],
        ""
    );
    emu.set_no_active();
    let none = raw("GET", &format!("{rm1}/ws/v1/cluster/apps"), &[], None)
        .await
        .expect("apps");
    assert_eq!(none.status, 307);
    assert!(none.header("location").is_none() && none.header("refresh").is_some());
    finish(emu).await;
}

#[tokio::test]
async fn spark_submit_failures_exit_non_zero_with_a_message() {
    // No HADOOP_CONF_DIR: Spark's own message.
    let out = spark_submit(
        None,
        &["--master", "yarn", "--deploy-mode", "cluster", "/bin/true"],
    )
    .await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("HADOOP_CONF_DIR or YARN_CONF_DIR must be set"),
        "{}",
        out.stderr
    );

    // yarn-site.xml pointing at a port nobody listens on.
    let dead = tokio::net::TcpListener::bind(any_port())
        .await
        .expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let work = Workdir::new(&[dead_url]);
    let out = spark_submit(
        Some(work.path()),
        &[
            "--master",
            "yarn",
            "--deploy-mode",
            "cluster",
            "--name",
            "k",
            &work.am_script().display().to_string(),
        ],
    )
    .await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("No active YARN ResourceManager"),
        "{}",
        out.stderr
    );

    // Client mode and a missing app file are refused.
    let out = spark_submit(
        Some(work.path()),
        &["--master", "yarn", "--deploy-mode", "client", "x.py"],
    )
    .await;
    assert_eq!(out.code, Some(1));
    let out = spark_submit(
        Some(work.path()),
        &[
            "--master",
            "yarn",
            "--deploy-mode",
            "cluster",
            "/nonexistent.py",
        ],
    )
    .await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
}

#[tokio::test]
async fn unknown_queue_fails_the_app_and_proxy_user_owns_it() {
    let (emu, work) = start_one().await;
    let script = work.am_script().display().to_string();
    let out = spark_submit(
        Some(work.path()),
        &[
            "--master",
            "yarn",
            "--deploy-mode",
            "cluster",
            "--name",
            "q",
            "--queue",
            "nope",
            "--proxy-user",
            "carol",
            "--conf",
            "spark.yarn.submit.waitAppCompletion=false",
            &script,
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let id = out.stdout.trim();
    let app = emu.app(id).expect("app");
    assert_eq!(
        (app.state, app.user.as_str()),
        (RmAppState::Failed, "carol")
    );
    assert!(
        app.diagnostics.contains("unknown queue: nope"),
        "{}",
        app.diagnostics
    );

    // waitAppCompletion (the default) waits for the end and reports failure.
    std::fs::write(work.release_file("wait"), b"").expect("release");
    let release = work.release_file("wait").display().to_string();
    let out = spark_submit(
        Some(work.path()),
        &[
            "--master",
            "yarn",
            "--deploy-mode",
            "cluster",
            "--name",
            "wait",
            &script,
            &release,
            "5",
        ],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("finished with failed status"),
        "{}",
        out.stderr
    );
    finish(emu).await;
}
