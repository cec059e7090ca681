//! External resource-manager plugins (`--plugins_file`, docs/plugin-protocol.md): a TOML file
//! of `[[plugins]]` tables, each naming a program by its argv (optionally `cwd` and `env`).
//! Each is asked `hello` once at start; its answer names the backend and the class and
//! provisioner names kernelspecs use for it. The `external` backend, whose kernelspecs name
//! their own program in `config.plugin`, is always there.
//!
//! ```toml
//! [[plugins]]
//! argv = ["python3", "/opt/plugins/batch.py", "--queue", "short"]
//! env = { BATCH_HOME = "/opt/batch" }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use resource_managers::Registry;
use resource_managers::external::{ExternalConfig, ExternalResourceManager, PluginCommand};

/// The file's shape.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginsFile {
    #[serde(default)]
    plugins: Vec<PluginCommand>,
}

/// Reads the plugins file; every plugin needs a non-empty argv.
pub(crate) fn load(path: &Path) -> anyhow::Result<Vec<PluginCommand>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the plugins file {}", path.display()))?;
    parse(&text).with_context(|| format!("in the plugins file {}", path.display()))
}

fn parse(text: &str) -> anyhow::Result<Vec<PluginCommand>> {
    let file: PluginsFile = toml::from_str(text)?;
    for (n, plugin) in file.plugins.iter().enumerate() {
        if plugin.argv.is_empty() {
            anyhow::bail!("plugin {} has an empty argv", n + 1);
        }
    }
    Ok(file.plugins)
}

/// Registers the `external` backend and one backend per configured plugin that answers
/// `hello`; a plugin that does not is logged, and the kernelspecs naming it stay unavailable.
pub(crate) async fn register(
    registry: &mut Registry,
    plugins: &[PluginCommand],
    search_path: &[PathBuf],
) {
    let config = ExternalConfig::new(search_path.to_vec());
    registry.register(Arc::new(ExternalResourceManager::for_kernelspecs(
        config.clone(),
    )));
    for command in plugins {
        match ExternalResourceManager::probe(command.clone(), config.clone()).await {
            Ok(backend) => {
                tracing::info!(backend = backend_name(&backend), argv = ?command.argv, "plugin registered");
                registry.register(Arc::new(backend));
            }
            Err(error) => {
                tracing::error!(argv = ?command.argv, %error, "plugin not registered: its kernelspecs are unavailable");
            }
        }
    }
}

fn backend_name(backend: &ExternalResourceManager) -> &str {
    backend
        .hello()
        .map_or("external", |hello| hello.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_files_name_programs() {
        let plugins = parse(
            r#"
            [[plugins]]
            argv = ["python3", "plugin.py"]
            [[plugins]]
            argv = ["/opt/p"]
            cwd = "/opt"
            env = { A = "1" }
            "#,
        )
        .expect("parses");
        assert_eq!(plugins.len(), 2);
        assert_eq!(plugins[0].argv, ["python3", "plugin.py"]);
        assert_eq!(plugins[1].cwd.as_deref(), Some(Path::new("/opt")));
        assert_eq!(plugins[1].env.get("A").map(String::as_str), Some("1"));
        assert!(parse("").expect("empty is fine").is_empty());
    }

    #[test]
    fn bad_plugins_files_say_what_is_wrong() {
        let err = parse("[[plugins]]\nargv = []\n").expect_err("empty argv");
        assert!(
            err.to_string().contains("plugin 1 has an empty argv"),
            "{err}"
        );
        let err = parse("[[plugin]]\nargv = [\"p\"]\n").expect_err("misspelt table");
        assert!(format!("{err:#}").contains("plugin"), "{err:#}");
        assert!(parse("[[plugins]]\nprogram = \"p\"\n").is_err());
    }
}
