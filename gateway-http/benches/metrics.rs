//! What metrics cost where it matters: on the forwarding path, per message, and per HTTP
//! request.
//!
//! `cargo bench -p gateway-http --bench metrics`
//!
//! A WebSocket connection takes its counter handles when it opens and adds to two of them per
//! forwarded message (messages and bytes); `forward_*` times exactly that, with the Prometheus
//! recorder installed and with the no-op handles a gateway without a recorder
//! (`--metrics_enabled=false`) gets. `http_request_observation` times the one labelled histogram
//! observation each request makes, and `render_*` a scrape.
use divan::Bencher;
use metrics::{Counter, counter, histogram};

fn main() {
    if let Err(error) = gateway_http::metrics::install() {
        eprintln!("cannot install the recorder: {error}");
        return;
    }
    divan::main();
}

/// The two handles a connection adds to per message, as `metrics::Traffic` takes them.
fn handles() -> (Counter, Counter) {
    (
        counter!("eg_messages_forwarded_total", "direction" => "to_client"),
        counter!("eg_bytes_forwarded_total", "direction" => "to_client"),
    )
}

#[divan::bench]
fn forward_message_recorder(bencher: Bencher<'_, '_>) {
    let (messages, bytes) = handles();
    bencher.bench_local(|| {
        messages.increment(1);
        bytes.increment(divan::black_box(1500));
    });
}

#[divan::bench]
fn forward_message_no_recorder(bencher: Bencher<'_, '_>) {
    let (messages, bytes) = (Counter::noop(), Counter::noop());
    bencher.bench_local(|| {
        messages.increment(1);
        bytes.increment(divan::black_box(1500));
    });
}

#[divan::bench]
fn http_request_observation(bencher: Bencher<'_, '_>) {
    bencher.bench_local(|| {
        histogram!(
            "http_request_duration_seconds",
            "method" => "GET",
            "handler" => "/api/kernels/{kernel_id}".to_owned(),
            "status_code" => "200".to_owned()
        )
        .record(divan::black_box(0.0004));
    });
}

#[divan::bench]
fn render_a_scrape(bencher: Bencher<'_, '_>) {
    let Some(handle) = gateway_http::metrics::handle() else {
        return;
    };
    bencher.bench_local(|| divan::black_box(handle.render()));
}
