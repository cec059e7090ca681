//! Lists the kernelspecs found on this machine, as the gateway would see them.
//!
//! Run with `cargo run -p kernel-launcher --example list_kernelspecs [extra kernels dirs...]`.
//! The search path is built from `JUPYTER_PATH`, `HOME` and the Python prefix of the `python3`
//! found in this workspace's `.venv` (if any) plus the usual system directories.
use std::path::PathBuf;

use kernel_launcher::KernelSpecs;
use kernel_launcher::kernelspec::search_path;

fn main() {
    let jupyter_path = std::env::var("JUPYTER_PATH").ok();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv");
    let prefixes: Vec<PathBuf> = [venv].into_iter().filter(|p| p.is_dir()).collect();
    let extra: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();

    let path = search_path(jupyter_path.as_deref(), home.as_deref(), &prefixes, &extra);
    println!("search path:");
    for dir in &path {
        println!(
            "  {}{}",
            dir.display(),
            if dir.is_dir() { "" } else { "  (missing)" }
        );
    }

    let specs = KernelSpecs::discover(&path);
    println!("kernelspecs:");
    for (name, spec) in &specs.specs {
        let backend = spec.backend.to_string();
        println!(
            "  {name:<20} {:<30} [{backend}] {}",
            spec.display_name,
            spec.resource_dir.display()
        );
        println!("    argv: {:?}", spec.argv);
    }
    for (name, reason) in &specs.failed {
        println!("  {name:<20} FAILED: {reason}");
    }
}
