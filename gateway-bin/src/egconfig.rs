//! Enterprise Gateway's Python config file (`jupyter_enterprise_gateway_config.py`), read
//! without running Python.
//!
//! traitlets config files are programs, but the ones operators write are almost always a list
//! of `c.<Class>.<trait> = <literal>` assignments. Exactly that subset is read here: comments,
//! blank lines, `c = get_config()`, and assignments whose right-hand side is a Python literal
//! (strings, numbers, `True`/`False`/`None`, and lists, tuples, sets and dicts of those, across
//! lines while brackets are open). Anything else — an import, a call, a variable, an `if` — is
//! refused with its line number, because guessing what a program means is worse than saying
//! what to convert. The result has the shape of EG's JSON config
//! (`{"EnterpriseGatewayApp": {"port": 8889}}`), so both go through the same key checks.

use anyhow::Result;
use serde_json::{Map, Number, Value};

/// What the reader accepts, said once for every refusal.
const ACCEPTED: &str = "only comments, `c = get_config()` and `c.<Class>.<trait> = <literal>` \
    assignments (strings, numbers, True/False/None, lists, tuples, sets, dicts) can be read";

/// Parses the text of a traitlets Python config into `{class: {trait: value}}`.
pub(crate) fn parse(text: &str) -> Result<Map<String, Value>> {
    let mut out: Map<String, Value> = Map::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut index = 0;
    while index < lines.len() {
        let first_line = index + 1;
        let mut statement = lines[index].to_owned();
        index += 1;
        // A statement continues while brackets or a triple-quoted string are open.
        while open_brackets(&statement) && index < lines.len() {
            statement.push('\n');
            statement.push_str(lines[index]);
            index += 1;
        }
        let mut p = Parser {
            text: statement.as_bytes(),
            pos: 0,
            first_line,
        };
        p.skip_blank(false);
        if p.at_end() {
            continue;
        }
        let target = p.target()?;
        p.skip_blank(false);
        match target {
            Target::Config => {
                if !p.eat_str("get_config()") {
                    return Err(p.refuse("`c` may only be assigned `get_config()`"));
                }
            }
            Target::Trait(class, name) => {
                let value = p.value()?;
                out.entry(class)
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .map(|traits| traits.insert(name, value));
            }
        }
        p.skip_blank(false);
        if !p.at_end() {
            return Err(p.refuse("unexpected text after the value"));
        }
    }
    Ok(out)
}

/// True while `text` has an unclosed bracket or triple-quoted string (strings and comments
/// taken into account), so the statement goes on on the next line.
fn open_brackets(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut depth: i32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            quote @ (b'\'' | b'"') => {
                let triple = bytes.get(i..i + 3) == Some(&[quote, quote, quote][..]);
                let close: &[u8] = if triple {
                    &bytes[i..i + 3]
                } else {
                    &bytes[i..=i]
                };
                i += close.len();
                loop {
                    if i >= bytes.len() {
                        return triple;
                    }
                    if bytes[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if !triple && bytes[i] == b'\n' {
                        break;
                    }
                    if bytes[i..].starts_with(close) {
                        i += close.len() - 1;
                        break;
                    }
                    i += 1;
                }
            }
            b'[' | b'(' | b'{' => depth += 1,
            b']' | b')' | b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    depth > 0
}

enum Target {
    /// `c = ...`
    Config,
    /// `c.<Class>.<trait> = ...`
    Trait(String, String),
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
    first_line: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    /// The line the parser is on, counted in the file.
    fn line(&self) -> usize {
        let upto = &self.text[..self.pos.min(self.text.len())];
        self.first_line + upto.iter().filter(|&&b| b == b'\n').count()
    }

    fn refuse(&self, what: &str) -> anyhow::Error {
        let line = self.line();
        let shown = String::from_utf8_lossy(self.text)
            .lines()
            .nth(line - self.first_line)
            .unwrap_or_default()
            .trim()
            .to_owned();
        anyhow::anyhow!("line {line}: {what}: `{shown}`; {ACCEPTED}")
    }

    /// Skips spaces, and inside brackets newlines and comments too; a comment at the end of a
    /// statement is skipped either way.
    fn skip_blank(&mut self, in_brackets: bool) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b'\n' if in_brackets => self.pos += 1,
                b'#' => {
                    while self.peek().is_some_and(|b| b != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, s: &str) -> bool {
        if self.text[self.pos..].starts_with(s.as_bytes()) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn identifier(&mut self) -> Option<String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.pos += 1;
        }
        let word = &self.text[start..self.pos];
        (!word.is_empty() && !word[0].is_ascii_digit())
            .then(|| String::from_utf8_lossy(word).into_owned())
    }

    /// `c =` or `c.<Class>.<trait> =`.
    fn target(&mut self) -> Result<Target> {
        let not_assignment = "not a `c.<Class>.<trait> = <literal>` assignment";
        if self.identifier().as_deref() != Some("c") {
            return Err(self.refuse(not_assignment));
        }
        let mut path = Vec::new();
        while self.eat(b'.') {
            match self.identifier() {
                Some(part) => path.push(part),
                None => return Err(self.refuse(not_assignment)),
            }
        }
        self.skip_blank(false);
        if !self.eat(b'=') || self.peek() == Some(b'=') {
            return Err(self.refuse(not_assignment));
        }
        match <[String; 2]>::try_from(path) {
            Ok([class, name]) => Ok(Target::Trait(class, name)),
            Err(path) if path.is_empty() => Ok(Target::Config),
            Err(_) => Err(self.refuse(not_assignment)),
        }
    }

    fn value(&mut self) -> Result<Value> {
        self.skip_blank(true);
        let Some(b) = self.peek() else {
            return Err(self.refuse("a value is missing"));
        };
        match b {
            b'\'' | b'"' => self.strings(),
            b'r' | b'R' | b'u' | b'U'
                if matches!(self.text.get(self.pos + 1), Some(b'\'' | b'"')) =>
            {
                self.strings()
            }
            b'[' => {
                self.pos += 1;
                Ok(Value::Array(self.items(b']')?))
            }
            b'(' => {
                self.pos += 1;
                let start = self.pos;
                let items = self.items(b')')?;
                // `(x)` is x; `(x,)` and `(x, y)` are tuples.
                let had_comma = self.text[start..self.pos].contains(&b',');
                match <[Value; 1]>::try_from(items) {
                    Ok([one]) if !had_comma => Ok(one),
                    Ok([one]) => Ok(Value::Array(vec![one])),
                    Err(items) => Ok(Value::Array(items)),
                }
            }
            b'{' => {
                self.pos += 1;
                self.set_or_dict()
            }
            b'-' | b'+' | b'.' | b'0'..=b'9' => self.number(),
            _ => {
                let start = self.pos;
                match self.identifier().as_deref() {
                    Some("True") => Ok(Value::Bool(true)),
                    Some("False") => Ok(Value::Bool(false)),
                    Some("None") => Ok(Value::Null),
                    _ => {
                        self.pos = start;
                        Err(self.refuse("the value is not a literal"))
                    }
                }
            }
        }
    }

    /// Comma-separated values up to `close` (a trailing comma allowed).
    fn items(&mut self, close: u8) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            self.skip_blank(true);
            if self.eat(close) {
                return Ok(items);
            }
            items.push(self.value()?);
            self.skip_blank(true);
            if self.eat(close) {
                return Ok(items);
            }
            if !self.eat(b',') {
                return Err(self.refuse("expected `,` between items"));
            }
        }
    }

    /// `{}` is a dict, `{a, b}` a set (read as a list), `{k: v}` a dict with string keys.
    fn set_or_dict(&mut self) -> Result<Value> {
        self.skip_blank(true);
        if self.eat(b'}') {
            return Ok(Value::Object(Map::new()));
        }
        let first = self.value()?;
        self.skip_blank(true);
        if !self.eat(b':') {
            let mut items = vec![first];
            if self.eat(b',') {
                items.extend(self.items(b'}')?);
            } else if !self.eat(b'}') {
                return Err(self.refuse("expected `,` between items"));
            }
            return Ok(Value::Array(items));
        }
        let mut map = Map::new();
        let mut key = first;
        loop {
            let Value::String(name) = key else {
                return Err(self.refuse("dict keys must be strings"));
            };
            let value = self.value()?;
            map.insert(name, value);
            self.skip_blank(true);
            if self.eat(b'}') {
                return Ok(Value::Object(map));
            }
            if !self.eat(b',') {
                return Err(self.refuse("expected `,` between items"));
            }
            self.skip_blank(true);
            if self.eat(b'}') {
                return Ok(Value::Object(map));
            }
            key = self.value()?;
            self.skip_blank(true);
            if !self.eat(b':') {
                return Err(self.refuse("expected `:` after a dict key"));
            }
        }
    }

    /// One string literal, or several adjacent ones (concatenated, as Python does).
    fn strings(&mut self) -> Result<Value> {
        let mut out = self.string()?;
        loop {
            let save = self.pos;
            self.skip_blank(true);
            let next = self.peek();
            let prefixed = matches!(next, Some(b'r' | b'R' | b'u' | b'U'))
                && matches!(self.text.get(self.pos + 1), Some(b'\'' | b'"'));
            if matches!(next, Some(b'\'' | b'"')) || prefixed {
                out.push_str(&self.string()?);
            } else {
                self.pos = save;
                return Ok(Value::String(out));
            }
        }
    }

    fn string(&mut self) -> Result<String> {
        let mut raw = false;
        match self.peek() {
            Some(b'r' | b'R') => {
                raw = true;
                self.pos += 1;
            }
            Some(b'u' | b'U') => self.pos += 1,
            _ => {}
        }
        let Some(quote) = self.peek() else {
            return Err(self.refuse("a string is missing"));
        };
        let triple = self.text[self.pos..].starts_with(&[quote, quote, quote]);
        self.pos += if triple { 3 } else { 1 };
        let mut bytes = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.refuse("a string is not closed"));
            };
            if triple && self.text[self.pos..].starts_with(&[quote, quote, quote]) {
                self.pos += 3;
                break;
            }
            if !triple && b == quote {
                self.pos += 1;
                break;
            }
            if !triple && b == b'\n' {
                return Err(self.refuse("a string is not closed"));
            }
            self.pos += 1;
            if b != b'\\' || raw {
                bytes.push(b);
                continue;
            }
            let Some(escaped) = self.peek() else {
                return Err(self.refuse("a string is not closed"));
            };
            self.pos += 1;
            match escaped {
                b'n' => bytes.push(b'\n'),
                b't' => bytes.push(b'\t'),
                b'r' => bytes.push(b'\r'),
                b'0' => bytes.push(0),
                b'\\' | b'\'' | b'"' => bytes.push(escaped),
                b'\n' => {}
                _ => {
                    self.pos -= 2;
                    return Err(self.refuse("this string escape is not supported"));
                }
            }
        }
        String::from_utf8(bytes).map_err(|_| self.refuse("a string is not UTF-8"))
    }

    fn number(&mut self) -> Result<Value> {
        let start = self.pos;
        if matches!(self.peek(), Some(b'-' | b'+')) {
            self.pos += 1;
        }
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_'))
            || (matches!(self.peek(), Some(b'-' | b'+'))
                && matches!(self.text.get(self.pos - 1), Some(b'e' | b'E')))
        {
            self.pos += 1;
        }
        let text: String = String::from_utf8_lossy(&self.text[start..self.pos]).replace('_', "");
        if let Ok(n) = text.parse::<i64>() {
            return Ok(Value::Number(n.into()));
        }
        match text.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) if !text.contains(['x', 'X', 'o', 'O', 'b', 'B']) => Ok(Value::Number(n)),
            _ => {
                self.pos = start;
                Err(self.refuse("the value is not a number Python would read the same way"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn literal_assignments_are_read() {
        let text = r#"# Configuration file for jupyter-enterprise-gateway.
c = get_config()  # noqa

c.EnterpriseGatewayApp.port = 9001
c.EnterpriseGatewayApp.ip = '0.0.0.0'
c.EnterpriseGatewayApp.list_kernels = True
c.EnterpriseGatewayApp.max_kernels = None
c.EnterpriseGatewayApp.unauthorized_users = {'root', "bob"}
c.KernelSpecManager.allowed_kernelspecs = [
    'python3',  # the default
    'ir',
]
c.EnterpriseGatewayApp.client_envs = ('A',)
c.MappingKernelManager.cull_idle_timeout = 3_600
c.EnterpriseGatewayApp.socket_timeout = 0.5
c.EnterpriseGatewayApp.base_url = ("/gw"
                                   '/path')
c.EnterpriseGatewayApp.kernel_headers = {"X-A": 'b', 'n': -1,}
"#;
        let config = Value::Object(parse(text).expect("reads"));
        assert_eq!(
            config,
            json!({
                "EnterpriseGatewayApp": {
                    "port": 9001, "ip": "0.0.0.0", "list_kernels": true, "max_kernels": null,
                    "unauthorized_users": ["root", "bob"], "client_envs": ["A"],
                    "socket_timeout": 0.5, "base_url": "/gw/path",
                    "kernel_headers": {"X-A": "b", "n": -1},
                },
                "KernelSpecManager": {"allowed_kernelspecs": ["python3", "ir"]},
                "MappingKernelManager": {"cull_idle_timeout": 3600},
            })
        );
    }

    #[test]
    fn anything_but_literals_is_refused_with_its_line() {
        for (text, line) in [
            ("c = get_config()\nimport os\n", 2),
            (
                "c = get_config()\n\nc.EnterpriseGatewayApp.port = int(os.environ['P'])\n",
                3,
            ),
            ("c.EnterpriseGatewayApp.ip = ADDRESS\n", 1),
            ("c.EnterpriseGatewayApp.x = [1,\n  2,\n  f(3)]\n", 3),
            ("if True:\n    c.EnterpriseGatewayApp.port = 1\n", 1),
            ("c.EnterpriseGatewayApp.port == 1\n", 1),
            ("c.EnterpriseGatewayApp.port = 1 + 2\n", 1),
            ("c = something()\n", 1),
            ("c.Port = 1\n", 1),
            ("c.EnterpriseGatewayApp.ip = 'open\n", 1),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(
                err.starts_with(&format!("line {line}: ")),
                "{text:?}: {err}"
            );
            assert!(err.contains("can be read"), "{err}");
        }
    }

    #[test]
    fn strings_follow_python() {
        let config = parse(
            "c.A.a = 'it\\'s'\nc.A.b = r'C:\\dir'\nc.A.c = \"\"\"x\ny\"\"\"\nc.A.d = '#not a comment'\n",
        )
        .expect("reads");
        assert_eq!(
            Value::Object(config),
            json!({"A": {"a": "it's", "b": "C:\\dir", "c": "x\ny", "d": "#not a comment"}})
        );
    }
}
