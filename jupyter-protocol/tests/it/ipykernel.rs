//! Against a real ipykernel: the client, the socket unit and the restart story.
use std::sync::Arc;
use std::time::Duration;

use jupyter_protocol::KernelClient;
use nix::sys::signal::Signal;
use tokio::sync::Notify;

use crate::support::{IpyKernel, options};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn start() -> anyhow::Result<(IpyKernel, KernelClient)> {
    let kernel = IpyKernel::start()?;
    let client = KernelClient::connect(&kernel.info, &options()).await?;
    Ok((kernel, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_kernel_info_and_heartbeat() -> anyhow::Result<()> {
    let (_kernel, mut client) = start().await?;
    let info = client.kernel_info(TIMEOUT).await?;
    assert_eq!(info.status, "ok");
    assert_eq!(info.implementation, "ipython");
    assert!(
        info.protocol_version.starts_with("5."),
        "{}",
        info.protocol_version
    );
    assert_eq!(info.language_info["name"], "python");
    assert!(client.is_alive(Duration::from_secs(10)).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_execute_stream_result_and_error() -> anyhow::Result<()> {
    let (_kernel, mut client) = start().await?;
    let out = client
        .execute(
            "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n6 * 7",
            TIMEOUT,
        )
        .await?;
    assert_eq!(out.status, "ok");
    assert_eq!(out.stdout, "hello\n");
    assert_eq!(out.stderr, "oops\n");
    assert_eq!(out.results, vec!["42".to_owned()]);
    assert!(out.error.is_none());

    let out = client.execute("1 / 0", TIMEOUT).await?;
    assert_eq!(out.status, "error");
    let error = out.error.expect("an error was published");
    assert_eq!(error.ename, "ZeroDivisionError");
    assert!(!error.traceback.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_8_mib_display_data() -> anyhow::Result<()> {
    let (_kernel, mut client) = start().await?;
    let size = 8 << 20;
    let code = format!(
        "from IPython.display import display\ndisplay({{'text/plain': 'x' * {size}}}, raw=True)"
    );
    let out = client.execute(&code, TIMEOUT).await?;
    assert_eq!(out.status, "ok");
    assert_eq!(out.results.len(), 1);
    assert_eq!(out.results[0].len(), size);
    assert!(out.results[0].bytes().all(|b| b == b'x'));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_10k_stream_messages_none_lost() -> anyhow::Result<()> {
    let (_kernel, mut client) = start().await?;
    let n = 10_000;
    let code = format!(
        "import sys\nfor i in range({n}):\n    print(f'line {{i}}')\n    sys.stdout.flush()"
    );
    let mut streams = 0usize;
    let out = client
        .execute_with(&code, TIMEOUT, |msg| {
            if msg.parse_header().is_ok_and(|h| h.msg_type == "stream") {
                streams += 1;
            }
        })
        .await?;
    let expected: String = (0..n).map(|i| format!("line {i}\n")).collect();
    assert_eq!(out.status, "ok");
    assert!(
        out.stdout == expected,
        "stdout differs: {} of {} bytes",
        out.stdout.len(),
        expected.len()
    );
    assert_eq!(client.iopub_dropped(), 0);
    // ipykernel's flush waits for its iopub thread, so every flush is at least one message.
    assert!(streams >= n, "{streams} stream messages");
    eprintln!("{streams} stream messages");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_sigint_interrupts_sleep() -> anyhow::Result<()> {
    let (kernel, mut client) = start().await?;
    let pid = kernel.pid();
    let running = Arc::new(Notify::new());
    // ipykernel ignores SIGINT between requests, so keep signalling once the code runs.
    let interrupter = tokio::spawn({
        let running = running.clone();
        async move {
            running.notified().await;
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = nix::sys::signal::killpg(pid, Signal::SIGINT);
            }
        }
    });
    let started = tokio::time::Instant::now();
    let out = client
        .execute_with("import time\ntime.sleep(30)", TIMEOUT, |msg| {
            if msg
                .parse_header()
                .is_ok_and(|h| h.msg_type == "execute_input")
            {
                running.notify_one();
            }
        })
        .await;
    interrupter.abort();
    let out = out?;
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "sleep was not interrupted"
    );
    assert_eq!(out.status, "error");
    assert_eq!(
        out.error.map(|e| e.ename).as_deref(),
        Some("KeyboardInterrupt")
    );
    // The kernel survives and keeps working.
    let out = client.execute("print('after')", TIMEOUT).await?;
    assert_eq!(out.stdout, "after\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_interrupt_request_on_control() -> anyhow::Result<()> {
    let (kernel, mut client) = start().await?;
    let mut other = KernelClient::connect(&kernel.info, &options()).await?;
    let running = Arc::new(Notify::new());
    let interrupter = tokio::spawn({
        let running = running.clone();
        async move {
            running.notified().await;
            let mut replies = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if other.interrupt(TIMEOUT).await.is_ok() {
                    replies += 1;
                }
                if replies > 20 {
                    return replies;
                }
            }
        }
    });
    let started = tokio::time::Instant::now();
    let out = client
        .execute_with("import time\ntime.sleep(30)", TIMEOUT, |msg| {
            if msg
                .parse_header()
                .is_ok_and(|h| h.msg_type == "execute_input")
            {
                running.notify_one();
            }
        })
        .await;
    interrupter.abort();
    let out = out?;
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "sleep was not interrupted"
    );
    assert_eq!(
        out.error.map(|e| e.ename).as_deref(),
        Some("KeyboardInterrupt")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_shutdown_ends_the_process() -> anyhow::Result<()> {
    let (mut kernel, mut client) = start().await?;
    client.kernel_info(TIMEOUT).await?;
    client.shutdown(false, TIMEOUT).await?;
    let status = kernel.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some(),
        "kernel still running after shutdown_reply"
    );
    assert!(!client.is_alive(Duration::from_millis(500)).await);
    Ok(())
}

// See rust-dependencies.md §1.2: a DEALER does not recover when its kernel restarts on the same
// ports, so a restart means a new socket unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipykernel_restart_on_same_ports_with_new_socket_unit() -> anyhow::Result<()> {
    let (mut kernel, mut client) = start().await?;
    assert_eq!(
        client.execute("x = 1\nprint(x)", TIMEOUT).await?.stdout,
        "1\n"
    );
    kernel.restart()?;
    drop(client);
    let mut client = KernelClient::connect(&kernel.info, &options()).await?;
    client.kernel_info(TIMEOUT).await?;
    let out = client.execute("print('x' in dir())", TIMEOUT).await?;
    assert_eq!(out.stdout, "False\n", "a fresh kernel process answered");
    assert!(client.is_alive(Duration::from_secs(10)).await);
    Ok(())
}
