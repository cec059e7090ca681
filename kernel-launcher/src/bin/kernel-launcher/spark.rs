//! `--spark-context-initialization-mode none|lazy|eager` for the kernels the agent starts.
//!
//! The modes mean what they mean in Enterprise Gateway's launchers: `none` starts the kernel
//! without a Spark session; `eager` creates it before the kernel answers; `lazy` lets the kernel
//! answer at once while the session comes up in the background, and the first use of `spark` or
//! `sc` waits for it. A session that cannot be created is reported in the cell that uses it.
//!
//! What the agent does per kernel:
//! * ipykernel (Python): for `lazy` and `eager` it writes a start-up file into its private
//!   directory and adds `--IPKernelApp.exec_files=<file>` to the kernel's argv; the file defines
//!   `spark` and `sc` in the user namespace.
//! * Apache Toree (Scala): Toree has the same three modes itself, so the agent passes
//!   `--spark-context-initialization-mode <mode>` on to it.
//! * Anything else (IRkernel included): only `none`. A Spark session for R needs SparkR, which
//!   gateway_provisioners' `launch_IRkernel.R` sets up; the agent refuses `lazy`/`eager` for such
//!   a kernel with an error that says so, rather than start a kernel without the session asked for.

use std::path::Path;

/// One of the three modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SparkInit {
    #[default]
    None,
    Lazy,
    Eager,
}

impl SparkInit {
    /// The mode named on the command line; empty means `none`, as in EG's launchers.
    pub(crate) fn parse(text: &str) -> Result<SparkInit, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Ok(SparkInit::None),
            "lazy" => Ok(SparkInit::Lazy),
            "eager" => Ok(SparkInit::Eager),
            other => Err(format!(
                "--spark-context-initialization-mode must be none, lazy or eager, not '{other}'"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            SparkInit::None => "none",
            SparkInit::Lazy => "lazy",
            SparkInit::Eager => "eager",
        }
    }
}

/// What kind of kernel an argv starts, as far as Spark sessions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    IPyKernel,
    Toree,
    Other,
}

fn kind(argv: &[String]) -> Kind {
    let toree = argv
        .iter()
        .any(|a| a == "org.apache.toree.Main" || a.contains("toree-assembly"));
    if toree {
        return Kind::Toree;
    }
    let ipykernel = argv
        .windows(2)
        .any(|w| w[0] == "-m" && matches!(w[1].as_str(), "ipykernel_launcher" | "ipykernel"))
        || argv.iter().any(|a| {
            Path::new(a)
                .file_name()
                .is_some_and(|n| n == "ipykernel_launcher.py")
        });
    if ipykernel {
        Kind::IPyKernel
    } else {
        Kind::Other
    }
}

/// The kernel's argv with what `mode` needs; the Python start-up file (if any) goes into `dir`.
pub(crate) fn apply(
    mode: SparkInit,
    argv: Vec<String>,
    kernel_id: &str,
    dir: &Path,
) -> Result<Vec<String>, String> {
    match (kind(&argv), mode) {
        (Kind::Toree, mode) => {
            let mut argv = argv;
            argv.extend([
                "--spark-context-initialization-mode".to_owned(),
                mode.name().to_owned(),
            ]);
            Ok(argv)
        }
        (_, SparkInit::None) => Ok(argv),
        (Kind::IPyKernel, mode) => {
            let file = dir.join("spark_session.py");
            std::fs::write(&file, python_startup(mode, kernel_id))
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            let mut argv = argv;
            argv.push(format!("--IPKernelApp.exec_files={}", file.display()));
            Ok(argv)
        }
        (Kind::Other, mode) => Err(format!(
            "--spark-context-initialization-mode {}: this agent creates Spark sessions for \
             ipykernel (Python) and Apache Toree (Scala) kernels only, and '{}' is neither; an \
             R kernel's SparkR session is left to gateway_provisioners' launch_IRkernel.R \
             (use it as the kernelspec's launcher, or mode none here)",
            mode.name(),
            argv.first().map(String::as_str).unwrap_or_default()
        )),
    }
}

/// The Python run in the kernel's namespace before it answers (`IPKernelApp.exec_files`).
fn python_startup(mode: SparkInit, kernel_id: &str) -> String {
    let eager = if mode == SparkInit::Eager {
        "True"
    } else {
        "False"
    };
    format!(
        r#"# Written by kernel-launcher for --spark-context-initialization-mode {mode}.
def _kernel_launcher_spark(app_name, eager):
    import atexit
    import threading

    state = {{}}
    namespace = globals()

    def create():
        try:
            from pyspark.sql import SparkSession

            builder = SparkSession.builder
            from pyspark import SparkConf

            if not SparkConf().contains("spark.app.name"):
                builder = builder.appName(app_name)
            session = builder.getOrCreate()
            state["spark"] = session
            atexit.register(session.stop)
        except BaseException as err:  # reported in the first cell that uses the session
            state["error"] = err

    class Pending:
        """Stands for `spark` or `sc` until the session exists; any use waits for it."""

        def __init__(self, name, thread):
            self._name = name
            self._thread = thread

        def _real(self):
            if self._thread is not None:
                self._thread.join()
            if "error" in state:
                err = state["error"]
                raise RuntimeError(
                    f"the Spark session did not start: {{type(err).__name__}}: {{err}}"
                ) from err
            session = state["spark"]
            real = session if self._name == "spark" else session.sparkContext
            if isinstance(namespace.get(self._name), Pending):
                namespace[self._name] = real
            return real

        def __getattr__(self, attr):
            return getattr(self._real(), attr)

        def __repr__(self):
            return repr(self._real())

    if eager:
        create()
        thread = None
    else:
        thread = threading.Thread(target=create, name="spark-session", daemon=True)
        thread.start()
    if "spark" in state:
        namespace["spark"] = state["spark"]
        namespace["sc"] = state["spark"].sparkContext
    else:
        namespace["spark"] = Pending("spark", thread)
        namespace["sc"] = Pending("sc", thread)


_kernel_launcher_spark({kernel_id:?}, {eager})
del _kernel_launcher_spark
"#,
        mode = mode.name(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn modes_per_kernel() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(SparkInit::parse(""), Ok(SparkInit::None));
        assert_eq!(SparkInit::parse("Lazy"), Ok(SparkInit::Lazy));
        assert!(SparkInit::parse("soon").is_err_and(|e| e.contains("'soon'")));

        let python = argv(&[
            "python",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ]);
        let lazy = apply(SparkInit::Lazy, python.clone(), "k-1", dir.path()).expect("python");
        let file = dir.path().join("spark_session.py");
        assert_eq!(
            lazy.last().map(String::as_str),
            Some(format!("--IPKernelApp.exec_files={}", file.display()).as_str())
        );
        let text = std::fs::read_to_string(&file).expect("start-up file");
        assert!(
            text.contains("_kernel_launcher_spark(\"k-1\", False)"),
            "{text}"
        );
        assert_eq!(
            apply(SparkInit::None, python.clone(), "k-1", dir.path()),
            Ok(python)
        );

        let toree = argv(&["spark-submit", "--class", "org.apache.toree.Main", "t.jar"]);
        let eager = apply(SparkInit::Eager, toree, "k", dir.path()).expect("toree");
        assert_eq!(
            eager[eager.len() - 2..],
            argv(&["--spark-context-initialization-mode", "eager"])
        );

        let r = argv(&[
            "R",
            "--slave",
            "-e",
            "IRkernel::main()",
            "--args",
            "{connection_file}",
        ]);
        assert_eq!(
            apply(SparkInit::None, r.clone(), "k", dir.path()),
            Ok(r.clone())
        );
        let refused = apply(SparkInit::Lazy, r, "k", dir.path());
        assert!(
            refused.is_err_and(|e| e.contains("launch_IRkernel.R") && e.contains("'R'")),
            "an R kernel's lazy mode is refused with the reason"
        );
    }
}
