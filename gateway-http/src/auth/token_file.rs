//! Per-user tokens kept in a file that holds only their SHA-256 hashes.
//!
//! An operator issues a token per user with `enterprise-gateway token add`; the token is printed
//! once and only its hash is written to the file. [`TokenFile`] loads the file at start-up and
//! answers each request by hashing the token it carries and looking the hash up. Because the key
//! is the hash of a high-entropy secret, a plain hash-map lookup leaks nothing useful through its
//! timing.
//!
//! The token may come as `Authorization: token <t>`, `Authorization: Bearer <t>` or `?token=<t>`.
//! A request without one is not this authenticator's business ([`Outcome::Skip`]); a token that
//! is not in the file is refused as `unknown token`, except one shaped like a JWT (three
//! dot-separated parts), which is left to the JWT authenticator.
//!
//! # The file
//!
//! TOML, or JSON when the file name ends in `.json`. A list of `tokens`, each with:
//!
//! | field     | required | meaning                                                             |
//! |-----------|----------|---------------------------------------------------------------------|
//! | `id`      | yes      | short identifier (letters, digits, `_`, `-`; unique), for `token list` and `token revoke` |
//! | `user`    | yes      | the user the token authenticates (must pass [`validate_user_name`]) |
//! | `groups`  | no       | groups of that user (for `group:<name>` entries and `admin_groups`)  |
//! | `roles`   | no       | `admin`, `impersonate` (see [`Roles`])                              |
//! | `sha256`  | yes      | [`token_hash`] of the token: 64 lower-case hex digits; unique        |
//! | `created` | no       | when it was issued, an RFC 3339 time as a *quoted* string            |
//! | `note`    | no       | free text for the operator (no control characters)                  |
//!
//! ```toml
//! [[tokens]]
//! id = "3f2a9c1e"
//! user = "alice"
//! groups = ["data-science"]
//! roles = []
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! created = "2026-12-03T10:00:00Z"
//! note = "laptop"
//! ```
//!
//! or, in JSON, `{"tokens": [{"id": "3f2a9c1e", "user": "alice", ...}]}`. Unknown fields are
//! errors (a misspelt `roles` must not go unnoticed). An empty file holds no tokens.
//!
//! # Validation and reloading
//!
//! A file is taken whole or not at all: one bad entry fails the load with an error naming the
//! entry (its position and, when usable, its id). At start-up that stops the gateway; later the
//! tokens already loaded stay in force and the error is logged.
//!
//! The file is re-read on [`Authenticator::reload`] (the binary calls it on SIGHUP) and when it
//! changes: a request carrying a token checks the file's modification time, length and inode at
//! most once per [check interval](TokenFile::with_check_interval) (two seconds by default) and
//! reloads when any of them moved. A file that disappears keeps the loaded tokens in force (and
//! is logged); revoke tokens by removing their entries, not the file.
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::{
    Authenticator, Credentials, Identity, Outcome, Rejection, Roles, token_hash, validate_user_name,
};

/// How often, at most, a request looks at the file for changes.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Longest accepted entry id.
pub const MAX_ID_LEN: usize = 64;
/// Longest accepted group name.
pub const MAX_GROUP_LEN: usize = 128;
/// Longest accepted note.
pub const MAX_NOTE_LEN: usize = 1024;

/// What `Identity::method` says for callers authenticated by a token file.
pub const METHOD: &str = "token-file";

/// One token as the file stores it (the token itself never is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Short unique identifier, for listing and revoking.
    pub id: String,
    /// The user the token authenticates.
    pub user: String,
    /// The user's groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Role names (`admin`, `impersonate`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// [`token_hash`] of the token.
    pub sha256: String,
    /// When the token was issued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Free text for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The whole file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// How a token file is written, chosen by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// TOML (any name not ending in `.json`).
    Toml,
    /// JSON (`*.json`, case-insensitive).
    Json,
}

impl FileFormat {
    /// The format of the file at `path`.
    pub fn of(path: &Path) -> FileFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => FileFormat::Json,
            _ => FileFormat::Toml,
        }
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileFormat::Toml => "TOML",
            FileFormat::Json => "JSON",
        })
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read (missing, permissions, ...).
    #[error("cannot read the token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML or JSON of the expected shape.
    #[error("the token file {} is not valid {format}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The format it was read as.
        format: FileFormat,
        /// The parser's message (positions included, never a token: the file holds none).
        message: String,
    },
    /// An entry breaks a rule.
    #[error("the token file {}: {entry}: {message}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// Which entry: `entry 3 (id "3f2a9c1e")`.
        entry: String,
        /// What is wrong with it.
        message: String,
    },
    /// The entries cannot be written out in the file's format.
    #[error("cannot write the token file {} as {format}: {message}", path.display())]
    Render {
        /// The file.
        path: PathBuf,
        /// The format.
        format: FileFormat,
        /// The serializer's message.
        message: String,
    },
}

/// Reads and validates the token file at `path`.
pub fn read_entries(path: &Path) -> Result<Vec<TokenEntry>, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_entries(path, &text)
}

/// Parses and validates the text of a token file; `path` picks the format and names the file in
/// errors.
pub fn parse_entries(path: &Path, text: &str) -> Result<Vec<TokenEntry>, TokenFileError> {
    let format = FileFormat::of(path);
    let document: Document = if text.trim().is_empty() {
        Document::default()
    } else {
        let parsed = match format {
            FileFormat::Toml => toml::from_str(text).map_err(|e| e.to_string()),
            FileFormat::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        };
        parsed.map_err(|message| TokenFileError::Syntax {
            path: path.to_owned(),
            format,
            message: message.trim_end().to_owned(),
        })?
    };
    validate_entries(&document.tokens).map_err(|(index, message)| TokenFileError::Entry {
        path: path.to_owned(),
        entry: describe_entry(&document.tokens, index),
        message,
    })?;
    Ok(document.tokens)
}

/// The text of a token file holding `entries`, in the format `path` names.
pub fn render_entries(path: &Path, entries: &[TokenEntry]) -> Result<String, TokenFileError> {
    let format = FileFormat::of(path);
    let document = Document {
        tokens: entries.to_vec(),
    };
    let rendered = match format {
        FileFormat::Toml => toml::to_string(&document)
            .map(|body| {
                format!(
                    "# Per-user gateway tokens, stored as SHA-256 hashes only.\n\
                     # Managed by `enterprise-gateway token add|list|revoke`.\n\n{body}"
                )
            })
            .map_err(|e| e.to_string()),
        FileFormat::Json => serde_json::to_string_pretty(&document)
            .map(|body| body + "\n")
            .map_err(|e| e.to_string()),
    };
    rendered.map_err(|message| TokenFileError::Render {
        path: path.to_owned(),
        format,
        message,
    })
}

/// `entry 3 (id "3f2a9c1e")`, or `entry 3` when the id is itself unusable.
fn describe_entry(entries: &[TokenEntry], index: usize) -> String {
    let position = index + 1;
    match entries.get(index) {
        Some(entry) if validate_id(&entry.id).is_ok() => {
            format!("entry {position} (id {:?})", entry.id)
        }
        _ => format!("entry {position}"),
    }
}

/// Checks every rule of the format; on failure, the index of the first bad entry and why.
pub fn validate_entries(entries: &[TokenEntry]) -> Result<(), (usize, String)> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut hashes: HashMap<&str, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        validate_entry(entry).map_err(|message| (index, message))?;
        if let Some(first) = ids.insert(&entry.id, index) {
            return Err((
                index,
                format!("the id is already used by entry {}", first + 1),
            ));
        }
        if let Some(first) = hashes.insert(&entry.sha256, index) {
            return Err((
                index,
                format!("the same token hash is already in entry {}", first + 1),
            ));
        }
    }
    Ok(())
}

fn validate_entry(entry: &TokenEntry) -> Result<(), String> {
    validate_id(&entry.id).map_err(|e| format!("id: {e}"))?;
    validate_user_name(&entry.user).map_err(|e| format!("user {:?}: {e}", entry.user))?;
    for group in &entry.groups {
        validate_group(group).map_err(|e| format!("group {group:?}: {e}"))?;
    }
    Roles::parse(&entry.roles).map_err(|e| format!("roles: {e}"))?;
    if !is_sha256_hex(&entry.sha256) {
        return Err("sha256 must be 64 lower-case hex digits (the hash of the token)".to_owned());
    }
    if let Some(created) = &entry.created {
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("created {created:?} is not an RFC 3339 time: {e}"))?;
    }
    if let Some(note) = &entry.note {
        validate_note(note).map_err(|e| format!("note: {e}"))?;
    }
    Ok(())
}

/// The id rule: 1 to [`MAX_ID_LEN`] letters, digits, `_` or `-`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("it is empty".to_owned());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("it is longer than {MAX_ID_LEN} characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return Err("only letters, digits, '_' and '-' are allowed".to_owned());
    }
    Ok(())
}

/// The group rule: 1 to [`MAX_GROUP_LEN`] characters, no control characters, no commas (lists
/// of groups are comma-separated on command lines), no surrounding spaces.
pub fn validate_group(group: &str) -> Result<(), String> {
    if group.is_empty() {
        return Err("it is empty".to_owned());
    }
    if group.len() > MAX_GROUP_LEN {
        return Err(format!("it is longer than {MAX_GROUP_LEN} characters"));
    }
    if group.chars().any(|c| c.is_control() || c == ',') {
        return Err("control characters and ',' are not allowed".to_owned());
    }
    if group.trim() != group {
        return Err("it starts or ends with white space".to_owned());
    }
    Ok(())
}

/// The note rule: at most [`MAX_NOTE_LEN`] characters, no control characters (notes are
/// printed on terminals).
pub fn validate_note(note: &str) -> Result<(), String> {
    if note.len() > MAX_NOTE_LEN {
        return Err(format!("it is longer than {MAX_NOTE_LEN} characters"));
    }
    if note.chars().any(char::is_control) {
        return Err("control characters are not allowed".to_owned());
    }
    Ok(())
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a new token is for.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// Who requests with this token are authenticated as (their `KERNEL_USERNAME`).
    pub user: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// Role names (`admin`, `impersonate`).
    pub roles: Vec<String>,
    /// Free text for the operator.
    pub note: Option<String>,
}

/// A freshly issued token: the secret (to hand to the user, once) and the entry to store.
pub struct Issued {
    /// The token: 32 random bytes from the operating system, as 64 hex digits.
    pub token: String,
    /// The entry for the file, its id unique among the entries it was issued against.
    pub entry: TokenEntry,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// Issues a token for `request`: validates it as an entry would be validated on load, draws the
/// token and an id not used by `existing`, and stamps the current time.
pub fn issue(request: NewToken, existing: &[TokenEntry]) -> Result<Issued, String> {
    let mut secret = [0u8; 32];
    fill_random(&mut secret)?;
    let token = hex::encode(secret);
    let id = loop {
        let mut raw = [0u8; 4];
        fill_random(&mut raw)?;
        let id = hex::encode(raw);
        if !existing.iter().any(|e| e.id == id) {
            break id;
        }
    };
    let created = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    let entry = TokenEntry {
        id,
        user: request.user,
        groups: request.groups,
        roles: request.roles,
        sha256: token_hash(&token),
        created,
        note: request.note.filter(|n| !n.is_empty()),
    };
    validate_entry(&entry)?;
    Ok(Issued { token, entry })
}

fn fill_random(buffer: &mut [u8]) -> Result<(), String> {
    use rand::TryRngCore as _;
    rand::rngs::OsRng
        .try_fill_bytes(buffer)
        .map_err(|e| format!("the operating system's random source failed: {e}"))
}

/// The loaded tokens, keyed by hash.
#[derive(Debug, Default)]
struct Table {
    by_hash: HashMap<String, Identity>,
}

impl Table {
    fn from_entries(entries: Vec<TokenEntry>) -> Table {
        let mut by_hash = HashMap::with_capacity(entries.len());
        for entry in entries {
            // Validated before: roles parse and hashes are unique.
            let roles = Roles::parse(&entry.roles).unwrap_or_default();
            if let Entry::Vacant(slot) = by_hash.entry(entry.sha256) {
                slot.insert(Identity {
                    user: entry.user,
                    groups: entry.groups,
                    roles,
                    method: METHOD,
                });
            }
        }
        Table { by_hash }
    }
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    modified_s: i64,
    modified_ns: i64,
}

impl Stamp {
    fn of(path: &Path) -> io::Result<Stamp> {
        let meta = std::fs::metadata(path)?;
        Ok(Stamp {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified_s: meta.mtime(),
            modified_ns: meta.mtime_nsec(),
        })
    }
}

/// The change watch; its lock also serialises loads, so an older read never replaces a newer.
#[derive(Debug)]
struct Watch {
    /// The version last loaded or last tried (`None`: the file could not be looked at).
    stamp: Option<Stamp>,
    next_check: Instant,
}

/// The token-file authenticator.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    watch: Mutex<Watch>,
    check_interval: Duration,
}

impl TokenFile {
    /// Loads the file at `path`; any problem with it is an error.
    pub fn open(path: impl Into<PathBuf>) -> Result<TokenFile, TokenFileError> {
        let file = TokenFile {
            path: path.into(),
            table: RwLock::new(Arc::default()),
            watch: Mutex::new(Watch {
                stamp: None,
                next_check: Instant::now() + DEFAULT_CHECK_INTERVAL,
            }),
            check_interval: DEFAULT_CHECK_INTERVAL,
        };
        let count = file.load(&mut file.watch.lock())?;
        tracing::info!(path = %file.path.display(), tokens = count, "token file loaded");
        Ok(file)
    }

    /// Looks for changes at most once per `interval` (zero: on every request carrying a token).
    pub fn with_check_interval(mut self, interval: Duration) -> TokenFile {
        self.check_interval = interval;
        let now = Instant::now();
        self.watch.get_mut().next_check = now + interval;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many tokens are in force.
    pub fn len(&self) -> usize {
        self.current().by_hash.len()
    }

    /// Whether no token is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<Table> {
        Arc::clone(&self.table.read())
    }

    /// Reads the file and puts its tokens in force; on failure the old ones stay. The stamp is
    /// taken before reading, so a change during the read is noticed by the next check.
    fn load(&self, watch: &mut Watch) -> Result<usize, TokenFileError> {
        let stamp = Stamp::of(&self.path).map_err(|source| TokenFileError::Read {
            path: self.path.clone(),
            source,
        });
        watch.stamp = stamp.as_ref().ok().copied();
        stamp?;
        warn_if_writable_by_others(&self.path);
        let table = Table::from_entries(read_entries(&self.path)?);
        let count = table.by_hash.len();
        *self.table.write() = Arc::new(table);
        Ok(count)
    }

    /// Reloads when the file changed since it was last looked at, at most once per interval;
    /// never waits for a load another request is doing.
    fn reload_if_changed(&self) {
        let Some(mut watch) = self.watch.try_lock() else {
            return;
        };
        let now = Instant::now();
        if now < watch.next_check {
            return;
        }
        watch.next_check = now + self.check_interval;
        let stamp = Stamp::of(&self.path);
        if stamp.as_ref().ok() == watch.stamp.as_ref() {
            return;
        }
        match stamp {
            Err(e) => {
                watch.stamp = None;
                tracing::warn!(
                    path = %self.path.display(),
                    "the token file cannot be looked at ({e}); the tokens loaded before stay in force"
                );
            }
            Ok(_) => match self.load(&mut watch) {
                Ok(count) => tracing::info!(
                    path = %self.path.display(),
                    tokens = count,
                    "token file changed and was reloaded"
                ),
                Err(e) => tracing::warn!(
                    "token file changed but was not reloaded, the tokens loaded before stay in force: {e}"
                ),
            },
        }
    }
}

/// Anyone who may write the file may mint tokens: say so when that is more than its owner.
fn warn_if_writable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o022 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the token file is writable by its group or by others, who can add tokens for any user; `chmod 600` it"
        );
    }
}

#[async_trait::async_trait]
impl Authenticator for TokenFile {
    fn name(&self) -> &'static str {
        METHOD
    }

    async fn authenticate(&self, credentials: &Credentials<'_>) -> Outcome {
        let Some(given) = credentials.any_token() else {
            return Outcome::Skip;
        };
        self.reload_if_changed();
        match self.current().by_hash.get(&token_hash(given)) {
            Some(identity) => Outcome::Accept(identity.clone()),
            // A JWT (three dot-separated parts) that is not in the file belongs to the JWT
            // authenticator, whose rejection says more than ours would.
            None if given.split('.').count() == 3 => Outcome::Skip,
            None => Outcome::Reject(Rejection::new("unknown token")),
        }
    }

    fn reload(&self) -> Result<(), String> {
        let mut watch = self.watch.lock();
        watch.next_check = Instant::now() + self.check_interval;
        let count = self.load(&mut watch).map_err(|e| e.to_string())?;
        tracing::info!(path = %self.path.display(), tokens = count, "token file reloaded");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use http::HeaderMap;

    use super::*;

    const ALICE_TOKEN: &str = "alice-secret-token";

    fn entry(id: &str, user: &str, token: &str) -> TokenEntry {
        TokenEntry {
            id: id.to_owned(),
            user: user.to_owned(),
            groups: Vec::new(),
            roles: Vec::new(),
            sha256: token_hash(token),
            created: None,
            note: None,
        }
    }

    fn write(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, path));
        assert!(written.is_ok(), "writing {}: {written:?}", path.display());
    }

    async fn ask(file: &TokenFile, token: Option<&str>) -> Outcome {
        let headers = HeaderMap::new();
        file.authenticate(&Credentials {
            headers: &headers,
            query_token: token,
            client_certificate: None,
        })
        .await
    }

    fn accepted_user(outcome: &Outcome) -> Option<&str> {
        match outcome {
            Outcome::Accept(identity) => Some(identity.user.as_str()),
            _ => None,
        }
    }

    fn toml_text() -> String {
        format!(
            r#"
[[tokens]]
id = "a1"
user = "alice"
groups = ["data-science", "ops"]
roles = ["admin"]
sha256 = "{}"
created = "2026-12-03T10:00:00Z"
note = "laptop"

[[tokens]]
id = "b1"
user = "bob@EXAMPLE.COM"
sha256 = "{}"
"#,
            token_hash(ALICE_TOKEN),
            token_hash("bob-token")
        )
    }

    #[test]
    fn toml_and_json_load_the_same_entries() {
        let toml = parse_entries(Path::new("t.toml"), &toml_text());
        let Ok(toml) = toml else {
            panic!("TOML did not load: {toml:?}");
        };
        assert_eq!(toml.len(), 2);
        assert_eq!(toml[0].groups, ["data-science", "ops"]);
        assert_eq!(toml[0].note.as_deref(), Some("laptop"));
        assert_eq!(toml[1].roles, Vec::<String>::new());

        let json = render_entries(Path::new("t.json"), &toml).map(|text| {
            assert!(text.trim_start().starts_with('{'), "{text}");
            parse_entries(Path::new("T.JSON"), &text)
        });
        assert!(
            matches!(&json, Ok(Ok(entries)) if *entries == toml),
            "{json:?}"
        );

        let again = render_entries(Path::new("t.toml"), &toml)
            .map(|text| parse_entries(Path::new("t.toml"), &text));
        assert!(
            matches!(&again, Ok(Ok(entries)) if *entries == toml),
            "{again:?}"
        );

        for empty in ["", "  \n", "# nothing yet\n"] {
            let loaded = parse_entries(Path::new("t.toml"), empty);
            assert!(
                loaded.as_ref().is_ok_and(Vec::is_empty),
                "{empty:?}: {loaded:?}"
            );
        }
        assert!(parse_entries(Path::new("t.json"), "").is_ok_and(|e| e.is_empty()));
    }

    #[test]
    fn a_bad_entry_fails_the_load_naming_it() {
        let good = entry("a1", "alice", "t1");
        let cases: Vec<(TokenEntry, &str)> = vec![
            (
                TokenEntry {
                    user: "a;rm -rf /".into(),
                    ..good.clone()
                },
                "user",
            ),
            (
                TokenEntry {
                    user: String::new(),
                    ..good.clone()
                },
                "user",
            ),
            (
                TokenEntry {
                    roles: vec!["root".into()],
                    ..good.clone()
                },
                "unknown role \"root\"",
            ),
            (
                TokenEntry {
                    sha256: "ABC".into(),
                    ..good.clone()
                },
                "sha256",
            ),
            (
                TokenEntry {
                    sha256: good.sha256.to_uppercase(),
                    ..good.clone()
                },
                "sha256",
            ),
            (
                TokenEntry {
                    groups: vec!["a,b".into()],
                    ..good.clone()
                },
                "group",
            ),
            (
                TokenEntry {
                    groups: vec![String::new()],
                    ..good.clone()
                },
                "group",
            ),
            (
                TokenEntry {
                    note: Some("x\u{1b}[2J".into()),
                    ..good.clone()
                },
                "note",
            ),
            (
                TokenEntry {
                    created: Some("yesterday".into()),
                    ..good.clone()
                },
                "created",
            ),
        ];
        for (bad, needle) in cases {
            let entries = [entry("z0", "zed", "t0"), bad];
            let text = render_entries(Path::new("t.toml"), &entries).unwrap_or_default();
            let err = parse_entries(Path::new("t.toml"), &text).map(|_| ()).err();
            let message = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                message.contains("entry 2 (id \"a1\")") && message.contains(needle),
                "{needle}: {message}"
            );
        }

        let bad_id = [TokenEntry {
            id: "a b".into(),
            ..good.clone()
        }];
        let text = render_entries(Path::new("t.json"), &bad_id).unwrap_or_default();
        let message = parse_entries(Path::new("t.json"), &text)
            .err()
            .map(|e| e.to_string());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("entry 1: id:")),
            "{message:?}"
        );

        let twice = [
            good.clone(),
            TokenEntry {
                sha256: token_hash("t2"),
                ..good.clone()
            },
        ];
        assert_eq!(validate_entries(&twice).map_err(|(i, _)| i), Err(1));
        let same_hash = [
            good.clone(),
            TokenEntry {
                id: "a2".into(),
                ..good.clone()
            },
        ];
        assert!(validate_entries(&same_hash).is_err_and(|(i, m)| i == 1 && m.contains("hash")));

        let unknown_field =
            "[[tokens]]\nid = \"a\"\nuser = \"alice\"\nsha256 = \"00\"\nrole = [\"admin\"]\n";
        let err = parse_entries(Path::new("t.toml"), unknown_field).err();
        assert!(
            matches!(err, Some(TokenFileError::Syntax { .. })),
            "{err:?}"
        );
        let err = parse_entries(Path::new("t.json"), "{\"tokens\": 3}").err();
        assert!(
            matches!(
                err,
                Some(TokenFileError::Syntax {
                    format: FileFormat::Json,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn lookup_accepts_known_tokens_only() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else {
            panic!("no temp dir")
        };
        let path = dir.path().join("tokens.toml");
        write(&path, &toml_text());
        let file = TokenFile::open(&path);
        let Ok(file) = file else { panic!("{file:?}") };
        assert_eq!(file.len(), 2);

        let alice = ask(&file, Some(ALICE_TOKEN)).await;
        let Outcome::Accept(identity) = alice else {
            panic!("{alice:?}")
        };
        assert_eq!(identity.user, "alice");
        assert_eq!(identity.groups, ["data-science", "ops"]);
        assert_eq!(
            identity.roles,
            Roles {
                admin: true,
                impersonate: false
            }
        );
        assert_eq!(identity.method, "token-file");

        assert_eq!(
            accepted_user(&ask(&file, Some("bob-token")).await),
            Some("bob@EXAMPLE.COM")
        );
        assert_eq!(
            ask(&file, Some("guess")).await,
            Outcome::Reject(Rejection::new("unknown token"))
        );
        // The hash itself is not a token.
        assert!(matches!(
            ask(&file, Some(&token_hash(ALICE_TOKEN))).await,
            Outcome::Reject(_)
        ));
        assert_eq!(ask(&file, None).await, Outcome::Skip);
        assert_eq!(ask(&file, Some("eyJh.eyJz.c2ln")).await, Outcome::Skip);

        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer bob-token"),
        );
        let bearer = file
            .authenticate(&Credentials {
                headers: &headers,
                query_token: None,
                client_certificate: None,
            })
            .await;
        assert_eq!(accepted_user(&bearer), Some("bob@EXAMPLE.COM"));
    }

    #[test]
    fn opening_a_missing_or_bad_file_fails() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else {
            panic!("no temp dir")
        };
        let missing = TokenFile::open(dir.path().join("none.toml")).err();
        assert!(
            matches!(missing, Some(TokenFileError::Read { .. })),
            "{missing:?}"
        );
        let path = dir.path().join("bad.json");
        write(
            &path,
            "{\"tokens\": [{\"id\": \"x\", \"user\": \"-x\", \"sha256\": \"\"}]}",
        );
        let bad = TokenFile::open(&path).err().map(|e| e.to_string());
        assert!(
            bad.as_deref()
                .is_some_and(|m| m.contains("entry 1 (id \"x\")")),
            "{bad:?}"
        );
    }

    #[tokio::test]
    async fn changes_are_noticed_and_bad_versions_keep_the_old_tokens() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else {
            panic!("no temp dir")
        };
        let path = dir.path().join("tokens.json");
        let one = [entry("a1", "alice", "ta")];
        write(&path, &render_entries(&path, &one).unwrap_or_default());
        let file = TokenFile::open(&path).map(|f| f.with_check_interval(Duration::ZERO));
        let Ok(file) = file else { panic!("{file:?}") };
        assert_eq!(accepted_user(&ask(&file, Some("ta")).await), Some("alice"));

        // A new version: alice revoked, bob added. Noticed without a reload call.
        let two = [entry("b1", "bob", "tb")];
        write(&path, &render_entries(&path, &two).unwrap_or_default());
        assert_eq!(accepted_user(&ask(&file, Some("tb")).await), Some("bob"));
        assert!(matches!(ask(&file, Some("ta")).await, Outcome::Reject(_)));

        // A broken version: bob stays in force, and the explicit reload reports the error.
        write(
            &path,
            "{\"tokens\": [{\"id\": \"c\", \"user\": \"carol\"}]}",
        );
        assert_eq!(accepted_user(&ask(&file, Some("tb")).await), Some("bob"));
        let err = file.reload();
        assert!(
            err.as_ref().is_err_and(|e| e.contains("not valid JSON")),
            "{err:?}"
        );
        assert_eq!(accepted_user(&ask(&file, Some("tb")).await), Some("bob"));

        // The file disappears: the tokens stay; it comes back fixed: it is loaded.
        let removed = std::fs::remove_file(&path);
        assert!(removed.is_ok());
        assert_eq!(accepted_user(&ask(&file, Some("tb")).await), Some("bob"));
        let three = [entry("c1", "carol", "tc")];
        write(&path, &render_entries(&path, &three).unwrap_or_default());
        assert_eq!(accepted_user(&ask(&file, Some("tc")).await), Some("carol"));
        assert_eq!(file.len(), 1);

        // With a long interval a change waits for the next check; an explicit reload takes it
        // at once.
        let slow = TokenFile::open(&path).map(|f| f.with_check_interval(Duration::from_secs(3600)));
        let Ok(slow) = slow else { panic!("{slow:?}") };
        write(&path, &render_entries(&path, &one).unwrap_or_default());
        assert!(matches!(ask(&slow, Some("ta")).await, Outcome::Reject(_)));
        assert_eq!(slow.reload(), Ok(()));
        assert_eq!(accepted_user(&ask(&slow, Some("ta")).await), Some("alice"));
    }

    #[test]
    fn issued_tokens_are_random_hex_and_stored_as_hashes() {
        let request = NewToken {
            user: "alice".into(),
            groups: vec!["g".into()],
            roles: vec!["impersonate".into()],
            note: Some(String::new()),
        };
        let first = issue(request.clone(), &[]);
        let Ok(first) = first else {
            panic!("{first:?}")
        };
        assert_eq!(first.token.len(), 64);
        assert!(first.token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(first.entry.sha256, token_hash(&first.token));
        assert_ne!(first.entry.sha256, first.token);
        assert_eq!(first.entry.note, None);
        assert!(
            first
                .entry
                .created
                .as_deref()
                .is_some_and(|c| c.ends_with('Z')),
            "{:?}",
            first.entry.created
        );
        assert!(!format!("{first:?}").contains(&first.token));
        let second = issue(request, std::slice::from_ref(&first.entry));
        let Ok(second) = second else {
            panic!("{second:?}")
        };
        assert_ne!(first.token, second.token);
        assert_ne!(first.entry.id, second.entry.id);
        assert!(validate_entries(&[first.entry, second.entry]).is_ok());

        let hostile = issue(
            NewToken {
                user: "$(id)".into(),
                ..NewToken::default()
            },
            &[],
        );
        assert!(hostile.is_err_and(|e| e.contains("user")));
        let bad_role = issue(
            NewToken {
                user: "bob".into(),
                roles: vec!["root".into()],
                ..NewToken::default()
            },
            &[],
        );
        assert!(bad_role.is_err_and(|e| e.contains("root")));
    }
}
