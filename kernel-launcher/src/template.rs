//! `argv` templating into argument vectors (never a shell string).
use std::collections::BTreeMap;

/// Substitutes `{name}` placeholders (`name` in `[A-Za-z0-9_]+`) from `vars`; unknown names stay as they are.
/// Typical names: `connection_file`, `kernel_id`, `response_address`, `public_key`, `port_range`, `resource_dir`.
pub fn substitute(argv: &[String], vars: &BTreeMap<&str, String>) -> Vec<String> {
    todo!()
}
