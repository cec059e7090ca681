//! The response listener against payloads built the way EG 3.3's launchers build them
//! (PyCryptodome), and against everything it must refuse.
use std::time::Duration;

use kernel_launcher::payload::{KeyPair, encrypt_v1};
use kernel_launcher::{LauncherResponse, PendingLaunch, ResponseListener};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{SECOND, kernel_id, listener, python};

/// EG 3.3's `launch_ipykernel.py` payload code (version 1), and its 1.x predecessor (version 0,
/// AES key = the kernel id's first 16 characters, `%` filler), sending like the launcher does.
const EG_LAUNCHER_SNIPPET: &str = r#"
import base64, json, socket, sys
from Cryptodome.Cipher import AES, PKCS1_v1_5
from Cryptodome.PublicKey import RSA
from Cryptodome.Random import get_random_bytes
from Cryptodome.Util.Padding import pad

version, address, public_key, kernel_id, info = sys.argv[1:6]
conn = json.loads(info)
if version == "1":
    conn["kernel_id"] = kernel_id
    aes_key = get_random_bytes(16)
    cipher = AES.new(aes_key, mode=AES.MODE_ECB)
    b64_connection_info = base64.b64encode(cipher.encrypt(pad(json.dumps(conn).encode("utf-8"), 16)))
    imported = RSA.importKey(base64.b64decode(public_key.encode()))
    encrypted_key = base64.b64encode(PKCS1_v1_5.new(key=imported).encrypt(aes_key))
    payload = {"version": 1, "key": encrypted_key.decode(), "conn_info": b64_connection_info.decode()}
    wire = base64.b64encode(json.dumps(payload).encode("utf-8"))
else:
    text = json.dumps(conn)
    text = text + (16 - len(text) % 16) * "%"
    cipher = AES.new(kernel_id[0:16].encode("utf-8"), AES.MODE_ECB)
    wire = base64.b64encode(cipher.encrypt(text.encode("utf-8")))
host, port = address.split(":")
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.connect((host, int(port)))
    s.send(wire)
"#;

/// A connection file like a launcher writes, with launcher extras.
fn connection_json(hb_port: u16) -> serde_json::Value {
    serde_json::json!({
        "shell_port": 40001, "iopub_port": 40002, "stdin_port": 40003, "control_port": 40004,
        "hb_port": hb_port, "ip": "0.0.0.0", "key": "4a7b0bd6-3a51-4d6b-9a77-1b2fa1d0b3a1",
        "transport": "tcp", "signature_scheme": "hmac-sha256", "kernel_name": "",
        "pid": 4242, "pgid": 4242, "comm_port": 40006,
    })
}

async fn run_eg_launcher(
    version: u8,
    listener: &ResponseListener,
    kernel_id: &str,
    info: &serde_json::Value,
) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(python())
        .arg("-c")
        .arg(EG_LAUNCHER_SNIPPET)
        .arg(version.to_string())
        .arg(listener.response_address())
        .arg(listener.public_key_b64())
        .arg(kernel_id)
        .arg(info.to_string())
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "snippet failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

async fn send(listener: &ResponseListener, bytes: &[u8]) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(listener.local_addr()).await?;
    stream.write_all(bytes).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn receive(pending: &mut PendingLaunch, within: Duration) -> Option<LauncherResponse> {
    tokio::time::timeout(within, pending).await.ok()?.ok()
}

#[tokio::test]
async fn eg_launcher_payloads_version_1_and_0_are_accepted() -> anyhow::Result<()> {
    let listener = listener().await?;
    for version in [1u8, 0] {
        let id = kernel_id();
        let mut pending = listener.register(&id)?;
        run_eg_launcher(version, &listener, &id, &connection_json(40005)).await?;
        let response = receive(&mut pending, 10 * SECOND)
            .await
            .ok_or_else(|| anyhow::anyhow!("version {version} payload not accepted"))?;
        assert_eq!(response.kernel_id(), Some(id.as_str()), "version {version}");
        assert_eq!(response.pid, Some(4242));
        assert_eq!(response.pgid, Some(4242));
        assert_eq!(response.comm_port, Some(40006));
        assert_eq!(response.connection.shell_port, 40001);
        assert_eq!(response.connection.hb_port, 40005);
        assert_eq!(
            response.connection.key,
            "4a7b0bd6-3a51-4d6b-9a77-1b2fa1d0b3a1"
        );
        assert_eq!(response.connection.signature_scheme, "hmac-sha256");
    }
    assert_eq!(listener.pending_count(), 0);
    Ok(())
}

#[tokio::test]
async fn bad_payloads_are_refused_without_disturbing_a_launch_in_flight() -> anyhow::Result<()> {
    let listener = listener().await?;
    let id = kernel_id();
    let mut pending = listener.register(&id)?;
    let mut info = connection_json(40005);
    info["kernel_id"] = serde_json::Value::String(id.clone());
    let good = encrypt_v1(listener.public_key_b64(), info.to_string().as_bytes())?;

    // A slow sender holds a connection open the whole time.
    let mut slow = TcpStream::connect(listener.local_addr()).await?;
    slow.write_all(&good[..10]).await?;

    let other_gateway = KeyPair::generate()?;
    let wrong_key = encrypt_v1(other_gateway.public_key_b64(), info.to_string().as_bytes())?;
    let tampered = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut envelope: serde_json::Value = serde_json::from_slice(&b64.decode(&good)?)?;
        let mut key = b64.decode(envelope["key"].as_str().unwrap_or_default())?;
        if let Some(byte) = key.get_mut(100) {
            *byte ^= 0x40;
        }
        envelope["key"] = b64.encode(key).into();
        b64.encode(envelope.to_string()).into_bytes()
    };
    let mut unknown_info = info.clone();
    unknown_info["kernel_id"] = serde_json::Value::String(kernel_id());
    let unknown = encrypt_v1(
        listener.public_key_b64(),
        unknown_info.to_string().as_bytes(),
    )?;
    let mut no_id_info = info.clone();
    if let Some(map) = no_id_info.as_object_mut() {
        map.remove("kernel_id");
    }
    let no_id = encrypt_v1(listener.public_key_b64(), no_id_info.to_string().as_bytes())?;
    let mut no_ports_info = info.clone();
    if let Some(map) = no_ports_info.as_object_mut() {
        map.remove("shell_port");
    }
    let no_ports = encrypt_v1(
        listener.public_key_b64(),
        no_ports_info.to_string().as_bytes(),
    )?;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"hello, gateway".to_vec()),
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("wrong key", wrong_key),
        ("tampered", tampered),
        ("unknown kernel id", unknown),
        ("no kernel id", no_id),
        ("no connection info", no_ports),
        ("oversized", vec![b'A'; 200 * 1024]),
    ];
    for (what, bytes) in &cases {
        send(&listener, bytes).await?;
        assert!(
            receive(&mut pending, Duration::from_millis(150))
                .await
                .is_none(),
            "{what} was delivered"
        );
        assert_eq!(listener.pending_count(), 1, "{what} disturbed the launch");
    }

    // The real payload still gets through, while the slow sender is still connected.
    send(&listener, &good).await?;
    let response = receive(&mut pending, 10 * SECOND)
        .await
        .ok_or_else(|| anyhow::anyhow!("the good payload was not delivered"))?;
    assert_eq!(response.kernel_id(), Some(id.as_str()));
    drop(slow);

    // A second copy (replay), even for a new launch of the same kernel id, is refused.
    let mut again = listener.register(&id)?;
    send(&listener, &good).await?;
    assert!(
        receive(&mut again, Duration::from_millis(300))
            .await
            .is_none()
    );
    // A payload for a launch that was given up (dropped) is refused too.
    drop(again);
    let fresh = encrypt_v1(listener.public_key_b64(), info.to_string().as_bytes())?;
    send(&listener, &fresh).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(listener.pending_count(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_launches_each_get_their_own_payload() -> anyhow::Result<()> {
    let listener = listener().await?;
    let ids: Vec<String> = (0..100).map(|_| kernel_id()).collect();
    let mut pendings = Vec::new();
    for id in &ids {
        pendings.push(listener.register(id)?);
    }
    let mut senders = tokio::task::JoinSet::new();
    for (index, id) in ids.iter().enumerate() {
        let listener = listener.clone();
        let id = id.clone();
        senders.spawn(async move {
            let mut info = connection_json(30000 + u16::try_from(index).unwrap_or(0));
            info["kernel_id"] = serde_json::Value::String(id);
            let wire = encrypt_v1(listener.public_key_b64(), info.to_string().as_bytes())?;
            send(&listener, &wire).await
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent??;
    }
    for (index, (id, pending)) in ids.iter().zip(pendings).enumerate() {
        let response = tokio::time::timeout(10 * SECOND, pending).await??;
        assert_eq!(response.kernel_id(), Some(id.as_str()));
        assert_eq!(
            usize::from(response.connection.hb_port),
            30000 + index,
            "payload matched to the wrong kernel"
        );
    }
    assert_eq!(listener.pending_count(), 0);
    Ok(())
}
