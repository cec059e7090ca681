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
//!   `--spark-context-initialization-mode <mode>` on to it (after the kernel's own arguments).
//!   A Toree kernel is an argv naming `org.apache.toree.Main` or a `toree-assembly` jar, or a
//!   script that starts `org.apache.toree.Main`, as the `bin/run.sh` of the kernelspec
//!   `jupyter toree install` writes.
//! * IRkernel (R): for `lazy` and `eager` it writes an R start-up file and points
//!   `R_PROFILE_USER` at it (the profile the user had, `R_PROFILE_USER` or R's own choice of
//!   `./.Rprofile` and `~/.Rprofile`, is sourced from it first). The file binds `spark` and `sc`
//!   in the global environment with `delayedAssign`, as gateway_provisioners' `launch_IRkernel.R`
//!   does; `eager` creates the session before IRkernel starts. The session is pyspark's, reached
//!   through the `reticulate` package (with `PYSPARK_PYTHON` when set), not SparkR's: `spark`
//!   is a pyspark `SparkSession` (`spark$range(10L)$count()`), `sc` its `SparkContext`. Use
//!   gateway_provisioners' `launch_IRkernel.R` as the launcher for a SparkR session instead.
//!   `lazy` is R's lazy: the session is made by the first cell that uses it (R runs one thing at
//!   a time), not in the background as for Python.
//! * Anything else: only `none`; `lazy`/`eager` are refused with an error that says so, rather
//!   than start a kernel without the session asked for.

use std::ffi::OsString;
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
    IRkernel,
    Other,
}

fn kind(argv: &[String]) -> Kind {
    let toree = argv.iter().any(|a| {
        a == "org.apache.toree.Main" || a.contains("toree-assembly") || script_runs_toree(a)
    });
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
    } else if argv.iter().any(|a| a.contains("IRkernel::main")) {
        Kind::IRkernel
    } else {
        Kind::Other
    }
}

/// Whether `arg` names a small script that starts Toree, as the `bin/run.sh` of the kernelspecs
/// `jupyter toree install` writes does (`--class org.apache.toree.Main`): the argv of such a
/// kernelspec names neither the class nor the assembly itself.
fn script_runs_toree(arg: &str) -> bool {
    const SCRIPT_LIMIT: u64 = 64 * 1024;
    let path = Path::new(arg);
    path.is_absolute()
        && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= SCRIPT_LIMIT)
        && std::fs::read(path).is_ok_and(|text| {
            text.windows(b"org.apache.toree.Main".len())
                .any(|w| w == b"org.apache.toree.Main")
        })
}

/// The kernel's argv and the variables to add to its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, OsString)>,
}

/// The kernel's argv and environment with what `mode` needs; start-up files go into `dir`.
/// `r_profile` is the `R_PROFILE_USER` the agent was given, if any.
pub(crate) fn apply(
    mode: SparkInit,
    argv: Vec<String>,
    kernel_id: &str,
    dir: &Path,
    r_profile: Option<OsString>,
) -> Result<Launch, String> {
    let write = |name: &str, text: String| {
        let file = dir.join(name);
        std::fs::write(&file, text)
            .map(|()| file.clone())
            .map_err(|e| format!("cannot write {}: {e}", file.display()))
    };
    let plain = |argv| Launch {
        argv,
        env: Vec::new(),
    };
    match (kind(&argv), mode) {
        (Kind::Toree, mode) => {
            let mut argv = argv;
            argv.extend([
                "--spark-context-initialization-mode".to_owned(),
                mode.name().to_owned(),
            ]);
            Ok(plain(argv))
        }
        (_, SparkInit::None) => Ok(plain(argv)),
        (Kind::IPyKernel, mode) => {
            let file = write("spark_session.py", python_startup(mode, kernel_id))?;
            let mut argv = argv;
            argv.push(format!("--IPKernelApp.exec_files={}", file.display()));
            Ok(plain(argv))
        }
        (Kind::IRkernel, mode) => {
            let previous = r_profile.map(|p| p.to_string_lossy().into_owned());
            let file = write(
                "spark_session.R",
                r_startup(mode, kernel_id, previous.as_deref()),
            )?;
            Ok(Launch {
                argv,
                env: vec![("R_PROFILE_USER".to_owned(), file.into_os_string())],
            })
        }
        (Kind::Other, mode) => Err(format!(
            "--spark-context-initialization-mode {}: this agent creates Spark sessions for \
             ipykernel (Python), Apache Toree (Scala) and IRkernel (R) kernels only, and '{}' is \
             none of them (use mode none)",
            mode.name(),
            argv.first().map(String::as_str).unwrap_or_default()
        )),
    }
}

/// `text` as an R string literal.
fn r_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The R profile run before IRkernel starts (`R_PROFILE_USER`).
fn r_startup(mode: SparkInit, kernel_id: &str, previous: Option<&str>) -> String {
    let eager = if mode == SparkInit::Eager {
        "TRUE"
    } else {
        "FALSE"
    };
    let previous = previous.map_or_else(|| "NULL".to_owned(), r_string);
    format!(
        r#"# Written by kernel-launcher for --spark-context-initialization-mode {mode}.
local({{
    # The profile R would have read without this one.
    own <- {previous}
    if (is.null(own)) own <- Filter(file.exists, c(".Rprofile", path.expand("~/.Rprofile")))[1]
    if (length(own) == 1 && !is.na(own) && nzchar(own) && file.exists(own)) {{
        sys.source(own, envir = globalenv())
    }}
}})
.kernel_launcher_spark <- local({{
    state <- new.env()
    create <- function() {{
        tryCatch({{
            python <- Sys.getenv("PYSPARK_PYTHON")
            if (nzchar(python)) reticulate::use_python(python, required = TRUE)
            pyspark <- reticulate::import("pyspark")
            builder <- reticulate::import("pyspark.sql")$SparkSession$builder
            if (!pyspark$SparkConf()$contains("spark.app.name")) {{
                builder <- builder$appName({app})
            }}
            state$spark <- builder$getOrCreate()
        }}, error = function(e) state$error <- conditionMessage(e))
        invisible(NULL)
    }}
    get <- function(name) {{
        if (is.null(state$spark) && is.null(state$error)) create()
        if (!is.null(state$error)) {{
            stop("the Spark session did not start: ", state$error, call. = FALSE)
        }}
        if (identical(name, "sc")) state$spark$sparkContext else state$spark
    }}
    list(create = create, get = get, state = state)
}})
if ({eager}) {{
    .kernel_launcher_spark$create()
    if (!is.null(.kernel_launcher_spark$state$error)) {{
        message("kernel-launcher: the Spark session did not start: ", .kernel_launcher_spark$state$error)
    }}
}}
delayedAssign("spark", .kernel_launcher_spark$get("spark"), assign.env = globalenv())
delayedAssign("sc", .kernel_launcher_spark$get("sc"), assign.env = globalenv())
"#,
        mode = mode.name(),
        app = r_string(kernel_id),
    )
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
        let lazy = apply(SparkInit::Lazy, python.clone(), "k-1", dir.path(), None).expect("python");
        let file = dir.path().join("spark_session.py");
        assert_eq!(
            lazy.argv.last().map(String::as_str),
            Some(format!("--IPKernelApp.exec_files={}", file.display()).as_str())
        );
        assert!(lazy.env.is_empty());
        let text = std::fs::read_to_string(&file).expect("start-up file");
        assert!(
            text.contains("_kernel_launcher_spark(\"k-1\", False)"),
            "{text}"
        );
        assert_eq!(
            apply(SparkInit::None, python.clone(), "k-1", dir.path(), None).map(|l| l.argv),
            Ok(python)
        );

        let toree = argv(&["spark-submit", "--class", "org.apache.toree.Main", "t.jar"]);
        let eager = apply(SparkInit::Eager, toree, "k", dir.path(), None).expect("toree");
        assert_eq!(
            eager.argv[eager.argv.len() - 2..],
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
            apply(SparkInit::None, r.clone(), "k", dir.path(), None),
            Ok(Launch {
                argv: r.clone(),
                env: Vec::new()
            })
        );
        let lazy = apply(
            SparkInit::Lazy,
            r.clone(),
            "k\"2",
            dir.path(),
            Some("/home/u/my \"profile\".R".into()),
        )
        .expect("R");
        let file = dir.path().join("spark_session.R");
        assert_eq!(lazy.argv, r, "the R argv is left as it is");
        assert_eq!(
            lazy.env,
            vec![("R_PROFILE_USER".to_owned(), file.clone().into_os_string())]
        );
        let text = std::fs::read_to_string(&file).expect("R start-up file");
        assert!(
            text.contains("own <- \"/home/u/my \\\"profile\\\".R\""),
            "{text}"
        );
        assert!(text.contains("$appName(\"k\\\"2\")"), "{text}");
        assert!(text.contains("if (FALSE) {"), "{text}");
        let eager = apply(SparkInit::Eager, r, "k", dir.path(), None).expect("R eager");
        assert_eq!(eager.env.len(), 1);
        let text = std::fs::read_to_string(&file).expect("R start-up file");
        assert!(
            text.contains("own <- NULL") && text.contains("if (TRUE) {"),
            "{text}"
        );

        // The argv of the kernelspec `jupyter toree install` writes: its run.sh.
        let run_sh = dir.path().join("run.sh");
        std::fs::write(
            &run_sh,
            "#!/usr/bin/env bash\neval exec \"${SPARK_HOME}/bin/spark-submit\" \\\n    \
             --class org.apache.toree.Main \"${TOREE_ASSEMBLY}\" \"$@\"\n",
        )
        .expect("run.sh");
        let toree = vec![
            run_sh.display().to_string(),
            "--profile".to_owned(),
            "/tmp/k.json".to_owned(),
        ];
        let lazy = apply(SparkInit::Lazy, toree, "k", dir.path(), None).expect("run.sh");
        assert_eq!(
            lazy.argv[1..],
            argv(&[
                "--profile",
                "/tmp/k.json",
                "--spark-context-initialization-mode",
                "lazy"
            ])
        );
        let other_script = dir.path().join("other.sh");
        std::fs::write(&other_script, "#!/bin/sh\nexec sleep 1\n").expect("other.sh");
        assert!(
            apply(
                SparkInit::Lazy,
                vec![other_script.display().to_string()],
                "k",
                dir.path(),
                None
            )
            .is_err(),
            "a script that does not start Toree is not taken for one"
        );

        let bash = argv(&["bash", "-c", "sleep 1"]);
        let refused = apply(SparkInit::Lazy, bash, "k", dir.path(), None);
        assert!(
            refused.is_err_and(|e| e.contains("IRkernel") && e.contains("'bash'")),
            "another kernel's lazy mode is refused with the reason"
        );
    }
}
