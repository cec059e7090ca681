//! A tiny kernel for tests and benchmarks.
//!
//! Usage: `test-kernel -f <connection_file>` (like ipykernel). It binds the five ports of the
//! connection file (ROUTER for shell, control and stdin, PUB for iopub, REP for heartbeat); ports
//! given as 0 are chosen by the system and written back to the file.
//!
//! `execute_request` code is a small command language, one command per line:
//!
//! | command | effect |
//! |---|---|
//! | `echo <text>` | one `stream` (stdout) with `<text>\n` |
//! | `sleep <secs>` | waits; SIGINT or `interrupt_request` stops it with a `KeyboardInterrupt` error |
//! | `emit <n>` | `n` `stream` (stdout) messages, `line 0\n` … `line <n-1>\n` |
//! | `display <bytes>` | one `display_data` whose `text/plain` is `<bytes>` times `x` |
//! | `exit <code>` | the process exits at once with that code |
//! | `error` | an `error` (ename `TestError`) |
//!
//! Blank lines are skipped; an unknown command is an error (ename `UnknownCommand`). An error stops
//! the remaining lines. Every request is wrapped in iopub `status` busy/idle; execute also
//! publishes `execute_input` and replies `execute_reply`. `kernel_info_request`,
//! `comm_info_request`, `is_complete_request`, `interrupt_request` and `shutdown_request` (reply,
//! then exit 0) are answered too. Messages on stdin are read and dropped. SIGINT outside `sleep`
//! is ignored.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use jupyter_protocol::content::{
    ErrorContent, ExecuteInput, ExecuteReply, ExecuteRequest, InterruptReply, ShutdownReply,
    ShutdownRequest, Status, Stream,
};
use jupyter_protocol::{Channel, ConnectionInfo, Header, Message, Signer, Verifier};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// Largest message the kernel accepts.
const MAX_MESSAGE: usize = 1 << 30;

/// How long replies get to leave the process before `shutdown_request` exits.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(100);

fn main() -> anyhow::Result<()> {
    let path = connection_file(std::env::args().skip(1))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(path))
}

fn connection_file(mut args: impl Iterator<Item = String>) -> anyhow::Result<PathBuf> {
    while let Some(arg) = args.next() {
        if arg == "-f" || arg == "--connection-file" {
            return args.next().map(PathBuf::from).context("-f needs a file");
        }
        if let Some(path) = arg
            .strip_prefix("-f=")
            .or_else(|| arg.strip_prefix("--connection-file="))
        {
            return Ok(PathBuf::from(path));
        }
    }
    bail!("usage: test-kernel -f <connection_file>")
}

/// What every task needs to build and publish messages.
#[derive(Clone)]
struct Kernel {
    session: String,
    signer: Signer,
    iopub: mpsc::Sender<Message>,
    interrupts: watch::Sender<u64>,
}

impl Kernel {
    fn reply(&self, parent: &Message, msg_type: &str, content: &impl serde::Serialize) -> Message {
        let header = Header::new(msg_type, &self.session, "kernel");
        Message::new(&header, content).with_parent(parent.header.clone())
    }

    async fn publish(&self, parent: &Message, msg_type: &str, content: &impl serde::Serialize) {
        // The publisher task only ends with the process.
        let _ = self.iopub.send(self.reply(parent, msg_type, content)).await;
    }

    async fn status(&self, parent: &Message, state: Status) {
        self.publish(parent, "status", &state).await;
    }
}

async fn bind<S: Socket>(
    socket: &mut S,
    info: &ConnectionInfo,
    channel: Channel,
) -> anyhow::Result<u16> {
    let endpoint = info.endpoint(channel);
    let bound = socket
        .bind(&endpoint)
        .await
        .with_context(|| format!("binding {channel} to {endpoint}"))?;
    Ok(match bound {
        zeromq::Endpoint::Tcp(_, port) => port,
        _ => info.port(channel),
    })
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let mut info = ConnectionInfo::read(&path)?;
    let signer = info.signer()?;
    let mut shell = zeromq::RouterSocket::new();
    let mut control = zeromq::RouterSocket::new();
    let mut stdin = zeromq::RouterSocket::new();
    let mut iopub = zeromq::PubSocket::new();
    let mut hb = zeromq::RepSocket::new();
    let ports = [
        bind(&mut shell, &info, Channel::Shell).await?,
        bind(&mut control, &info, Channel::Control).await?,
        bind(&mut stdin, &info, Channel::Stdin).await?,
        bind(&mut iopub, &info, Channel::Iopub).await?,
        bind(&mut hb, &info, Channel::Heartbeat).await?,
    ];
    let chosen = [
        info.shell_port,
        info.control_port,
        info.stdin_port,
        info.iopub_port,
        info.hb_port,
    ];
    if chosen.contains(&0) {
        [
            info.shell_port,
            info.control_port,
            info.stdin_port,
            info.iopub_port,
            info.hb_port,
        ] = ports;
        info.write(&path)?;
    }

    let (iopub_tx, iopub_rx) = mpsc::channel(1024);
    let kernel = Kernel {
        session: uuid::Uuid::new_v4().to_string(),
        signer: signer.clone(),
        iopub: iopub_tx,
        interrupts: watch::Sender::new(0),
    };
    tokio::spawn(publish(
        iopub,
        kernel.session.clone(),
        signer.clone(),
        iopub_rx,
    ));
    tokio::spawn(heartbeat(hb));
    tokio::spawn(forward_sigint(kernel.interrupts.clone()));
    let starting = Message::new(
        &Header::new("status", &kernel.session, "kernel"),
        &Status::starting(),
    );
    let _ = kernel.iopub.send(starting).await;

    let control_task = tokio::spawn(serve(control, Channel::Control, kernel.clone()));
    let shell_task = tokio::spawn(serve(shell, Channel::Shell, kernel));
    // This kernel never asks for input: what clients send on stdin is read and dropped (so a
    // client can send any number of messages there without being held up).
    tokio::spawn(drain(stdin));
    tokio::select! {
        done = control_task => done?,
        done = shell_task => done?,
    }
}

/// Publishes iopub messages with a topic frame like ipykernel's.
async fn publish(
    mut socket: zeromq::PubSocket,
    session: String,
    signer: Signer,
    mut rx: mpsc::Receiver<Message>,
) {
    while let Some(msg) = rx.recv().await {
        let msg_type = msg.parse_header().map(|h| h.msg_type).unwrap_or_default();
        let topic = Bytes::from(format!("kernel.{session}.{msg_type}"));
        let frames = signer.encode(&[topic], &msg);
        if let Ok(zmq) = ZmqMessage::try_from(frames) {
            let _ = socket.send(zmq).await;
        }
    }
}

/// Reads and drops everything arriving on a socket.
async fn drain(mut socket: zeromq::RouterSocket) {
    loop {
        if socket.recv().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn heartbeat(mut socket: zeromq::RepSocket) {
    loop {
        match socket.recv().await {
            Ok(ping) => {
                let _ = socket.send(ping).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn forward_sigint(interrupts: watch::Sender<u64>) {
    let Ok(mut sigint) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    else {
        return;
    };
    while sigint.recv().await.is_some() {
        interrupts.send_modify(|n| *n += 1);
    }
}

/// Serves shell or control requests one at a time.
async fn serve(
    socket: zeromq::RouterSocket,
    channel: Channel,
    kernel: Kernel,
) -> anyhow::Result<()> {
    let (mut tx, mut rx) = socket.split();
    let mut verifier = Verifier::new(kernel.signer.clone());
    let mut execution_count = 0u64;
    loop {
        let frames = match rx.recv().await {
            Ok(frames) => frames.into_vec(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (identities, request) = match verifier.decode(frames, MAX_MESSAGE) {
            Ok(decoded) => decoded,
            Err(err) => {
                eprintln!("test-kernel: dropping {channel} message: {err}");
                continue;
            }
        };
        let Ok(header) = request.parse_header() else {
            continue;
        };
        kernel.status(&request, Status::busy()).await;
        let reply = match header.msg_type.as_str() {
            "kernel_info_request" => {
                Some(kernel.reply(&request, "kernel_info_reply", &kernel_info()))
            }
            "comm_info_request" => Some(kernel.reply(
                &request,
                "comm_info_reply",
                &json!({"status": "ok", "comms": {}}),
            )),
            "is_complete_request" => Some(kernel.reply(
                &request,
                "is_complete_reply",
                &json!({"status": "complete"}),
            )),
            "execute_request" => Some(execute(&kernel, &request, &mut execution_count).await),
            "interrupt_request" => {
                kernel.interrupts.send_modify(|n| *n += 1);
                let content = InterruptReply {
                    status: "ok".into(),
                };
                Some(kernel.reply(&request, "interrupt_reply", &content))
            }
            "shutdown_request" => {
                let restart = request
                    .parse_content::<ShutdownRequest>()
                    .map(|r| r.restart)
                    .unwrap_or(false);
                let content = ShutdownReply {
                    status: "ok".into(),
                    restart,
                };
                let reply = kernel.reply(&request, "shutdown_reply", &content);
                send(&mut tx, &kernel.signer, &identities, &reply).await;
                kernel.publish(&request, "shutdown_reply", &content).await;
                kernel.status(&request, Status::idle()).await;
                tokio::time::sleep(SHUTDOWN_LINGER).await;
                std::process::exit(0);
            }
            other => {
                eprintln!("test-kernel: no handler for {other} on {channel}");
                None
            }
        };
        if let Some(reply) = reply {
            send(&mut tx, &kernel.signer, &identities, &reply).await;
        }
        kernel.status(&request, Status::idle()).await;
    }
}

async fn send(
    tx: &mut zeromq::RouterSendHalf,
    signer: &Signer,
    identities: &[Bytes],
    msg: &Message,
) {
    if let Ok(zmq) = ZmqMessage::try_from(signer.encode(identities, msg))
        && let Err(err) = tx.send(zmq).await
    {
        eprintln!("test-kernel: reply not sent: {err}");
    }
}

fn kernel_info() -> serde_json::Value {
    json!({
        "status": "ok",
        "protocol_version": "5.3",
        "implementation": "test-kernel",
        "implementation_version": env!("CARGO_PKG_VERSION"),
        "language_info": {
            "name": "test-kernel-commands",
            "version": "1.0",
            "mimetype": "text/plain",
            "file_extension": ".txt"
        },
        "banner": "test-kernel: echo, sleep, emit, display, exit, error",
        "help_links": []
    })
}

/// Runs the command lines of an execute_request and returns the reply.
async fn execute(kernel: &Kernel, request: &Message, execution_count: &mut u64) -> Message {
    let req: ExecuteRequest = match request.parse_content() {
        Ok(req) => req,
        Err(err) => ExecuteRequest::new(&format!("error malformed request: {err}")),
    };
    if !req.silent && req.store_history {
        *execution_count += 1;
    }
    let count = *execution_count;
    kernel
        .publish(
            request,
            "execute_input",
            &ExecuteInput {
                code: req.code.clone(),
                execution_count: count,
            },
        )
        .await;
    let mut failure = None;
    for line in req.code.lines() {
        if let Err(err) = run_line(kernel, request, line.trim()).await {
            failure = Some(err);
            break;
        }
    }
    let reply = match failure {
        None => ExecuteReply {
            status: "ok".into(),
            execution_count: Some(count),
            user_expressions: Default::default(),
            payload: Vec::new(),
            ename: None,
            evalue: None,
            traceback: None,
        },
        Some(err) => {
            kernel.publish(request, "error", &err).await;
            ExecuteReply {
                status: "error".into(),
                execution_count: Some(count),
                user_expressions: Default::default(),
                payload: Vec::new(),
                ename: Some(err.ename),
                evalue: Some(err.evalue),
                traceback: Some(err.traceback),
            }
        }
    };
    kernel.reply(request, "execute_reply", &reply)
}

fn error(ename: &str, evalue: String) -> ErrorContent {
    ErrorContent {
        ename: ename.to_owned(),
        traceback: vec![format!("{ename}: {evalue}")],
        evalue,
    }
}

async fn stdout(kernel: &Kernel, request: &Message, text: String) {
    let stream = Stream {
        name: "stdout".into(),
        text,
    };
    kernel.publish(request, "stream", &stream).await;
}

async fn run_line(kernel: &Kernel, request: &Message, line: &str) -> Result<(), ErrorContent> {
    let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
    let number = |what: &str| -> Result<u64, ErrorContent> {
        arg.trim()
            .parse()
            .map_err(|_| error("ValueError", format!("{what} needs a number, got {arg:?}")))
    };
    match command {
        "" => {}
        "echo" => stdout(kernel, request, format!("{arg}\n")).await,
        "emit" => {
            for i in 0..number("emit")? {
                stdout(kernel, request, format!("line {i}\n")).await;
            }
        }
        "display" => {
            let size = usize::try_from(number("display")?).unwrap_or(usize::MAX);
            let content = json!({
                "data": {"text/plain": "x".repeat(size)},
                "metadata": {},
                "transient": {}
            });
            kernel.publish(request, "display_data", &content).await;
        }
        "sleep" => {
            let secs: f64 = arg
                .trim()
                .parse()
                .map_err(|_| error("ValueError", format!("sleep needs seconds, got {arg:?}")))?;
            let duration = Duration::try_from_secs_f64(secs)
                .map_err(|err| error("ValueError", format!("sleep {secs}: {err}")))?;
            let mut interrupts = kernel.interrupts.subscribe();
            interrupts.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep(duration) => {}
                _ = interrupts.changed() => {
                    return Err(error("KeyboardInterrupt", "interrupted".into()));
                }
            }
        }
        "exit" => {
            let code = arg.trim().parse().unwrap_or(1);
            std::process::exit(code);
        }
        "error" => return Err(error("TestError", "error requested".into())),
        other => {
            return Err(error(
                "UnknownCommand",
                format!("unknown command {other:?}"),
            ));
        }
    }
    Ok(())
}
