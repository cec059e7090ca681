//! Runs code in a running kernel and prints what it produced.
//!
//! ```text
//! cargo run -p jupyter-protocol --example execute -- <connection_file> <code>
//! ```
use std::time::Duration;

use anyhow::Context;
use jupyter_protocol::{ConnectionInfo, KernelClient, SocketOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: execute <connection_file> <code>";
    let path = args.next().context(usage)?;
    let code = args.next().context(usage)?;

    let info = ConnectionInfo::read(path.as_ref())?;
    let mut client = KernelClient::connect(&info, &SocketOptions::default()).await?;
    let kernel = client.kernel_info(Duration::from_secs(30)).await?;
    eprintln!(
        "connected to {} (protocol {})",
        kernel.implementation, kernel.protocol_version
    );

    let outcome = client.execute(&code, Duration::from_secs(600)).await?;
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    for result in &outcome.results {
        println!("{result}");
    }
    if let Some(error) = &outcome.error {
        eprintln!("{}: {}", error.ename, error.evalue);
    }
    eprintln!("status: {}", outcome.status);
    Ok(())
}
