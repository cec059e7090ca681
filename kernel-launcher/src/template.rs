//! `argv` templating into argument vectors (never a shell string).
//!
//! Kernelspec `argv` items may contain `{name}` placeholders (reference §6.3). Each item is
//! substituted on its own and stays one argument, whatever the substituted value contains, so no
//! value can inject extra arguments or shell syntax.
use std::collections::BTreeMap;

/// Substitutes `{name}` placeholders (`name` in `[A-Za-z0-9_]+`) from `vars`; unknown names stay as they are.
/// Typical names: `connection_file`, `kernel_id`, `response_address`, `public_key`, `port_range`, `resource_dir`.
pub fn substitute(argv: &[String], vars: &BTreeMap<&str, String>) -> Vec<String> {
    argv.iter().map(|item| substitute_one(item, vars)).collect()
}

/// Substitutes the placeholders of one argument.
pub fn substitute_one(item: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(item.len());
    let mut rest = item;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let closed = after[name_len..].starts_with('}');
        match vars.get(name) {
            Some(value) if closed && !name.is_empty() => {
                out.push_str(value);
                rest = &after[name_len + 1..];
            }
            _ => {
                // Not a known placeholder: keep the brace and scan on from the next character.
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(item: &str, expected: &str) {
        let vars: BTreeMap<&str, String> = [
            ("connection_file", "/run/kernel-1.json".to_owned()),
            ("kernel_id", "abc".to_owned()),
            ("port_range", "0..0".to_owned()),
            ("empty", String::new()),
            ("spacey", "a b; rm -rf /".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(substitute_one(item, &vars), expected, "item {item:?}");
    }

    #[test]
    fn placeholders() {
        check("{connection_file}", "/run/kernel-1.json");
        check(
            "--RemoteProcessProxy.kernel-id={kernel_id}",
            "--RemoteProcessProxy.kernel-id=abc",
        );
        check("{kernel_id}{kernel_id}", "abcabc");
        check("{unknown}", "{unknown}");
        check("{kernel-id}", "{kernel-id}");
        check("{}", "{}");
        check("{{kernel_id}}", "{abc}");
        check("{kernel_id", "{kernel_id");
        check("x{empty}y", "xy");
        check("{spacey}", "a b; rm -rf /");
        check("no braces", "no braces");
        check("é{kernel_id}ü", "éabcü");
        check("{", "{");
    }

    #[test]
    fn each_item_stays_one_argument() {
        let vars: BTreeMap<&str, String> = [("x", "1 2".to_owned())].into_iter().collect();
        let argv = vec!["prog".to_owned(), "{x}".to_owned(), "-f".to_owned()];
        assert_eq!(substitute(&argv, &vars), vec!["prog", "1 2", "-f"]);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Without variables every argument comes back unchanged, whatever it contains.
        #[test]
        fn no_vars_is_identity(item in ".*") {
            prop_assert_eq!(substitute_one(&item, &BTreeMap::new()), item);
        }

        /// A value never splits or merges arguments, and text around placeholders is kept.
        #[test]
        fn values_are_inserted_verbatim(prefix in "[^{]*", value in ".*", suffix in "[^{]*") {
            let vars: BTreeMap<&str, String> = [("v", value.clone())].into_iter().collect();
            let argv = vec![format!("{prefix}{{v}}{suffix}")];
            prop_assert_eq!(substitute(&argv, &vars), vec![format!("{prefix}{value}{suffix}")]);
        }
    }
}
