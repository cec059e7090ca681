//! Kernel profiles and warm pools with real ipykernels and the local backend: a profile's memory
//! limit holds inside the kernel, profiles are chosen and refused as the API says, and a pool
//! hands out its ready kernels, refills, and never serves a kernel twice or a stale one.
use std::collections::BTreeSet;
use std::time::Duration;

use gateway_http::KernelManager;
use gateway_http::manager::ManagerError;
use gateway_http::manager::StartRequest;
use gateway_http::profiles::{PoolSize, Profile, ProfileSet, Resources};
use http::StatusCode;
use resource_managers::{Placement, ProcessLimits};
use serde_json::{Value, json};

use crate::manager::{Kernels, client};
use crate::support::Req;
use test_support::eventually;

const T: Duration = Duration::from_secs(30);
const GIB: u64 = 1 << 30;

fn profiles(pool: usize) -> ProfileSet {
    ProfileSet {
        profiles: vec![
            Profile {
                name: "small".into(),
                description: "a little memory".into(),
                kernelspecs: vec!["python3".into()],
                resources: Resources {
                    memory: Some(GIB),
                    ..Resources::default()
                },
                placement: Placement {
                    limits: ProcessLimits {
                        memory_bytes: Some(GIB),
                        ..ProcessLimits::default()
                    },
                    ..Placement::default()
                },
                ..Profile::default()
            },
            Profile {
                name: "alices".into(),
                users: vec!["alice".into()],
                ..Profile::default()
            },
            Profile {
                name: "r-only".into(),
                kernelspecs: vec!["ir".into()],
                ..Profile::default()
            },
        ],
        pools: if pool == 0 {
            Vec::new()
        } else {
            vec![PoolSize {
                kernelspec: "python3".into(),
                profile: None,
                size: pool,
            }]
        },
    }
}

fn start_as(user: &str, env: Value, profile: Option<&str>) -> StartRequest {
    StartRequest {
        name: Some("python3".into()),
        env: env.as_object().cloned(),
        user: Some(user.into()),
        profile: profile.map(str::to_owned),
        ..StartRequest::default()
    }
}

async fn run(k: &Kernels, id: &str, code: &str) -> anyhow::Result<String> {
    let mut c = client(&k.connection(id)?).await?;
    let out = c.execute(code, T).await?;
    Ok(format!("{}{}", out.stdout, out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_small_profile_limits_the_kernels_memory_and_no_one_elses() -> anyhow::Result<()> {
    let k = Kernels::new(|_| {})?;
    k.manager.set_profiles(profiles(0));
    let small = k
        .manager
        .start(start_as("bob", json!({"KERNEL_PROFILE": "small"}), None))
        .await?;
    assert_eq!(small.profile.as_deref(), Some("small"));
    let plain = k.manager.start(start_as("bob", json!({}), None)).await?;
    assert_eq!(plain.profile, None);

    let limits = run(
        &k,
        &small.id,
        "import os, resource; print(resource.getrlimit(resource.RLIMIT_AS)[0], os.environ['KERNEL_PROFILE'], os.environ['KERNEL_MEMORY'])",
    )
    .await?;
    assert_eq!(limits.trim(), format!("{GIB} small {GIB}"));
    // Past the limit, the allocation fails inside the kernel, which goes on working.
    let past = run(
        &k,
        &small.id,
        "try:\n    b = bytearray(2 * 1024**3)\n    print('allocated')\nexcept MemoryError:\n    print('MemoryError')",
    )
    .await?;
    assert_eq!(past.trim(), "MemoryError");
    assert_eq!(run(&k, &small.id, "print(6 * 7)").await?.trim(), "42");
    // The other kernel has no such limit and allocates the same at once.
    let other = run(
        &k,
        &plain.id,
        "b = bytearray(2 * 1024**3); print(len(b) // 1024**3)",
    )
    .await?;
    assert_eq!(other.trim(), "2");
    k.manager.shutdown(&small.id).await?;
    k.manager.shutdown(&plain.id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_refused_when_unknown_not_the_users_or_not_for_the_kernelspec() {
    let k = Kernels::new(|_| {}).expect("kernels");
    k.manager.set_profiles(profiles(0));
    let refused = |r: Result<_, ManagerError>| r.err().map(|e| (e.to_string(), e));
    match refused(
        k.manager
            .start(start_as("bob", json!({}), Some("huge")))
            .await,
    ) {
        Some((text, ManagerError::BadRequest { .. })) => assert!(text.contains("huge"), "{text}"),
        other => panic!("unknown profile: {other:?}"),
    }
    match refused(
        k.manager
            .start(start_as("bob", json!({"KERNEL_PROFILE": "alices"}), None))
            .await,
    ) {
        Some((_, ManagerError::Forbidden { reason, .. })) => {
            assert!(reason.contains("alices"), "{reason}")
        }
        other => panic!("forbidden profile: {other:?}"),
    }
    match refused(
        k.manager
            .start(start_as("bob", json!({}), Some("r-only")))
            .await,
    ) {
        Some((text, ManagerError::BadRequest { .. })) => {
            assert!(
                text.contains("does not apply to kernelspec 'python3'"),
                "{text}"
            )
        }
        other => panic!("profile for another kernelspec: {other:?}"),
    }
    assert_eq!(k.manager.count(), 0, "nothing was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_the_api_lists_usable_profiles_and_shows_a_kernels_profile() -> anyhow::Result<()> {
    let (manager, _dir) = crate::support::ipykernel_manager(|_| {})?;
    manager.set_profiles(profiles(0));
    let gateway = crate::support::Gateway {
        router: gateway_http::router(std::sync::Arc::clone(&manager)),
        dir: tempfile::tempdir()?,
    };
    let (status, listed) = gateway.check(Req::get("/api/profiles")).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = listed
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["small", "r-only"], "alice's profile is not listed");
    assert_eq!(listed[0]["resources"]["memory"], json!(GIB));

    let (status, body) = gateway
        .check(Req::post(
            "/api/kernels",
            r#"{"name": "python3", "profile": "nope"}"#,
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("nope"), "{body}");
    let (status, _) = gateway
        .check(Req::post(
            "/api/kernels",
            r#"{"name": "python3", "env": {"KERNEL_PROFILE": "alices"}}"#,
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, started) = gateway
        .check(Req::post(
            "/api/kernels",
            r#"{"name": "python3", "env": {"KERNEL_PROFILE": "small"}}"#,
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    let (_, model) = gateway.check(Req::get(&format!("/api/kernels/{id}"))).await;
    assert_eq!(model["profile"], "small");
    let (_, plain) = gateway
        .check(Req::post("/api/kernels", r#"{"name": "python3"}"#))
        .await;
    assert!(
        plain.get("profile").is_none(),
        "EG's model unchanged: {plain}"
    );
    for kernel in [id.as_str(), plain["id"].as_str().unwrap_or_default()] {
        manager.shutdown(kernel).await?;
    }
    Ok(())
}

fn ready(manager: &KernelManager) -> Vec<String> {
    manager.pools().into_iter().flat_map(|p| p.ready).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_pool_of_two_serves_two_starts_then_refills_and_never_serves_a_kernel_twice()
-> anyhow::Result<()> {
    let k = Kernels::new(|_| {})?;
    k.manager.set_profiles(profiles(2));
    assert!(
        eventually(Duration::from_secs(60), || ready(&k.manager).len() == 2).await,
        "the pool filled: {:?}",
        k.manager.pools()
    );
    let pooled: BTreeSet<String> = ready(&k.manager).into_iter().collect();
    // Jupyter Server's gateway client sends KERNEL_USERNAME and KERNEL_LAUNCH_TIMEOUT.
    let env = |user: &str| json!({"KERNEL_USERNAME": user, "KERNEL_LAUNCH_TIMEOUT": "40"});
    let first = k
        .manager
        .start(start_as("alice", env("alice"), None))
        .await?;
    let second = k.manager.start(start_as("bob", env("bob"), None)).await?;
    let third = k
        .manager
        .start(start_as("carol", env("carol"), None))
        .await?;
    assert!(pooled.contains(&first.id), "first from the pool");
    assert!(pooled.contains(&second.id), "second from the pool");
    assert!(!pooled.contains(&third.id), "third started cold");
    assert_eq!(first.username, "alice");
    // The pool kernel is the user's, environment included.
    let seen = run(
        &k,
        &second.id,
        "import os; print(os.environ['KERNEL_USERNAME'], os.environ['KERNEL_ID'])",
    )
    .await?;
    assert_eq!(seen.trim(), format!("bob {}", second.id));

    // Refilled with new kernels.
    assert!(
        eventually(Duration::from_secs(60), || ready(&k.manager).len() == 2).await,
        "the pool refilled"
    );
    let served: BTreeSet<String> = [&first.id, &second.id, &third.id]
        .into_iter()
        .cloned()
        .collect();
    // Interrupted, restarted or shut down, a served kernel never goes back to the pool.
    k.manager.interrupt(&first.id).await?;
    k.manager.restart(&second.id).await?;
    k.manager.shutdown(&third.id).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now: BTreeSet<String> = ready(&k.manager).into_iter().collect();
    assert!(now.is_disjoint(&served), "{now:?} vs {served:?}");
    assert!(now.is_disjoint(&pooled), "the first pool kernels are gone");
    for id in [&first.id, &second.id] {
        k.manager.shutdown(id).await?;
    }
    // Without a pool the ready kernels are stopped.
    k.manager.set_profiles(profiles(0));
    assert!(ready(&k.manager).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_pool_kernels_the_culler_would_take_are_replaced_and_mismatches_start_cold()
-> anyhow::Result<()> {
    let k = Kernels::new(|c| c.culling.idle_timeout = Duration::from_secs(4))?;
    k.manager.set_profiles(profiles(1));
    assert!(eventually(Duration::from_secs(60), || ready(&k.manager).len() == 1).await);
    let stale = ready(&k.manager);
    assert!(
        eventually(Duration::from_secs(60), || {
            let now = ready(&k.manager);
            now.len() == 1 && now != stale
        })
        .await,
        "a pool kernel older than the idle timeout was replaced"
    );
    let stale_file = k.connection_file(&stale[0]);
    assert!(
        eventually(Duration::from_secs(10), || !stale_file.exists()).await,
        "the stale kernel was stopped"
    );
    // A client variable the pool kernel was not started with makes the start cold.
    let before = ready(&k.manager);
    let custom = k
        .manager
        .start(start_as("alice", json!({"KERNEL_EXTRA": "1"}), None))
        .await?;
    assert!(!before.contains(&custom.id));
    k.manager.shutdown(&custom.id).await?;
    Ok(())
}
