//! The kernel's environment, composed as Enterprise Gateway does (reference §5).
//!
//! Two steps: [`filter_request_env`] validates a start request's `env` object (the client's
//! fault when it fails), then [`compose`] builds the launch environment from that, the gateway's
//! environment, the policy and the kernelspec.
use std::collections::BTreeMap;

use crate::{Error, KernelSpec};

/// The longest value (in characters) a request env variable may have.
pub const MAX_ENV_VALUE_LEN: usize = 4096;

/// Characters a request env value must not contain.
const PROHIBITED: [char; 5] = ['$', '`', '\r', '\n', '\0'];

/// Variables never passed to a kernel (credentials and noise).
const REMOVED: [&str; 5] = [
    "EG_AUTH_TOKEN",
    "KG_AUTH_TOKEN",
    "EG_REMOTE_PWD",
    "LS_COLORS",
    "PYTHONEXECUTABLE",
];

/// The longest name (in bytes) a request env variable may have.
pub const MAX_ENV_NAME_LEN: usize = 256;

/// Default bound on a request env's total size (names plus values, in bytes).
pub const DEFAULT_MAX_ENV_BYTES: usize = 256 * 1024;

/// Which client and gateway variables may reach kernels.
#[derive(Debug, Clone)]
pub struct EnvPolicy {
    /// Request variables accepted besides `KERNEL_*` (`["*"]` = all).
    pub client_envs: Vec<String>,
    /// Gateway process variables passed on.
    pub inherited_envs: Vec<String>,
    /// Most bytes (names plus values) a request's `env` may hold, accepted or not; more is
    /// refused before anything starts (the kernel's `exec` would fail with E2BIG).
    pub max_total_bytes: usize,
}

impl Default for EnvPolicy {
    fn default() -> EnvPolicy {
        EnvPolicy {
            client_envs: Vec::new(),
            inherited_envs: Vec::new(),
            max_total_bytes: DEFAULT_MAX_ENV_BYTES,
        }
    }
}

impl EnvPolicy {
    /// Whether a request variable is accepted: `KERNEL_*`, listed in `client_envs`, or `client_envs` has `*`.
    pub fn accepts_client(&self, key: &str) -> bool {
        key.starts_with("KERNEL_") || self.client_envs.iter().any(|k| k == "*" || k == key)
    }
    /// Whether a gateway variable is inherited by kernels.
    pub fn inherits(&self, key: &str) -> bool {
        self.inherited_envs.iter().any(|k| k == key)
    }
}

/// Validates and filters a request's `env` object: names that cannot reach `exec` (empty, with
/// `=`, NUL or control characters, over [`MAX_ENV_NAME_LEN`]) and an env larger than the policy's
/// `max_total_bytes` are refused; non-`KERNEL_*` keys not allowed are dropped; non-string,
/// oversized (> 4096) or values containing `$`, backtick, CR, LF, NUL are refused.
pub fn filter_request_env(
    request: &serde_json::Map<String, serde_json::Value>,
    policy: &EnvPolicy,
) -> Result<BTreeMap<String, String>, Error> {
    let total: usize = request
        .iter()
        .map(|(key, value)| key.len() + value.as_str().map_or(0, str::len))
        .sum();
    if total > policy.max_total_bytes {
        return Err(Error::InvalidEnv(format!(
            "The env object holds {total} bytes; at most {} are accepted",
            policy.max_total_bytes
        )));
    }
    let mut accepted = BTreeMap::new();
    for (key, value) in request {
        if let Err(why) = check_env_name(key) {
            return Err(Error::InvalidEnv(format!(
                "Environment variable name {} {why}",
                printable(key)
            )));
        }
        if !policy.accepts_client(key) {
            tracing::debug!(
                key,
                "dropping request env variable not allowed by client_envs"
            );
            continue;
        }
        let serde_json::Value::String(text) = value else {
            return Err(Error::InvalidEnv(format!(
                "Environment variable '{key}' value must be a string"
            )));
        };
        if text.chars().count() > MAX_ENV_VALUE_LEN {
            return Err(Error::InvalidEnv(format!(
                "Environment variable '{key}' exceeds maximum length"
            )));
        }
        if text.contains(PROHIBITED) {
            return Err(Error::InvalidEnv(format!(
                "Environment variable '{key}' contains prohibited characters"
            )));
        }
        accepted.insert(key.clone(), text.clone());
    }
    Ok(accepted)
}

/// Why `name` cannot be an environment variable name, if it cannot.
fn check_env_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.len() > MAX_ENV_NAME_LEN {
        Err("is too long")
    } else if name.contains('=') {
        Err("contains '='")
    } else if name.chars().any(char::is_control) {
        Err("contains NUL or control characters")
    } else {
        Ok(())
    }
}

/// A name for an error message: escaped, and cut short so an overlong one is not echoed whole.
fn printable(name: &str) -> String {
    let cut: String = name.chars().take(64).collect();
    let suffix = if cut.len() < name.len() { "..." } else { "" };
    format!("'{}{suffix}'", cut.escape_debug())
}

/// Inputs of [`compose`].
#[derive(Debug, Clone)]
pub struct EnvInputs<'a> {
    /// The filtered request env, or `None` when the request had no `env` (then the kernel inherits the gateway env).
    pub request: Option<&'a BTreeMap<String, String>>,
    /// The gateway process environment.
    pub gateway: &'a BTreeMap<String, String>,
    /// The policy.
    pub policy: &'a EnvPolicy,
    /// The kernelspec.
    pub spec: &'a KernelSpec,
    /// Kernel id.
    pub kernel_id: &'a str,
    /// Effective user name (request KERNEL_USERNAME or the gateway's OS user).
    pub username: &'a str,
    /// Impersonation flag, exported as `EG_IMPERSONATION_ENABLED`.
    pub impersonation_enabled: bool,
}

/// Composes the launch environment in EG's order (§5.3 steps 1–7).
///
/// 1. Base: the inherited gateway variables plus the request env (the request wins), or the whole
///    gateway env when the request had no `env`.
/// 2. `KERNEL_USERNAME` defaults to `username`.
/// 3. The user overrides are remembered: with a request env, every base variable that is
///    `KERNEL_*`, inherited or allowed by `client_envs` (`*` allows all).
/// 4. The kernelspec `env` is applied, each value expanded like Python's
///    `string.Template.safe_substitute` against the env of step 2; `PYTHONEXECUTABLE` is removed.
/// 5. The user overrides are applied again (the kernelspec only provides defaults).
/// 6. `KERNEL_GATEWAY=1`; the auth tokens are removed.
/// 7. `KERNEL_ID`, `KERNEL_LANGUAGE` (unless set), `EG_IMPERSONATION_ENABLED` and
///    `GP_IMPERSONATION_ENABLED` (`True`/`False`),
///    `KERNEL_USERNAME`; `EG_REMOTE_PWD` and `LS_COLORS` are removed.
///
/// `JPY_PARENT_PID` is added by the backend that spawns the process.
pub fn compose(inputs: &EnvInputs<'_>) -> BTreeMap<String, String> {
    let policy = inputs.policy;
    // Step 1.
    let mut env: BTreeMap<String, String> = match inputs.request {
        Some(request) => {
            let mut base: BTreeMap<String, String> = inputs
                .gateway
                .iter()
                .filter(|(k, _)| policy.inherits(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            base.extend(request.iter().map(|(k, v)| (k.clone(), v.clone())));
            base
        }
        None => inputs.gateway.clone(),
    };
    // Step 2.
    env.entry("KERNEL_USERNAME".to_owned())
        .or_insert_with(|| inputs.username.to_owned());
    // Step 3.
    let overrides: BTreeMap<String, String> = if inputs.request.is_some() {
        env.iter()
            .filter(|(k, _)| policy.accepts_client(k) || policy.inherits(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        BTreeMap::new()
    };
    // Step 4: every value is expanded against the env as it was before the stanza.
    let expanded: Vec<(String, String)> = inputs
        .spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), safe_substitute(v, &env)))
        .collect();
    env.extend(expanded);
    env.remove("PYTHONEXECUTABLE");
    // Step 5.
    env.extend(overrides);
    // Step 6.
    env.insert("KERNEL_GATEWAY".to_owned(), "1".to_owned());
    // Step 7.
    env.insert("KERNEL_ID".to_owned(), inputs.kernel_id.to_owned());
    if !env.contains_key("KERNEL_LANGUAGE") {
        let language = inputs.spec.language.to_lowercase();
        let language = if language.is_empty() {
            "unknown-kernel-language".to_owned()
        } else {
            language
        };
        env.insert("KERNEL_LANGUAGE".to_owned(), language);
    }
    let impersonation = if inputs.impersonation_enabled {
        "True"
    } else {
        "False"
    };
    // EG's launch scripts read the first name, gateway_provisioners' (`run.sh` adding
    // `--proxy-user`) the second.
    for name in ["EG_IMPERSONATION_ENABLED", "GP_IMPERSONATION_ENABLED"] {
        env.insert(name.to_owned(), impersonation.to_owned());
    }
    env.entry("KERNEL_USERNAME".to_owned())
        .or_insert_with(|| inputs.username.to_owned());
    for key in REMOVED {
        env.remove(key);
    }
    env
}

/// Expands `$name`, `${name}` and `$$` like Python's `string.Template.safe_substitute`:
/// names are `[A-Za-z_][A-Za-z0-9_]*`; unknown names and any other `$` are left as written
/// (so a shell's `${VAR:-default}` survives for the launch script).
pub fn safe_substitute(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let (braced, body) = match after.strip_prefix('{') {
            Some(inner) => (true, inner),
            None => (false, after),
        };
        let name_len = identifier_len(body);
        let closes = !braced || body[name_len..].starts_with('}');
        if name_len > 0 && closes {
            let name = &body[..name_len];
            let consumed = if braced { name_len + 2 } else { name_len };
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&rest[dollar..dollar + 1 + consumed]),
            }
            rest = &after[consumed..];
        } else {
            // Not a placeholder: keep the `$` and go on after it.
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Length of the ASCII identifier at the start of `s` (0 when `s` does not start with one).
fn identifier_len(s: &str) -> usize {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, c)) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return 0,
    }
    chars
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
        .map_or(s.len(), |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{BackendRef, InterruptMode, SpecConfig};
    use serde_json::json;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn spec(env: &[(&str, &str)], language: &str) -> KernelSpec {
        KernelSpec {
            name: "kernel_defaults_test".to_owned(),
            resource_dir: PathBuf::from("/nonexistent"),
            argv: vec!["python".to_owned()],
            display_name: "Kernel defaults".to_owned(),
            language: language.to_owned(),
            env: map(env),
            interrupt_mode: InterruptMode::Signal,
            metadata: serde_json::Value::Null,
            backend: BackendRef::Default,
            config: SpecConfig::default(),
        }
    }

    /// Filters `request` (a JSON object) with `policy` and compares with `Ok(pairs)` or the error text.
    #[track_caller]
    fn check_filter(
        request: serde_json::Value,
        policy: &EnvPolicy,
        expected: Result<&[(&str, &str)], &str>,
    ) {
        let serde_json::Value::Object(request) = request else {
            panic!("test input must be an object");
        };
        let got = filter_request_env(&request, policy).map_err(|e| e.to_string());
        assert_eq!(got, expected.map(map).map_err(str::to_owned));
    }

    #[test]
    fn request_env_filter() {
        let policy = EnvPolicy {
            client_envs: vec!["TEST_VAR".to_owned()],
            inherited_envs: vec![],
            ..EnvPolicy::default()
        };
        let all = EnvPolicy {
            client_envs: vec!["*".to_owned()],
            inherited_envs: vec![],
            ..EnvPolicy::default()
        };

        check_filter(
            json!({"KERNEL_A": "1", "TEST_VAR": "2", "OTHER": "3"}),
            &policy,
            Ok(&[("KERNEL_A", "1"), ("TEST_VAR", "2")]),
        );
        check_filter(
            json!({"KERNEL_A": "1", "OTHER": "3"}),
            &all,
            Ok(&[("KERNEL_A", "1"), ("OTHER", "3")]),
        );
        check_filter(
            json!({"KERNEL_A": 5}),
            &policy,
            Err("Environment variable 'KERNEL_A' value must be a string"),
        );
        check_filter(
            json!({"KERNEL_A": null}),
            &policy,
            Err("Environment variable 'KERNEL_A' value must be a string"),
        );
        // A refused key that is not allowed is dropped before validation.
        check_filter(json!({"OTHER": 5}), &policy, Ok(&[]));
        let long = "x".repeat(MAX_ENV_VALUE_LEN + 1);
        check_filter(
            json!({"KERNEL_A": long}),
            &policy,
            Err("Environment variable 'KERNEL_A' exceeds maximum length"),
        );
        let at_limit = "é".repeat(MAX_ENV_VALUE_LEN);
        assert!(
            filter_request_env(
                json!({"KERNEL_A": at_limit})
                    .as_object()
                    .unwrap_or(&serde_json::Map::new()),
                &policy
            )
            .is_ok()
        );
        for bad in ["a$b", "`id`", "a\nb", "a\rb", "a\0b"] {
            check_filter(
                json!({"KERNEL_A": bad}),
                &policy,
                Err("Environment variable 'KERNEL_A' contains prohibited characters"),
            );
        }
        // Names that cannot reach exec, whether or not the policy would accept them.
        for (name, why) in [
            (
                "KERNEL_\0X",
                "'KERNEL_\\0X' contains NUL or control characters",
            ),
            ("KERNEL_A=B", "'KERNEL_A=B' contains '='"),
            ("", "'' is empty"),
            (
                "OTHER\u{1b}[31m",
                "'OTHER\\u{1b}[31m' contains NUL or control characters",
            ),
        ] {
            check_filter(
                json!({ name: "v" }),
                &policy,
                Err(&format!("Environment variable name {why}")),
            );
        }
        let long_name = format!("KERNEL_{}", "N".repeat(MAX_ENV_NAME_LEN));
        let got = filter_request_env(
            json!({ long_name: "v" })
                .as_object()
                .unwrap_or(&serde_json::Map::new()),
            &policy,
        );
        assert!(got.is_err_and(|e| e.to_string().ends_with("...' is too long")));
        // The total bound counts every entry, dropped ones too.
        let small = EnvPolicy {
            max_total_bytes: 20,
            ..EnvPolicy::default()
        };
        check_filter(
            json!({"KERNEL_A": "0123456789"}),
            &small,
            Ok(&[("KERNEL_A", "0123456789")]),
        );
        check_filter(
            json!({"KERNEL_A": "0123456789", "OTHER": "12345678"}),
            &small,
            Err("The env object holds 31 bytes; at most 20 are accepted"),
        );
    }

    #[track_caller]
    fn check_subst(template: &str, expected: &str) {
        let vars = map(&[("HOME", "/home/u"), ("A_1", "x"), ("EMPTY", "")]);
        assert_eq!(
            safe_substitute(template, &vars),
            expected,
            "template {template:?}"
        );
    }

    #[test]
    fn template_safe_substitute() {
        check_subst("$HOME/bin", "/home/u/bin");
        check_subst("${HOME}/bin", "/home/u/bin");
        check_subst("$A_1$A_1", "xx");
        check_subst("$A_1b", "$A_1b");
        check_subst("$$HOME", "$HOME");
        check_subst("$$", "$");
        check_subst("$UNKNOWN and ${UNKNOWN}", "$UNKNOWN and ${UNKNOWN}");
        check_subst("${HOME:-/tmp}", "${HOME:-/tmp}");
        check_subst("$", "$");
        check_subst("a$ b", "a$ b");
        check_subst("$1", "$1");
        check_subst("${", "${");
        check_subst("${}", "${}");
        check_subst("x${EMPTY}y", "xy");
        check_subst("é$HOMEé", "é/home/ué");
        check_subst("é${HOME}é", "é/home/ué");
    }

    /// EG's unit-test matrix (reference §5.3, "Expected results").
    #[test]
    fn eg_kernel_defaults_matrix() {
        let spec = spec(
            &[
                ("KERNEL_VAR1", "kernel_var1_default"),
                ("KERNEL_VAR2", "kernel_var2_default"),
                ("OTHER_VAR1", "other_var1_default"),
                ("OTHER_VAR2", "other_var2_default"),
                ("PROCESS_VAR1", "process_var1_default"),
                ("PROCESS_VAR2", "process_var2_default"),
            ],
            "Python",
        );
        let policy = EnvPolicy {
            client_envs: vec![
                "TEST_VAR".to_owned(),
                "OTHER_VAR1".to_owned(),
                "OTHER_VAR2".to_owned(),
            ],
            inherited_envs: vec!["PROCESS_VAR1".to_owned(), "PROCESS_VAR2".to_owned()],
            ..EnvPolicy::default()
        };
        let gateway = map(&[
            ("PROCESS_VAR1", "process_var1_override"),
            ("PATH", "/usr/bin"),
            ("EG_AUTH_TOKEN", "secret"),
        ]);
        let request = serde_json::json!({
            "KERNEL_VAR1": "kernel_var1_override",
            "KERNEL_VAR3": "kernel_var3_value",
            "OTHER_VAR2": "other_var2_override",
            "KERNEL_GATEWAY": "kernel_gateway_override",
            "NOT_KERNEL": "not_kernel_value",
        });
        let request = filter_request_env(
            request.as_object().unwrap_or(&serde_json::Map::new()),
            &policy,
        );
        let request = request.unwrap_or_default();
        let env = compose(&EnvInputs {
            request: Some(&request),
            gateway: &gateway,
            policy: &policy,
            spec: &spec,
            kernel_id: "k-1",
            username: "alice",
            impersonation_enabled: false,
        });
        let expected = map(&[
            ("KERNEL_VAR1", "kernel_var1_override"),
            ("KERNEL_VAR2", "kernel_var2_default"),
            ("KERNEL_VAR3", "kernel_var3_value"),
            ("KERNEL_GATEWAY", "1"),
            ("OTHER_VAR1", "other_var1_default"),
            ("OTHER_VAR2", "other_var2_override"),
            ("PROCESS_VAR1", "process_var1_override"),
            ("PROCESS_VAR2", "process_var2_default"),
            ("KERNEL_ID", "k-1"),
            ("KERNEL_LANGUAGE", "python"),
            ("KERNEL_USERNAME", "alice"),
            ("EG_IMPERSONATION_ENABLED", "False"),
            ("GP_IMPERSONATION_ENABLED", "False"),
        ]);
        assert_eq!(env, expected);

        // Without `env`: the whole gateway env, minus the token.
        let env = compose(&EnvInputs {
            request: None,
            gateway: &gateway,
            policy: &policy,
            spec: &spec,
            kernel_id: "k-1",
            username: "alice",
            impersonation_enabled: true,
        });
        assert!(!env.contains_key("EG_AUTH_TOKEN"));
        assert_eq!(env.get("PATH").map(String::as_str), Some("/usr/bin"));
        // Without user overrides the kernelspec env wins over the gateway's.
        assert_eq!(
            env.get("PROCESS_VAR1").map(String::as_str),
            Some("process_var1_default")
        );
        assert_eq!(
            env.get("EG_IMPERSONATION_ENABLED").map(String::as_str),
            Some("True")
        );
        assert_eq!(
            env.get("GP_IMPERSONATION_ENABLED").map(String::as_str),
            Some("True")
        );
    }

    #[test]
    fn compose_details() {
        let spec = spec(
            &[
                ("SPEC_HOME", "${HOME}/x"),
                ("SPEC_USER", "$KERNEL_USERNAME"),
                ("SHELLISH", "${SPARK_OPTS:-none}"),
                ("PYTHONEXECUTABLE", "/usr/bin/python"),
                ("KERNEL_LANGUAGE", "scala"),
            ],
            "",
        );
        let policy = EnvPolicy {
            client_envs: vec![],
            inherited_envs: vec!["HOME".to_owned(), "LS_COLORS".to_owned()],
            ..EnvPolicy::default()
        };
        let gateway = map(&[
            ("HOME", "/home/gw"),
            ("LS_COLORS", "di=1"),
            ("EG_REMOTE_PWD", "pw"),
            ("KG_AUTH_TOKEN", "t"),
        ]);
        let request = map(&[("KERNEL_USERNAME", "bob"), ("KERNEL_ID", "client-chosen")]);
        let env = compose(&EnvInputs {
            request: Some(&request),
            gateway: &gateway,
            policy: &policy,
            spec: &spec,
            kernel_id: "k-2",
            username: "bob",
            impersonation_enabled: false,
        });
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("SPEC_HOME"), Some("/home/gw/x"));
        assert_eq!(get("SPEC_USER"), Some("bob"));
        assert_eq!(get("SHELLISH"), Some("${SPARK_OPTS:-none}"));
        assert_eq!(get("PYTHONEXECUTABLE"), None);
        assert_eq!(get("LS_COLORS"), None);
        assert_eq!(get("EG_REMOTE_PWD"), None);
        assert_eq!(get("KG_AUTH_TOKEN"), None);
        assert_eq!(get("KERNEL_ID"), Some("k-2"));
        // The kernelspec set KERNEL_LANGUAGE, so the spec language is not forced.
        assert_eq!(get("KERNEL_LANGUAGE"), Some("scala"));
        assert_eq!(get("KERNEL_USERNAME"), Some("bob"));

        let plain = spec_with_language("");
        let env = compose(&EnvInputs {
            request: Some(&BTreeMap::new()),
            gateway: &gateway,
            policy: &policy,
            spec: &plain,
            kernel_id: "k-3",
            username: "carol",
            impersonation_enabled: false,
        });
        assert_eq!(
            env.get("KERNEL_LANGUAGE").map(String::as_str),
            Some("unknown-kernel-language")
        );
        assert_eq!(
            env.get("KERNEL_USERNAME").map(String::as_str),
            Some("carol")
        );
        assert_eq!(env.get("HOME").map(String::as_str), Some("/home/gw"));
    }

    fn spec_with_language(language: &str) -> KernelSpec {
        spec(&[], language)
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Text without `$` is never changed; any text is handled without panicking.
        #[test]
        fn dollar_free_text_is_kept(text in "[^$]*", any in ".*") {
            let vars: BTreeMap<String, String> = [("A".to_owned(), "x".to_owned())].into_iter().collect();
            prop_assert_eq!(safe_substitute(&text, &vars), text);
            let _ = safe_substitute(&any, &vars);
        }

        /// With no variables, only `$$` changes (to `$`).
        #[test]
        fn unknown_names_survive(text in "[a-zA-Z_{}$ ]*") {
            let expected = text.replace("$$", "\u{0}").replace('\u{0}', "$");
            prop_assert_eq!(safe_substitute(&text, &BTreeMap::new()), expected);
        }
    }
}
