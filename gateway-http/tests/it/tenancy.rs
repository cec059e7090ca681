//! Owners and tenant isolation through the router, with real ipykernels: each user sees and
//! touches only their own kernels and sessions; another user's kernel answers exactly as an
//! unknown id; admins see everything with the owner; only the `impersonate` role may name
//! another `KERNEL_USERNAME`.
use std::sync::Arc;

use gateway_http::auth::{Authenticator, Credentials, Identity, Outcome, Rejection, Roles};
use gateway_http::{Authenticators, GatewayConfig};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Gateway, Req};

/// An embedder's own authenticator: `Authorization: token <user>` names the user, with groups
/// and roles from a fixed table (the trait is the extension point; this one is for tests).
#[derive(Debug)]
struct Directory;

#[async_trait::async_trait]
impl Authenticator for Directory {
    fn name(&self) -> &'static str {
        "directory"
    }

    async fn authenticate(&self, credentials: &Credentials<'_>) -> Outcome {
        let Some(token) = credentials.token() else {
            return Outcome::Skip;
        };
        let (groups, roles): (&[&str], Roles) = match token {
            "alice" => (&["analysts"], Roles::default()),
            "bob" => (&[], Roles::default()),
            "ops" => (&[], Roles::default()), // admin by the chain's admin_users grant
            "service" => (&[], Roles::ALL),
            "bad name" => (&[], Roles::default()),
            _ => return Outcome::Reject(Rejection::new("unknown user")),
        };
        Outcome::Accept(Identity {
            user: token.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            roles,
            method: "directory",
        })
    }
}

fn tenants(config: &mut GatewayConfig) {
    let mut auth = Authenticators::new(vec![Arc::new(Directory)]);
    auth.admin_users = vec!["ops".to_owned()];
    config.auth = auth;
    config.list_kernels = true;
    config.max_kernels_per_user = Some(1);
}

fn as_user(user: &str, request: Req) -> Req {
    request.header("authorization", &format!("token {user}"))
}

async fn start(gateway: &Gateway, user: &str, body: Value) -> (StatusCode, Value) {
    gateway
        .check(as_user(user, Req::post("/api/kernels", &body.to_string())))
        .await
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|kernels| {
            kernels
                .iter()
                .filter_map(|k| k["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn e2e_users_see_and_touch_only_their_own_kernels() -> anyhow::Result<()> {
    let gateway = Gateway::with_ipykernel(tenants)?;

    // Alice starts a kernel; the owner is her authenticated name.
    let (status, alice_kernel) = start(&gateway, "alice", json!({"name": "python3"})).await;
    assert_eq!(status, StatusCode::CREATED, "{alice_kernel}");
    assert_eq!(alice_kernel["owner"], "alice");
    let alice_id = alice_kernel["id"].as_str().unwrap_or_default().to_owned();

    // Bob may not start one as alice, nor with a hostile name; he may name himself.
    let (status, body) = start(
        &gateway,
        "bob",
        json!({"name": "python3", "env": {"KERNEL_USERNAME": "alice"}}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("'bob' may not start kernels as user 'alice'")),
        "{body}"
    );
    for hostile in ["a;id", "../etc", "a b", "$(id)", "x\u{0}y"] {
        let (status, body) = start(
            &gateway,
            "bob",
            json!({"name": "python3", "env": {"KERNEL_USERNAME": hostile}}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{hostile:?}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("KERNEL_USERNAME is not an acceptable user name")),
            "{body}"
        );
    }
    let (status, bob_kernel) = start(
        &gateway,
        "bob",
        json!({"name": "python3", "env": {"KERNEL_USERNAME": "bob"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{bob_kernel}");
    let bob_id = bob_kernel["id"].as_str().unwrap_or_default().to_owned();

    // The per-user limit counts the owner's kernels: a second one for alice is refused, even
    // though two kernels run in total.
    let (status, body) = start(&gateway, "alice", json!({"name": "python3"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("user 'alice'")),
        "{body}"
    );

    // Lists: each user sees their own; the admin sees both, with owners.
    let (_, list) = gateway
        .check(as_user("alice", Req::get("/api/kernels")))
        .await;
    assert_eq!(ids(&list), std::slice::from_ref(&alice_id));
    let (_, list) = gateway
        .check(as_user("bob", Req::get("/api/kernels")))
        .await;
    assert_eq!(ids(&list), std::slice::from_ref(&bob_id));
    let (_, list) = gateway
        .check(as_user("ops", Req::get("/api/kernels")))
        .await;
    let mut all = ids(&list);
    all.sort();
    let mut both = vec![alice_id.clone(), bob_id.clone()];
    both.sort();
    assert_eq!(all, both);
    let owners: Vec<&str> = list
        .as_array()
        .map(|l| l.iter().filter_map(|k| k["owner"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        owners.contains(&"alice") && owners.contains(&"bob"),
        "{list}"
    );

    // Every verb on alice's kernel from bob answers as for an unknown id.
    let unknown = "00000000-0000-4000-8000-000000000000";
    for id in [alice_id.as_str(), unknown] {
        let expected =
            json!({"reason": "Not Found", "message": format!("Kernel does not exist: {id}")});
        for request in [
            Req::get(&format!("/api/kernels/{id}")),
            Req::new(Method::DELETE, &format!("/api/kernels/{id}")),
            Req::post(&format!("/api/kernels/{id}/interrupt"), ""),
            Req::post(&format!("/api/kernels/{id}/restart"), ""),
            Req::get(&format!("/api/kernels/{id}/channels")),
        ] {
            let described = format!("{} {}", request.method, request.uri);
            let (status, body) = gateway.check(as_user("bob", request)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{described}: {body}");
            assert_eq!(body, expected, "{described}");
        }
    }
    // Alice's kernel is untouched by all that, and still hers to use.
    let (status, model) = gateway
        .check(as_user(
            "alice",
            Req::get(&format!("/api/kernels/{alice_id}")),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(model["execution_state"], "idle", "{model}");
    let (status, _) = gateway
        .check(as_user(
            "alice",
            Req::post(&format!("/api/kernels/{alice_id}/interrupt"), ""),
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Sessions follow their kernel's owner, and paths are per user.
    let session = json!({"path": "work/nb.ipynb", "type": "notebook", "kernel": {"id": alice_id}});
    let (status, alice_session) = gateway
        .check(as_user(
            "alice",
            Req::post("/api/sessions", &session.to_string()),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{alice_session}");
    let session_id = alice_session["id"].as_str().unwrap_or_default().to_owned();
    let (_, list) = gateway
        .check(as_user("bob", Req::get("/api/sessions")))
        .await;
    assert_eq!(list, json!([]));
    for request in [
        Req::get(&format!("/api/sessions/{session_id}")),
        Req::new(Method::DELETE, &format!("/api/sessions/{session_id}")),
        Req::new(Method::PATCH, &format!("/api/sessions/{session_id}")).body(r#"{"name": "x"}"#),
    ] {
        let (status, body) = gateway.check(as_user("bob", request)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    // Bob cannot attach alice's kernel to a session of his own either.
    let (status, body) = gateway
        .check(as_user(
            "bob",
            Req::new(Method::PATCH, &format!("/api/sessions/{session_id}"))
                .body(&json!({"kernel": {"id": alice_id}}).to_string()),
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, list) = gateway
        .check(as_user("ops", Req::get("/api/sessions")))
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // A trusted service names users as in EG, and sees everybody's kernels.
    let (status, body) = gateway
        .check(as_user("service", Req::get("/api/kernels")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body).len(), 2);

    // The admin may shut down anybody's kernel; the owners clean up the rest.
    let (status, _) = gateway
        .check(as_user(
            "ops",
            Req::new(Method::DELETE, &format!("/api/kernels/{bob_id}")),
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = gateway
        .check(as_user(
            "alice",
            Req::new(Method::DELETE, &format!("/api/sessions/{session_id}")),
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = gateway
        .check(as_user("ops", Req::get("/api/kernels")))
        .await;
    assert_eq!(list, json!([]));
    Ok(())
}

#[tokio::test]
async fn identities_are_checked_and_kernelspecs_are_listed_per_caller() -> anyhow::Result<()> {
    let gateway = Gateway::new(|config| {
        tenants(config);
        config.authorized_users = vec!["alice,group:analysts,bob".to_owned()];
    })?;
    // An authenticator naming a user the rule refuses gets nobody in.
    let (status, body) = gateway
        .check(as_user("bad name", Req::get("/api/kernelspecs")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("not acceptable")),
        "{body}"
    );
    let (status, body) = gateway
        .check(as_user("mallory", Req::get("/api/kernelspecs")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"reason": "Unauthorized", "message": "unknown user"})
    );

    // `restricted` is for alice only; bob does not see it, whatever ?user= claims.
    let names = |body: &Value| -> Vec<String> {
        body["kernelspecs"]
            .as_object()
            .map(|specs| specs.keys().cloned().collect())
            .unwrap_or_default()
    };
    let (_, alice) = gateway
        .check(as_user("alice", Req::get("/api/kernelspecs")))
        .await;
    assert!(names(&alice).contains(&"restricted".to_owned()), "{alice}");
    let (_, bob) = gateway
        .check(as_user("bob", Req::get("/api/kernelspecs?user=alice")))
        .await;
    assert!(!names(&bob).contains(&"restricted".to_owned()), "{bob}");
    assert!(names(&bob).contains(&"echo".to_owned()), "{bob}");
    let (status, _) = gateway
        .check(as_user(
            "bob",
            Req::get("/api/kernelspecs/restricted?user=alice"),
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The service may ask on a user's behalf, as EG's clients do.
    let (_, seen) = gateway
        .check(as_user("service", Req::get("/api/kernelspecs?user=bob")))
        .await;
    assert!(!names(&seen).contains(&"restricted".to_owned()), "{seen}");
    // ops is neither listed nor an analyst: the global list refuses it every spec.
    let (_, ops) = gateway
        .check(as_user("ops", Req::get("/api/kernelspecs")))
        .await;
    assert!(names(&ops).is_empty(), "{ops}");
    Ok(())
}
