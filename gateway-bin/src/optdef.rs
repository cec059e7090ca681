//! How an option is declared: [`declare_options!`] turns one line per option into the table that
//! drives the command line, `--help`, the environment and config files ([`OptionDef`]), and into
//! [`crate::options::Values`], a struct with one typed field per option. Code reads an option
//! as a field, so a misspelt name does not compile, and each field's type says how its text is
//! converted ([`Value`]) and what an invalid value is told. A default is written once: as text,
//! or as an expression over the library's own default (`{ GatewayConfig::default().x }`), which
//! is then shown in `--help` and `--generate-config` as text.

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;

use crate::options::RawOptions;

/// One configurable option, as the command line, the environment and config files see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OptionDef {
    /// Our name: the CLI flag (`--<name>`), the config-file key and the field of `Values`.
    pub(crate) name: &'static str,
    /// Placeholder in `--help`; also picks the TOML type in generated configs (`BOOL`, `LIST`,
    /// numbers bare).
    pub(crate) value: &'static str,
    /// What an option nobody set holds.
    pub(crate) default: DefaultValue,
    /// Environment variables, first match wins (EG's, then legacy KG_/GP_ fallbacks).
    pub(crate) env: &'static [&'static str],
    /// traitlets classes whose `--Class.<trait>` spelling is accepted.
    pub(crate) classes: &'static [&'static str],
    /// Older trait names (traitlets' deprecated spellings that EG's images still use), accepted
    /// in those classes and as config-file keys.
    pub(crate) aliases: &'static [&'static str],
    /// One line of help.
    pub(crate) help: &'static str,
}

/// An option's default: literal text, or text made from a library default so the number lives
/// in one place.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DefaultValue {
    /// Written in the table (empty: unset).
    Text(&'static str),
    /// Taken from the library crate that owns the setting.
    Library(fn() -> String),
}

impl OptionDef {
    /// The default as text, as `--help`, generated configs and the layering see it.
    pub(crate) fn default_text(&self) -> Cow<'static, str> {
        match self.default {
            DefaultValue::Text(text) => Cow::Borrowed(text),
            DefaultValue::Library(make) => Cow::Owned(make()),
        }
    }

    /// The trait names the option answers to in config files and `--Class.<trait>` flags.
    pub(crate) fn trait_names(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.name).chain(self.aliases.iter().copied())
    }
}

/// How an option's text becomes the typed value of its field.
pub(crate) trait Value: Sized {
    /// Whether an empty value (`--port=`, `EG_PORT=`) means the option's default rather than
    /// itself (a boolean's empty text is false, a list's is empty, as before).
    const EMPTY_IS_DEFAULT: bool = true;
    /// The value of `text`, or why not (the caller prefixes `--<name>: `).
    fn from_text(text: &str) -> Result<Self, String>;
}

/// Reads one option of `raw` as `T`; errors name the option.
pub(crate) fn read<T: Value>(def: &OptionDef, raw: &RawOptions) -> anyhow::Result<T> {
    let given = raw.get(def.name);
    let text = if given.trim().is_empty() && T::EMPTY_IS_DEFAULT {
        def.default_text()
    } else {
        Cow::Borrowed(given)
    };
    T::from_text(&text).map_err(|why| anyhow!("--{}: {why}", def.name))
}

/// A value as option text, for defaults taken from the libraries.
pub(crate) trait ToText {
    fn to_text(&self) -> String;
}

impl Value for bool {
    const EMPTY_IS_DEFAULT: bool = false;
    fn from_text(text: &str) -> Result<bool, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "false" | "0" | "no" | "off" | "n" | "f" => Ok(false),
            "true" | "1" | "yes" | "on" | "y" | "t" => Ok(true),
            other => Err(format!("{other:?} is not a boolean")),
        }
    }
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn from_text(text: &str) -> Result<$t, String> {
                let text = text.trim();
                text.parse::<$t>()
                    .map_err(|e| format!("{text:?} is not a valid number: {e}"))
            }
        }
        impl ToText for $t {
            fn to_text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
numbers!(u16, u32, usize, i64);

impl ToText for bool {
    fn to_text(&self) -> String {
        self.to_string()
    }
}

/// Seconds, fractions allowed, never negative.
impl Value for Duration {
    fn from_text(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let secs = match text {
            "" => 0.0,
            _ => text
                .parse::<f64>()
                .map_err(|e| format!("{text:?} is not a valid number: {e}"))?,
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err("must be a non-negative number of seconds".to_owned());
        }
        Duration::try_from_secs_f64(secs).map_err(|_| format!("{secs} seconds is too long"))
    }
}

impl ToText for Duration {
    fn to_text(&self) -> String {
        self.as_secs_f64().to_string()
    }
}

/// Text, trimmed; set options with an empty default use `Option<String>`.
impl Value for String {
    fn from_text(text: &str) -> Result<String, String> {
        Ok(text.trim().to_owned())
    }
}

impl ToText for String {
    fn to_text(&self) -> String {
        self.clone()
    }
}

impl ToText for &str {
    fn to_text(&self) -> String {
        (*self).to_owned()
    }
}

impl Value for PathBuf {
    fn from_text(text: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(text.trim()))
    }
}

impl Value for IpAddr {
    fn from_text(text: &str) -> Result<IpAddr, String> {
        let text = text.trim();
        text.parse()
            .map_err(|_| format!("{text:?} is not an IP address"))
    }
}

/// A comma list, also in the forms EG's configs and Helm chart write (`[a, 'b', "c"]`).
impl Value for Vec<String> {
    const EMPTY_IS_DEFAULT: bool = false;
    fn from_text(text: &str) -> Result<Vec<String>, String> {
        let trimmed = text.trim().trim_start_matches('[').trim_end_matches(']');
        Ok(trimmed
            .split(',')
            .map(|s| s.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
            .filter(|s| !s.is_empty())
            .collect())
    }
}

impl ToText for Vec<String> {
    fn to_text(&self) -> String {
        self.join(",")
    }
}

/// Unset when empty; otherwise the inner conversion.
impl<T: Value> Value for Option<T> {
    const EMPTY_IS_DEFAULT: bool = false;
    fn from_text(text: &str) -> Result<Option<T>, String> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        T::from_text(text).map(Some)
    }
}

impl<T: ToText> ToText for Option<T> {
    fn to_text(&self) -> String {
        self.as_ref().map(ToText::to_text).unwrap_or_default()
    }
}

impl Value for kernel_launcher::PortRange {
    fn from_text(text: &str) -> Result<kernel_launcher::PortRange, String> {
        kernel_launcher::PortRange::parse(text).map_err(|e| e.to_string())
    }
}

impl ToText for kernel_launcher::PortRange {
    fn to_text(&self) -> String {
        self.to_string()
    }
}

/// Types whose own `FromStr` says what is wrong.
macro_rules! from_str_values {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn from_text(text: &str) -> Result<$t, String> {
                text.parse::<$t>().map_err(|e| e.to_string())
            }
        }
    )*};
}
from_str_values!(
    resource_managers::ssh::LoadBalancing,
    gateway_http::auth::mtls::UserField
);

/// `--log_level`: EG's level names and numbers or a tracing filter, checked when read
/// ([`crate::settings::log_filter`] says what is accepted).
#[derive(Debug, Clone)]
pub(crate) struct LogLevel(String);

impl LogLevel {
    /// The filter the text names (checked when the option was read).
    pub(crate) fn filter(&self) -> anyhow::Result<tracing_subscriber::EnvFilter> {
        crate::settings::log_filter(&self.0)
    }
}

impl Value for LogLevel {
    const EMPTY_IS_DEFAULT: bool = false;
    fn from_text(text: &str) -> Result<LogLevel, String> {
        // The error already names the option.
        crate::settings::log_filter(text).map_err(|e| {
            let text = e.to_string();
            text.strip_prefix("--log_level: ")
                .unwrap_or(&text)
                .to_owned()
        })?;
        Ok(LogLevel(text.to_owned()))
    }
}

/// `--log_format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// For people; coloured on a terminal.
    Text,
    /// One JSON object per line, event fields at the top level.
    Json,
}

impl Value for LogFormat {
    const EMPTY_IS_DEFAULT: bool = false;
    fn from_text(text: &str) -> Result<LogFormat, String> {
        match text.trim() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is neither text nor json")),
        }
    }
}

/// The default slot of a [`declare_options!`] line: a string literal, or `{ expr }` whose value
/// ([`ToText`]) is the default.
macro_rules! option_default {
    ($text:literal) => {
        $crate::optdef::DefaultValue::Text($text)
    };
    ({ $($expr:tt)* }) => {
        $crate::optdef::DefaultValue::Library(|| $crate::optdef::ToText::to_text(&{ $($expr)* }))
    };
}
pub(crate) use option_default;

/// Declares every option, one line each:
///
/// ```text
/// name: Type = default, "PLACEHOLDER", ["ENV_VAR", ...], classes, "help" [, aliases ["old"]];
/// ```
///
/// and generates `OPTIONS` (the table, in `--help` order), the module `def` (each option's
/// [`OptionDef`] by name) and `Values` (each option's typed value, read by [`Values::read`]).
macro_rules! declare_options {
    ($(
        $name:ident : $ty:ty = $default:tt, $value:literal, [$($env:literal),* $(,)?], $classes:expr,
        $help:literal $(, aliases [$($alias:literal),* $(,)?])? ;
    )*) => {
        /// Each option's definition, by its name.
        #[allow(non_upper_case_globals)]
        pub(crate) mod def {
            use super::*;
            $(
                pub(crate) const $name: $crate::optdef::OptionDef = $crate::optdef::OptionDef {
                    name: stringify!($name),
                    value: $value,
                    default: $crate::optdef::option_default!($default),
                    env: &[$($env),*],
                    classes: $classes,
                    aliases: &[$($($alias),*)?],
                    help: $help,
                };
            )*
        }

        /// Every option the gateway understands, in `--help` order.
        pub(crate) const OPTIONS: &[$crate::optdef::OptionDef] = &[$(def::$name),*];

        /// Every option's value, converted once; a field per option, of the option's type.
        pub(crate) struct Values {
            $(
                #[doc = $help]
                pub(crate) $name: $ty,
            )*
        }

        impl Values {
            /// Converts every option of `raw`; the first invalid one is the error, naming it.
            pub(crate) fn read(raw: &$crate::options::RawOptions) -> anyhow::Result<Values> {
                Ok(Values {
                    $($name: $crate::optdef::read::<$ty>(&def::$name, raw)?,)*
                })
            }
        }
    };
}
pub(crate) use declare_options;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_say_what_is_wrong() {
        assert_eq!(bool::from_text(" Yes "), Ok(true));
        assert_eq!(bool::from_text(""), Ok(false));
        assert!(
            bool::from_text("maybe")
                .unwrap_err()
                .contains("not a boolean")
        );
        assert_eq!(u16::from_text(" 80 "), Ok(80));
        assert!(
            u16::from_text("99999")
                .unwrap_err()
                .contains("not a valid number")
        );
        assert_eq!(Duration::from_text("1.5"), Ok(Duration::from_millis(1500)));
        assert!(
            Duration::from_text("-1")
                .unwrap_err()
                .contains("non-negative")
        );
        assert_eq!(
            Vec::<String>::from_text(r#"["a", 'b' ,c]"#),
            Ok(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()])
        );
        assert_eq!(Option::<u16>::from_text(" "), Ok(None));
        assert!(
            IpAddr::from_text("nowhere")
                .unwrap_err()
                .contains("not an IP")
        );
        assert_eq!(Duration::from_secs(30).to_text(), "30");
        assert_eq!(Duration::from_millis(500).to_text(), "0.5");
        assert_eq!(Option::<usize>::None.to_text(), "");
    }
}
