//! `gateway-bench`: benchmarks our gateway side by side with Enterprise Gateway 3.3.0 and the
//! direct floor (the same kernel driven with `jupyter_protocol::KernelClient`, no gateway).
//!
//! Run it through `cargo xtask bench [--quick | --compare ...]`; `--help` lists the options and
//! `bench/README.md` explains the method. The code lives in `tests/src/bench/`.

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> std::process::ExitCode {
    bench::main()
}
