//! The REST API through the router: routes, statuses and EG's error bodies, including hostile input.
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Gateway, PNG, Req, contains};

const TOKEN: &str = "s3cret-token";

fn auth(request: Req) -> Req {
    request.header("authorization", &format!("token {TOKEN}"))
}

/// One case: a request, the expected status, and a JSON value the body must contain.
struct Case {
    request: Req,
    status: StatusCode,
    body: Value,
}

fn case(request: Req, status: u16, body: Value) -> Case {
    Case {
        request,
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
        body,
    }
}

async fn run(gateway: &Gateway, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for Case {
        request,
        status,
        body,
    } in cases
    {
        let described = format!("{} {} {:?}", request.method, request.uri, request.body);
        let (actual_status, actual_body) = gateway.check(request).await;
        if actual_status != status || !contains(&actual_body, &body) {
            failures.push(format!(
                "{described}: expected {status} {body}, got {actual_status} {actual_body}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn not_found(message: &str) -> Value {
    json!({"reason": "Not Found", "message": message})
}

fn bad_request(message: &str) -> Value {
    json!({"reason": "Bad Request", "message": message})
}

fn unauthorized() -> Value {
    json!({"reason": "Unauthorized", "message": ""})
}

#[tokio::test]
async fn token_routes_and_errors() -> anyhow::Result<()> {
    let gateway = Gateway::new(|c| c.auth = gateway_http::Authenticators::shared_token(TOKEN))?;
    let marker = gateway.dir.path().join("pwned");
    let hostile_name = format!(
        r#"{{"name": "echo; touch {0} $(touch {0}) `touch {0}`"}}"#,
        marker.display()
    );
    let hostile_env = format!(
        r#"{{"name": "echo", "env": {{"KERNEL_USERNAME": "$(touch {})"}}}}"#,
        marker.display()
    );
    let oversized_env = {
        let env: serde_json::Map<String, Value> = (0..64)
            .map(|i| (format!("K_{i:02}"), json!("v".repeat(4096))))
            .collect();
        json!({"name": "echo", "env": env}).to_string()
    };
    let forbidden = json!({"reason": "Forbidden", "message": "Forbidden"});
    let method_not_allowed = json!({"reason": "Method Not Allowed", "message": ""});
    let cases = vec![
        // Token: header with the exact `token ` scheme, or the query argument.
        case(Req::get("/api"), 401, unauthorized()),
        case(
            auth(Req::get("/api")),
            200,
            json!({"version": "2.21.1", "gateway_version": "3.3.0"}),
        ),
        case(
            Req::get(&format!("/api?token={TOKEN}")),
            200,
            json!({"gateway_version": "3.3.0"}),
        ),
        case(Req::get("/api?token=wrong"), 401, unauthorized()),
        case(Req::get("/api?token="), 401, unauthorized()),
        case(
            Req::get("/api").header("authorization", &format!("Bearer {TOKEN}")),
            401,
            unauthorized(),
        ),
        case(
            Req::get("/api").header("authorization", &format!("Token {TOKEN}")),
            401,
            unauthorized(),
        ),
        case(
            Req::get("/api").header("authorization", &format!("token {TOKEN}x")),
            401,
            unauthorized(),
        ),
        case(Req::get("/api/kernelspecs"), 401, unauthorized()),
        case(Req::post("/api/kernels", "{}"), 401, unauthorized()),
        case(Req::get("/api/kernels/1-2-3-4-5"), 401, unauthorized()),
        case(
            Req::get("/api/kernels/1-2-3-4-5/channels"),
            401,
            unauthorized(),
        ),
        case(
            Req::get("/kernelspecs/echo/logo-64x64.png"),
            401,
            unauthorized(),
        ),
        case(Req::get("/api/sessions"), 401, unauthorized()),
        // Not guarded: swagger, the catch-all, OPTIONS.
        case(
            Req::get("/api/swagger.json"),
            200,
            json!({"openapi": "3.0.3"}),
        ),
        case(Req::new(Method::OPTIONS, "/api/kernels"), 200, Value::Null),
        case(Req::get("/fake-endpoint"), 404, not_found("")),
        case(Req::get("/api/contents"), 404, not_found("")),
        case(Req::get("/tree"), 404, not_found("")),
        // Listing is off by default.
        case(auth(Req::get("/api/kernels")), 403, forbidden.clone()),
        case(auth(Req::get("/api/sessions")), 403, forbidden),
        // Kernel ids: the route shape is five word groups; anything else is the catch-all.
        case(
            auth(Req::get("/api/kernels/1-2-3-4-5")),
            404,
            not_found("Kernel does not exist: 1-2-3-4-5"),
        ),
        case(
            auth(Req::new(Method::DELETE, "/api/kernels/1-2-3-4-5")),
            404,
            not_found("Kernel does not exist: 1-2-3-4-5"),
        ),
        case(
            auth(Req::post("/api/kernels/1-2-3-4-5/interrupt", "{}")),
            404,
            not_found("Kernel does not exist: 1-2-3-4-5"),
        ),
        case(
            auth(Req::post("/api/kernels/1-2-3-4-5/restart", "{}")),
            404,
            not_found("Kernel does not exist: 1-2-3-4-5"),
        ),
        case(
            auth(Req::get("/api/kernels/1-2-3-4-5/channels")),
            404,
            not_found("Kernel does not exist: 1-2-3-4-5"),
        ),
        case(Req::get("/api/kernels/not-a-kernel"), 404, not_found("")),
        case(Req::get("/api/kernels/1-2-3-4-5-6"), 404, not_found("")),
        case(Req::get("/api/kernels/..%2F..%2Fetc"), 404, not_found("")),
        case(
            auth(Req::get("/api/kernels/%ff-2-3-4-5")),
            404,
            not_found(""),
        ),
        case(
            auth(Req::get("/kernelspecs/echo/%ff%fe.png")),
            404,
            not_found(""),
        ),
        case(
            auth(Req::get("/api/kernels/1-2-3-4-5/nothing")),
            404,
            not_found(""),
        ),
        // Trailing slashes match nothing.
        case(auth(Req::get("/api/kernels/")), 404, not_found("")),
        case(auth(Req::get("/api/")), 404, not_found("")),
        case(auth(Req::get("/api/kernelspecs/")), 404, not_found("")),
        // Known routes, unsupported methods.
        case(
            auth(Req::new(Method::PUT, "/api/kernels")),
            405,
            method_not_allowed.clone(),
        ),
        case(
            auth(Req::new(Method::DELETE, "/api/kernels")),
            405,
            method_not_allowed.clone(),
        ),
        case(
            auth(Req::get("/api/kernels/1-2-3-4-5/interrupt")),
            405,
            method_not_allowed.clone(),
        ),
        case(
            auth(Req::post("/api/kernelspecs", "")),
            405,
            method_not_allowed.clone(),
        ),
        case(
            auth(Req::new(Method::PUT, "/api/sessions/1-2-3-4-5")),
            405,
            method_not_allowed.clone(),
        ),
        case(Req::post("/api/swagger.json", ""), 405, method_not_allowed),
        // Start requests: bodies and names are data, never interpreted.
        case(
            auth(Req::post("/api/kernels", "{not json")),
            400,
            bad_request("Invalid JSON in body of request"),
        ),
        case(
            auth(Req::post("/api/kernels", "{\"name\": \"echo\"")),
            400,
            bad_request("Invalid JSON in body of request"),
        ),
        case(
            auth(Req::post("/api/kernels", r#"{"env": ["A"]}"#)),
            400,
            json!({"reason": "Bad Request"}),
        ),
        case(
            auth(Req::post("/api/kernels", r#"{"env": "A=1"}"#)),
            400,
            json!({"reason": "Bad Request"}),
        ),
        case(
            auth(Req::post("/api/kernels", r#"{"name": 7}"#)),
            400,
            json!({"reason": "Bad Request"}),
        ),
        case(
            auth(Req::post("/api/kernels", "[]")),
            400,
            json!({"reason": "Bad Request"}),
        ),
        case(
            auth(Req::post("/api/kernels", &hostile_env)),
            400,
            json!({"reason": "Bad Request"}),
        ),
        // Env names that cannot reach exec, and an env too large for it: 400 before anything starts.
        case(
            auth(Req::post(
                "/api/kernels",
                r#"{"name": "echo", "env": {"KERNEL_A\u0000B": "x"}}"#,
            )),
            400,
            bad_request(
                "Environment variable name 'KERNEL_A\\0B' contains NUL or control characters",
            ),
        ),
        case(
            auth(Req::post(
                "/api/kernels",
                r#"{"name": "echo", "env": {"KERNEL_A=B": "x"}}"#,
            )),
            400,
            bad_request("Environment variable name 'KERNEL_A=B' contains '='"),
        ),
        case(
            auth(Req::post("/api/kernels", &oversized_env)),
            400,
            bad_request(&format!(
                "The env object holds {} bytes; at most 262144 are accepted",
                64 * (4 + 4096)
            )),
        ),
        case(
            auth(Req::post("/api/kernels", r#"{"name": "nope"}"#)),
            404,
            not_found("No such kernel named nope"),
        ),
        case(
            auth(Req::post("/api/kernels", &hostile_name)),
            404,
            json!({"reason": "Not Found"}),
        ),
        // Kernelspecs.
        case(
            auth(Req::get("/api/kernelspecs/nope")),
            404,
            not_found("Kernel spec nope not found"),
        ),
        case(
            auth(Req::get("/api/kernelspecs/%24%28id%29")),
            404,
            not_found("Kernel spec $(id) not found"),
        ),
        case(
            auth(Req::get("/api/kernelspecs/restricted?user=bob")),
            403,
            json!({"reason": "Forbidden", "message": "User bob is not authorized to use kernel spec restricted"}),
        ),
        case(
            auth(Req::get("/api/kernelspecs/restricted?user=alice")),
            200,
            json!({"name": "restricted"}),
        ),
        case(
            auth(Req::get("/api/kernelspecs/ECHO")),
            200,
            json!({"name": "echo"}),
        ),
        // Resource files: no traversal, plain or percent-encoded.
        case(
            auth(Req::get("/kernelspecs/echo/../secret.txt")),
            403,
            json!({"reason": "Forbidden"}),
        ),
        case(
            auth(Req::get("/kernelspecs/echo/%2e%2e/secret.txt")),
            403,
            json!({"reason": "Forbidden"}),
        ),
        case(
            auth(Req::get("/kernelspecs/echo/%2E%2E%2Fsecret.txt")),
            403,
            json!({"reason": "Forbidden"}),
        ),
        case(
            auth(Req::get("/kernelspecs/echo/sub/../../secret.txt")),
            403,
            json!({"reason": "Forbidden"}),
        ),
        case(
            auth(Req::get("/kernelspecs/echo/%2fetc%2fpasswd")),
            403,
            json!({"reason": "Forbidden"}),
        ),
        case(
            auth(Req::get("/kernelspecs/echo/missing.png")),
            404,
            json!({"reason": "Not Found"}),
        ),
        case(
            auth(Req::get("/kernelspecs/nope/logo-64x64.png")),
            404,
            not_found("Kernel spec nope not found"),
        ),
        // Sessions.
        case(
            auth(Req::get("/api/sessions/1-2-3-4-5")),
            404,
            not_found("Session not found: 1-2-3-4-5"),
        ),
        case(
            auth(Req::new(Method::DELETE, "/api/sessions/1-2-3-4-5")),
            404,
            not_found("Session not found: 1-2-3-4-5"),
        ),
        case(
            auth(Req::new(Method::PATCH, "/api/sessions/1-2-3-4-5").body("{}")),
            404,
            not_found("Session not found: 1-2-3-4-5"),
        ),
        case(
            auth(Req::new(Method::PATCH, "/api/sessions/1-2-3-4-5")),
            400,
            bad_request("No JSON data provided"),
        ),
        case(auth(Req::get("/api/sessions/abc")), 404, not_found("")),
        case(
            auth(Req::post("/api/sessions", "")),
            400,
            bad_request("No JSON data provided"),
        ),
        case(
            auth(Req::post("/api/sessions", "{]")),
            400,
            bad_request("Invalid JSON in body of request"),
        ),
        case(
            auth(Req::post("/api/sessions", r#"{"type": "notebook"}"#)),
            400,
            bad_request("Missing field in JSON data: path"),
        ),
        case(
            auth(Req::post("/api/sessions", r#"{"path": "a.ipynb"}"#)),
            400,
            bad_request("Missing field in JSON data: type"),
        ),
        case(
            auth(Req::post(
                "/api/sessions",
                r#"{"notebook": {"path": "a.ipynb"}, "kernel": {"name": "nope"}}"#,
            )),
            404,
            not_found("No such kernel named nope"),
        ),
    ];
    run(&gateway, cases).await;
    assert!(
        !marker.exists(),
        "a kernel name or env value was interpreted by a shell"
    );
    Ok(())
}

#[tokio::test]
async fn kernelspecs_model() -> anyhow::Result<()> {
    // The default is advertised only when it is there (EG names it even when it is not).
    let gateway = Gateway::new(|_| {})?;
    let (status, body) = gateway.check(Req::get("/api/kernelspecs")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["default"], "",
        "python3 is not among this gateway's kernelspecs"
    );
    let gateway = Gateway::new(|c| c.default_kernel_name = "echo".to_owned())?;
    let (status, body) = gateway.check(Req::get("/api/kernelspecs")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["default"], "echo");
    let echo = &body["kernelspecs"]["echo"];
    assert_eq!(echo["name"], "echo");
    let spec = echo["spec"]
        .as_object()
        .map(|s| s.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(
        spec,
        [
            "argv",
            "display_name",
            "env",
            "interrupt_mode",
            "language",
            "metadata"
        ]
    );
    assert_eq!(
        echo["spec"]["argv"],
        json!(["python", "-c", "pass", "{connection_file}"])
    );
    assert_eq!(echo["spec"]["env"], json!({"ECHO_VAR": "1"}));
    assert_eq!(echo["spec"]["interrupt_mode"], "message");
    assert_eq!(echo["spec"]["display_name"], "Echo");
    assert_eq!(
        echo["resources"],
        json!({"logo-64x64": "/kernelspecs/echo/logo-64x64.png", "kernel.js": "/kernelspecs/echo/kernel.js"})
    );
    assert_eq!(
        body["kernelspecs"]["restricted"]["spec"]["interrupt_mode"],
        "signal"
    );

    // `?user=` drops the specs the user may not use.
    let (_, for_bob) = gateway.check(Req::get("/api/kernelspecs?user=bob")).await;
    assert!(for_bob["kernelspecs"].get("restricted").is_none());
    assert!(for_bob["kernelspecs"].get("echo").is_some());
    let (_, for_alice) = gateway.check(Req::get("/api/kernelspecs?user=alice")).await;
    assert!(for_alice["kernelspecs"].get("restricted").is_some());

    let (status, one) = gateway.check(Req::get("/api/kernelspecs/echo")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, *echo);

    // Resource files with a content type by extension; HEAD keeps the headers.
    let logo = gateway
        .send(Req::get("/kernelspecs/echo/logo-64x64.png"))
        .await;
    assert_eq!(logo.status, StatusCode::OK);
    assert_eq!(logo.header("content-type"), Some("image/png"));
    assert_eq!(logo.body, PNG);
    let js = gateway.send(Req::get("/kernelspecs/echo/kernel.js")).await;
    assert_eq!(js.header("content-type"), Some("application/javascript"));
    let head = gateway
        .send(Req::new(Method::HEAD, "/kernelspecs/echo/logo-64x64.png"))
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(PNG.len().to_string().as_str())
    );
    Ok(())
}

#[tokio::test]
async fn allow_list_hides_other_specs() -> anyhow::Result<()> {
    let gateway = Gateway::new(|c| c.allowed_kernelspecs = vec!["echo".to_owned()])?;
    let (_, body) = gateway.check(Req::get("/api/kernelspecs")).await;
    let names: Vec<&String> = body["kernelspecs"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(names, ["echo"]);
    let (status, _) = gateway.check(Req::get("/api/kernelspecs/restricted")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

// Issue 9: a kernelspec whose provisioner this gateway cannot run is listed as unavailable,
// with a message naming the provisioner, and the others keep working.
#[tokio::test]
async fn unsupported_provisioners_are_listed_as_unavailable() -> anyhow::Result<()> {
    let extra = tempfile::tempdir()?;
    let kernels = extra.path().join("kernels");
    let spec = kernels.join("k8s_python");
    std::fs::create_dir_all(&spec)?;
    std::fs::write(
        spec.join("kernel.json"),
        r#"{"argv": ["python", "launch.py", "{kernel_id}"], "display_name": "K8s", "language": "python",
            "metadata": {"kernel_provisioner": {"provisioner_name": "kubernetes-provisioner", "config": {}}}}"#,
    )?;
    let gateway = Gateway::new(|c| c.kernelspec_dirs.push(kernels.clone()))?;
    let (status, body) = gateway.check(Req::get("/api/kernelspecs")).await;
    assert_eq!(status, StatusCode::OK);
    let unavailable = body["kernelspecs"]["k8s_python"]["unavailable"]
        .as_str()
        .unwrap_or_default();
    assert!(unavailable.contains("kubernetes-provisioner"), "{body}");
    assert!(
        body["kernelspecs"]["echo"]["unavailable"].is_null(),
        "{body}"
    );
    let (status, body) = gateway
        .check(Req::post("/api/kernels", r#"{"name": "k8s_python"}"#))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("kubernetes-provisioner"),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn cors_and_content_headers() -> anyhow::Result<()> {
    let gateway = Gateway::new(|c| {
        c.auth = gateway_http::Authenticators::shared_token(TOKEN);
        c.cors = gateway_http::config::Cors {
            allow_origin: Some("https://notebooks.example".to_owned()),
            allow_credentials: Some("true".to_owned()),
            allow_headers: Some("Authorization,Content-Type".to_owned()),
            allow_methods: Some("GET,POST,DELETE".to_owned()),
            expose_headers: Some("Location".to_owned()),
            max_age: Some("600".to_owned()),
        };
    })?;
    let expected = [
        ("access-control-allow-origin", "https://notebooks.example"),
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-headers", "Authorization,Content-Type"),
        ("access-control-allow-methods", "GET,POST,DELETE"),
        ("access-control-expose-headers", "Location"),
        ("access-control-max-age", "600"),
    ];
    // On a 401, on a success, and on a preflight (which needs no token and has no body).
    for request in [
        Req::get("/api/kernels"),
        auth(Req::get("/api/kernelspecs")),
        Req::new(Method::OPTIONS, "/api/kernels/1-2-3-4-5"),
    ] {
        let reply = gateway.send(request.clone()).await;
        for (name, value) in expected {
            assert_eq!(
                reply.header(name),
                Some(value),
                "{name} on {} {}",
                request.method,
                request.uri
            );
        }
        assert!(reply.header("content-security-policy").is_none());
    }
    let unauthorized = gateway.send(Req::get("/api")).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        unauthorized.header("content-type"),
        Some("application/json")
    );
    assert_eq!(
        unauthorized.header("x-content-type-options"),
        Some("nosniff")
    );
    let preflight = gateway.send(Req::new(Method::OPTIONS, "/api")).await;
    assert_eq!(
        (preflight.status, preflight.body.len()),
        (StatusCode::OK, 0)
    );
    // The catch-all has no CORS headers.
    let unknown = gateway.send(Req::get("/nowhere")).await;
    assert!(unknown.header("access-control-allow-origin").is_none());
    Ok(())
}

#[tokio::test]
async fn origin_check() -> anyhow::Result<()> {
    let strict = Gateway::new(|_| {})?;
    let with = |origin: &str| {
        Req::get("/api/kernelspecs")
            .header("host", "localhost:8888")
            .header("origin", origin)
    };
    let cases = vec![
        case(with("fake.com:8888"), 404, not_found("")),
        case(with("http://fake.com:8888"), 404, not_found("")),
        case(
            with("http://localhost:8888"),
            200,
            json!({"kernelspecs": {"echo": {"name": "echo"}}}),
        ),
        case(
            with("HTTP://LOCALHOST:8888"),
            200,
            json!({"kernelspecs": {"echo": {"name": "echo"}}}),
        ),
        case(
            Req::get("/api/kernelspecs").header("origin", "http://fake.com"),
            200,
            json!({"kernelspecs": {"echo": {"name": "echo"}}}),
        ),
        // Preflights are not origin-checked.
        case(
            Req::new(Method::OPTIONS, "/api/kernelspecs")
                .header("host", "localhost")
                .header("origin", "http://x"),
            200,
            Value::Null,
        ),
        // The WebSocket route answers 404 for the unknown kernel before looking at the origin.
        case(
            Req::get("/api/kernels/1-2-3-4-5/channels")
                .header("host", "localhost:8888")
                .header("origin", "http://fake.com"),
            404,
            not_found("Kernel does not exist: 1-2-3-4-5"),
        ),
    ];
    run(&strict, cases).await;

    let star = Gateway::new(|c| c.cors.allow_origin = Some("*".to_owned()))?;
    run(
        &star,
        vec![case(
            with("fake.com:8888"),
            200,
            json!({"kernelspecs": {"echo": {"name": "echo"}}}),
        )],
    )
    .await;
    let exact = Gateway::new(|c| c.cors.allow_origin = Some("http://fake.com:8888".to_owned()))?;
    run(
        &exact,
        vec![
            case(with("http://fake.com:8888"), 200, json!({})),
            case(with("http://other.com"), 404, json!({})),
        ],
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn base_url_prefixes_every_route() -> anyhow::Result<()> {
    for base in ["/fake/path", "fake/path", "/fake/path/"] {
        let gateway = Gateway::new(|c| {
            c.base_url = base.to_owned();
            c.list_kernels = true;
        })?;
        let cases = vec![
            case(Req::get("/api/kernels"), 404, not_found("")),
            case(Req::get("/api"), 404, not_found("")),
            case(Req::get("/fake/path/api/kernels"), 200, json!([])),
            case(Req::get("/fake/path/api/sessions"), 200, json!([])),
            case(
                Req::get("/fake/path/api"),
                200,
                json!({"gateway_version": "3.3.0"}),
            ),
            case(
                Req::get("/fake/path/api/swagger.json"),
                200,
                // Paths begin with `/`, so the server URL has no trailing slash.
                json!({"servers": [{"url": "/fake/path"}]}),
            ),
            case(
                Req::get("/fake/path/api/kernels/1-2-3-4-5"),
                404,
                not_found("Kernel does not exist: 1-2-3-4-5"),
            ),
            case(
                Req::get("/fake/path/api/kernelspecs/echo"),
                200,
                json!({"resources": {"logo-64x64": "/fake/path/kernelspecs/echo/logo-64x64.png"}}),
            ),
        ];
        run(&gateway, cases).await;
        let logo = gateway
            .send(Req::get("/fake/path/kernelspecs/echo/logo-64x64.png"))
            .await;
        assert_eq!(logo.status, StatusCode::OK, "base {base}");
    }
    Ok(())
}

#[tokio::test]
async fn swagger_documents() -> anyhow::Result<()> {
    let gateway = Gateway::new(|c| c.auth = gateway_http::Authenticators::shared_token(TOKEN))?;
    let (status, doc) = gateway.check(Req::get("/api/swagger.json")).await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"]
        .as_object()
        .map(|p| p.len())
        .unwrap_or_default();
    assert!(paths >= 10, "{paths} paths documented");
    let yaml = gateway.send(Req::get("/api/swagger.yaml")).await;
    assert_eq!(yaml.status, StatusCode::OK);
    let text = String::from_utf8(yaml.body)?;
    assert!(text.contains("\"openapi\": \"3.0.3\"\n"), "{text}");
    assert!(text.contains("\"/api/kernels/{kernel_id}\":\n"));
    Ok(())
}

#[tokio::test]
async fn responses_have_eg_framing() -> anyhow::Result<()> {
    let gateway = Gateway::new(|c| c.list_kernels = true)?;
    let list = gateway.send(Req::get("/api/kernels")).await;
    assert_eq!(list.header("content-type"), Some("application/json"));
    assert_eq!(list.header("x-content-type-options"), Some("nosniff"));
    // A start body needs no Content-Type, and an empty body means "the default kernel".
    let default_start = gateway.send(Req::post("/api/kernels", "")).await;
    // No backend is registered in this gateway, so the default python3 spec (absent here) is unknown.
    assert_eq!(default_start.status, StatusCode::NOT_FOUND);
    assert_eq!(
        default_start.json(),
        not_found("No such kernel named python3")
    );
    // A body above the API limit is refused with 413.
    let huge = format!(
        "{{\"name\": \"{}\"}}",
        "x".repeat(gateway_http::api::MAX_BODY_BYTES + 1)
    );
    let (status, body) = gateway.check(Req::post("/api/kernels", &huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["reason"], "Payload Too Large");
    Ok(())
}

// === Kernels that really start (ipykernel from the repository's virtualenv) ===

/// Checks EG's kernel model shape (plus the `owner` this gateway adds) and returns its id.
fn assert_kernel_model(model: &Value) -> String {
    let mut keys: Vec<&String> = model
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    keys.sort();
    assert_eq!(
        keys,
        [
            "connections",
            "execution_state",
            "id",
            "last_activity",
            "name",
            "owner"
        ],
        "{model}"
    );
    let last_activity = model["last_activity"].as_str().unwrap_or_default();
    // Jupyter Server parses `%Y-%m-%dT%H:%M:%S.%fZ` strictly.
    let shape_ok = last_activity.len() == 27
        && last_activity.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == '.',
            26 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape_ok, "last_activity {last_activity:?}");
    assert!(model["connections"].is_u64());
    model["id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_lifecycle() -> anyhow::Result<()> {
    let gateway = Gateway::with_ipykernel(|_| {})?;
    let kernel_id = uuid::Uuid::new_v4().to_string();
    let body =
        json!({"name": "python3", "env": {"KERNEL_USERNAME": "alice", "KERNEL_ID": kernel_id}})
            .to_string();
    let started = gateway.send(Req::post("/api/kernels", &body)).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.json());
    let location = format!("/api/kernels/{kernel_id}");
    assert_eq!(started.header("location"), Some(location.as_str()));
    let model = started.json();
    assert_eq!(
        assert_kernel_model(&model),
        kernel_id,
        "the client-chosen KERNEL_ID is honoured"
    );
    assert_eq!(model["name"], "python3");
    assert_eq!(model["connections"], 0);

    let (status, listed) = gateway.check(Req::get("/api/kernels")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|k| k["id"] == kernel_id.as_str())),
        "{listed}"
    );

    let cases = vec![
        case(
            Req::get(&location),
            200,
            json!({"id": kernel_id, "name": "python3"}),
        ),
        case(
            Req::post("/api/kernels", &body),
            409,
            json!({"message": format!("Kernel already exists: {kernel_id}")}),
        ),
        case(
            Req::post("/api/kernels", r#"{"env": {"KERNEL_ID": "not-a-uuid"}}"#),
            400,
            json!({"reason": "Bad Request"}),
        ),
        case(
            Req::post(&format!("{location}/interrupt"), "{}"),
            204,
            Value::Null,
        ),
        // The WebSocket route refuses a foreign origin with 403 (not the REST routes' 404).
        case(
            Req::get(&format!("{location}/channels"))
                .header("host", "localhost:8888")
                .header("origin", "http://evil.example"),
            403,
            json!({"reason": "Forbidden", "message": "Cross origin websockets not allowed"}),
        ),
        // A plain GET on the channels route (no upgrade headers) is refused after the checks.
        case(
            Req::get(&format!("{location}/channels")),
            400,
            bad_request("Can \"Upgrade\" only to \"WebSocket\"."),
        ),
    ];
    run(&gateway, cases).await;

    let interrupted = gateway
        .send(Req::post(&format!("{location}/interrupt"), ""))
        .await;
    assert_eq!(interrupted.status, StatusCode::NO_CONTENT);
    assert!(interrupted.body.is_empty() && interrupted.header("content-type").is_none());

    // Jupyter Server posts `{}` with a form content type to restart.
    let restarted = gateway
        .send(
            Req::post(&format!("{location}/restart"), "{}")
                .header("content-type", "application/x-www-form-urlencoded"),
        )
        .await;
    assert_eq!(restarted.status, StatusCode::OK, "{}", restarted.json());
    assert_eq!(assert_kernel_model(&restarted.json()), kernel_id);
    assert!(restarted.header("location").is_none());

    let deleted = gateway.send(Req::new(Method::DELETE, &location)).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.body.is_empty() && deleted.header("content-type").is_none());
    let gone = not_found(&format!("Kernel does not exist: {kernel_id}"));
    run(
        &gateway,
        vec![
            case(Req::get(&location), 404, gone.clone()),
            case(Req::new(Method::DELETE, &location), 404, gone.clone()),
            case(Req::post(&format!("{location}/restart"), ""), 404, gone),
            case(Req::get("/api/kernels"), 200, json!([])),
        ],
    )
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_lifecycle() -> anyhow::Result<()> {
    let gateway = Gateway::with_ipykernel(|_| {})?;
    let (status, kernel) = gateway
        .check(Req::post("/api/kernels", r#"{"name": "python3"}"#))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{kernel}");
    let kernel_one = assert_kernel_model(&kernel);

    // EG's own unit-test body: the old form, an ignored `id`, the `python` alias.
    let created = gateway
        .send(Req::post(
            "/api/sessions",
            r#"{"id": "any", "notebook": {"path": "work/a.ipynb"}, "kernel": {"name": "python"}}"#,
        ))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json());
    let session = created.json();
    let session_a = session["id"].as_str().unwrap_or_default().to_owned();
    assert_ne!(session_a, "any");
    assert_eq!(
        created.header("location"),
        Some(format!("/api/sessions/{session_a}").as_str())
    );
    assert!(contains(
        &session,
        &json!({"path": "work/a.ipynb", "type": "notebook", "name": null, "notebook": {"path": "work/a.ipynb"}})
    ));
    let kernel_two = assert_kernel_model(&session["kernel"]);
    assert_ne!(kernel_two, kernel_one);

    // The same path again: the existing session, 201.
    let (status, again) = gateway
        .check(Req::post(
            "/api/sessions",
            r#"{"path": "work/a.ipynb", "type": "notebook", "kernel": {"name": "python3"}}"#,
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (again["id"].as_str(), again["kernel"]["id"].as_str()),
        (Some(session_a.as_str()), Some(kernel_two.as_str()))
    );

    // A session on an existing kernel attaches to it.
    let body =
        json!({"path": "b.ipynb", "type": "console", "name": "b", "kernel": {"id": kernel_one}})
            .to_string();
    let (status, session_b) = gateway.check(Req::post("/api/sessions", &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{session_b}");
    assert_eq!(session_b["kernel"]["id"], kernel_one.as_str());
    let session_b = session_b["id"].as_str().unwrap_or_default().to_owned();

    let (status, listed) = gateway.check(Req::get("/api/sessions")).await;
    assert_eq!(
        (status, listed.as_array().map(Vec::len)),
        (StatusCode::OK, Some(2))
    );

    let a = format!("/api/sessions/{session_a}");
    run(
        &gateway,
        vec![
            case(Req::get(&a), 200, json!({"id": session_a, "kernel": {"id": kernel_two}})),
            case(
                Req::new(Method::PATCH, &a).body(r#"{"path": "work/renamed.ipynb", "name": "renamed"}"#),
                200,
                json!({"path": "work/renamed.ipynb", "name": "renamed", "notebook": {"path": "work/renamed.ipynb"}}),
            ),
            case(Req::new(Method::PATCH, &a).body(r#"{"kernel": {"id": "1-2-3-4-5"}}"#), 400, bad_request("No such kernel: 1-2-3-4-5")),
            case(Req::new(Method::DELETE, &a), 204, Value::Null),
            case(Req::get(&a), 404, not_found(&format!("Session not found: {session_a}"))),
            // Deleting the session shut its kernel down.
            case(Req::get(&format!("/api/kernels/{kernel_two}")), 404, json!({"reason": "Not Found"})),
            // A session whose kernel goes away is dropped.
            case(Req::new(Method::DELETE, &format!("/api/kernels/{kernel_one}")), 204, Value::Null),
            case(Req::get(&format!("/api/sessions/{session_b}")), 404, json!({"reason": "Not Found"})),
            case(Req::get("/api/sessions"), 200, json!([])),
        ],
    )
    .await;
    Ok(())
}

// === The serve loop over real sockets: plain HTTP, TLS, mutual TLS, graceful shutdown ===

mod served {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::Context as _;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio::net::TcpStream;

    use crate::support::{self, Served};

    /// One GET on an open connection; status code and body.
    async fn request<S: AsyncRead + AsyncWrite + Unpin>(
        stream: &mut S,
        path: &str,
    ) -> anyhow::Result<(u16, String)> {
        exchange(stream, "GET", path, "", "").await
    }

    /// One HTTP/1.1 request on an open connection; status code and body.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        stream: &mut S,
        method: &str,
        path: &str,
        headers: &str,
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let reply = test_support::http::exchange(stream, method, path, headers, body).await?;
        Ok((reply.status, reply.body))
    }

    #[tokio::test]
    async fn plain_http_keep_alive_and_graceful_shutdown() -> anyhow::Result<()> {
        let served = Served::start(|_| {}).await?;
        let mut stream = TcpStream::connect(served.addr).await?;
        // Many requests on one keep-alive connection (latency is measured by `cargo xtask bench`).
        for _ in 0..50 {
            let (status, body) = request(&mut stream, "/api").await?;
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("\"gateway_version\":\"3.3.0\""), "{body}");
        }
        let (status, _) = request(&mut stream, "/api/kernels/1-2-3-4-5").await?;
        assert_eq!(status, 404);
        drop(stream);
        let addr = served.addr;
        served.shutdown().await?;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "still accepting after shutdown"
        );
        Ok(())
    }

    /// A CA, a server certificate for localhost and client certificates for alice (the
    /// default client) and bob, as PEM files.
    struct Pki {
        dir: tempfile::TempDir,
        ca: CertificateDer<'static>,
        client_chain: Vec<CertificateDer<'static>>,
        client_key: PrivatePkcs8KeyDer<'static>,
        bob_chain: Vec<CertificateDer<'static>>,
        bob_key: PrivatePkcs8KeyDer<'static>,
    }

    fn pki() -> anyhow::Result<Pki> {
        let dir = tempfile::tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gateway test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server_params = CertificateParams::new(vec!["localhost".to_owned()])?;
        server_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let client = |cn: &str| -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec![format!("{cn}.clients.example")])?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            Ok((params.signed_by(&key, &issuer)?, key))
        };
        let (client_cert, client_key) = client("alice")?;
        let (bob_cert, bob_key) = client("bob")?;

        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem())?;
        std::fs::write(dir.path().join("server.pem"), server_cert.pem())?;
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem())?;
        Ok(Pki {
            dir,
            ca: ca_cert.der().clone(),
            client_chain: vec![client_cert.der().clone()],
            client_key: PrivatePkcs8KeyDer::from(client_key.serialize_der()),
            bob_chain: vec![bob_cert.der().clone()],
            bob_key: PrivatePkcs8KeyDer::from(bob_key.serialize_der()),
        })
    }

    async fn tls_get(
        addr: SocketAddr,
        pki: &Pki,
        with_client_cert: bool,
    ) -> anyhow::Result<(u16, String)> {
        let client = with_client_cert.then_some((&pki.client_chain, &pki.client_key));
        tls_exchange(addr, pki, client, "/api", "").await
    }

    /// One GET over TLS, presenting `client`'s certificate if given, with extra headers.
    async fn tls_exchange(
        addr: SocketAddr,
        pki: &Pki,
        client: Option<(&Vec<CertificateDer<'static>>, &PrivatePkcs8KeyDer<'static>)>,
        path: &str,
        headers: &str,
    ) -> anyhow::Result<(u16, String)> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone())?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match client {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), PrivateKeyDer::Pkcs8(key.clone_key()))?,
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        exchange(&mut tls, "GET", path, headers, "").await
    }

    /// mTLS as an authenticator: each client certificate is its own user; beside a token the
    /// certificate is optional, and a connection without one needs the token.
    #[tokio::test]
    async fn client_certificates_name_users() -> anyhow::Result<()> {
        use gateway_http::auth::mtls::{ClientCertificate, UserField};
        use gateway_http::auth::{Authenticator, Roles, SharedToken};

        let pki = pki()?;
        let cert = pki.dir.path().join("server.pem");
        let key = pki.dir.path().join("server.key");
        let ca = pki.dir.path().join("ca.pem");
        let tls = gateway_http::tls::server_config(&cert, &key, Some(&ca), true)?;
        let chain: Vec<Arc<dyn Authenticator>> = vec![
            Arc::new(ClientCertificate::new(UserField::CommonName)),
            Arc::new(SharedToken::new("svc-token", "jupyter-server", Roles::ALL)),
        ];
        let served = Served::start(|c| {
            c.tls = Some(tls);
            c.auth = gateway_http::Authenticators::new(chain);
        })
        .await?;
        let user_of = |body: &str| -> String {
            serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["identity"]["username"].as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        for (client, want) in [
            (Some((&pki.client_chain, &pki.client_key)), "alice"),
            (Some((&pki.bob_chain, &pki.bob_key)), "bob"),
        ] {
            let (status, body) = tls_exchange(served.addr, &pki, client, "/api/me", "").await?;
            assert_eq!(status, 200, "{body}");
            assert_eq!(user_of(&body), want, "{body}");
            assert!(body.contains(r#""authenticator":"mtls""#), "{body}");
        }
        let (status, body) = tls_exchange(
            served.addr,
            &pki,
            None,
            "/api/me",
            "Authorization: token svc-token\r\n",
        )
        .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(user_of(&body), "jupyter-server");
        let (status, body) = tls_exchange(served.addr, &pki, None, "/api/me", "").await?;
        assert_eq!(status, 401, "{body}");
        served.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn https_and_mutual_tls() -> anyhow::Result<()> {
        let pki = pki()?;
        let cert = pki.dir.path().join("server.pem");
        let key = pki.dir.path().join("server.key");
        let ca = pki.dir.path().join("ca.pem");

        let tls = gateway_http::tls::server_config(&cert, &key, None, false)?;
        let served = Served::start(|c| c.tls = Some(tls)).await?;
        let (status, body) = tls_get(served.addr, &pki, false).await?;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("gateway_version"));
        // Plain HTTP on the TLS port gets no HTTP answer.
        let mut plain = TcpStream::connect(served.addr).await?;
        assert!(request(&mut plain, "/api").await.is_err());
        served.shutdown().await?;

        let mtls = gateway_http::tls::server_config(&cert, &key, Some(&ca), false)?;
        let served = Served::start(|c| c.tls = Some(mtls)).await?;
        let (status, _) = tls_get(served.addr, &pki, true).await?;
        assert_eq!(status, 200);
        let refused = tls_get(served.addr, &pki, false).await;
        assert!(
            refused.is_err(),
            "a client without a certificate was served: {refused:?}"
        );
        served.shutdown().await?;
        Ok(())
    }

    #[test]
    fn tls_settings_errors() -> anyhow::Result<()> {
        let pki = pki()?;
        let dir = pki.dir.path();
        let missing = gateway_http::tls::server_config(
            &dir.join("nope.pem"),
            &dir.join("server.key"),
            None,
            false,
        );
        assert!(
            matches!(missing, Err(gateway_http::tls::TlsError::Pem { .. })),
            "{missing:?}"
        );
        std::fs::write(dir.join("empty.pem"), "")?;
        let empty = gateway_http::tls::server_config(
            &dir.join("empty.pem"),
            &dir.join("server.key"),
            None,
            false,
        );
        assert!(
            matches!(empty, Err(gateway_http::tls::TlsError::NoCertificates(_))),
            "{empty:?}"
        );
        // The CA's certificate does not match the server's key.
        let mismatched = gateway_http::tls::server_config(
            &dir.join("ca.pem"),
            &dir.join("server.key"),
            None,
            false,
        );
        assert!(mismatched.is_err());
        Ok(())
    }

    /// A legacy-JSON request on `channel` (what Jupyter Server's gateway client sends).
    fn legacy_message(
        msg_type: &str,
        channel: &str,
        content: serde_json::Value,
    ) -> (String, String) {
        let msg_id = uuid::Uuid::new_v4().to_string();
        let message = serde_json::json!({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "username": "", "session": "", "version": "5.3",
                       "date": "2024-01-01T00:00:00.000000Z"},
            "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": [],
        });
        (msg_id, message.to_string())
    }

    type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    /// Reads until the shell reply to `msg_id` arrives.
    async fn reply_to(ws: &mut Ws, msg_id: &str) -> anyhow::Result<serde_json::Value> {
        use futures_util::StreamExt as _;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await?
                .context("socket closed")??;
            let tokio_tungstenite::tungstenite::Message::Text(text) = frame else {
                continue;
            };
            let message: serde_json::Value = serde_json::from_str(text.as_str())?;
            if message["channel"] == "shell" && message["parent_header"]["msg_id"] == msg_id {
                return Ok(message);
            }
        }
    }

    /// The whole path a client takes: token on every request, start over HTTP, the channels
    /// WebSocket through `serve` (upgrade on a real connection), execute, shut down.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn websocket_channels_through_serve() -> anyhow::Result<()> {
        use futures_util::SinkExt as _;
        use tokio_tungstenite::tungstenite::{Error as WsError, Message};

        let token = "ws-token";
        let (manager, dir) = support::ipykernel_manager(|c| {
            c.auth = gateway_http::Authenticators::shared_token(token)
        })?;
        let served = Served::with_manager(manager, Some(dir)).await?;
        let mut http = TcpStream::connect(served.addr).await?;
        let auth = format!("Authorization: token {token}\r\n");
        let (status, body) = exchange(
            &mut http,
            "POST",
            "/api/kernels",
            &auth,
            r#"{"name": "python3"}"#,
        )
        .await?;
        assert_eq!(status, 201, "{body}");
        let kernel_id = serde_json::from_str::<serde_json::Value>(&body)?["id"]
            .as_str()
            .context("no id")?
            .to_owned();
        let channels = format!("ws://{}/api/kernels/{kernel_id}/channels", served.addr);

        match tokio_tungstenite::connect_async(format!("{channels}?session_id=s1")).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
            other => anyhow::bail!("upgrade without a token: {other:?}"),
        }
        let (mut ws, response) =
            tokio_tungstenite::connect_async(format!("{channels}?session_id=s1&token={token}"))
                .await?;
        assert_eq!(response.status(), 101);
        assert!(
            response.headers().get("sec-websocket-protocol").is_none(),
            "legacy mode selects no subprotocol"
        );

        let (info_id, info) = legacy_message("kernel_info_request", "shell", serde_json::json!({}));
        ws.send(Message::text(info)).await?;
        let reply = reply_to(&mut ws, &info_id).await?;
        assert_eq!(reply["header"]["msg_type"], "kernel_info_reply");
        assert_eq!(reply["content"]["status"], "ok");

        let (status, body) = exchange(
            &mut http,
            "GET",
            &format!("/api/kernels/{kernel_id}"),
            &auth,
            "",
        )
        .await?;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body)?["connections"],
            1
        );

        // Repeated execute round trips on one socket (latency is measured by `cargo xtask bench`).
        for i in 0..20 {
            let content = serde_json::json!({"code": format!("{i} + 1"), "silent": false, "store_history": false,
                                             "user_expressions": {}, "allow_stdin": false});
            let (msg_id, execute) = legacy_message("execute_request", "shell", content);
            ws.send(Message::text(execute)).await?;
            let reply = reply_to(&mut ws, &msg_id).await?;
            assert_eq!(reply["content"]["status"], "ok", "{reply}");
        }

        ws.close(None).await?;
        let (status, _) = exchange(
            &mut http,
            "DELETE",
            &format!("/api/kernels/{kernel_id}"),
            &auth,
            "",
        )
        .await?;
        assert_eq!(status, 204);
        drop(http);
        served.shutdown().await
    }
}
