//! `enterprise-gateway token add|list|revoke`: manages the per-user token file that the
//! `token_file` authenticator reads (format: `gateway_http::auth::token_file`).
//!
//! `add` prints the new token on stdout and nothing else, so `TOKEN=$(enterprise-gateway token
//! add ...)` works; everything said to the operator goes to stderr. Changes are written as a new
//! file beside the old one (owner-only, flushed to disk) and renamed over it, under an exclusive
//! lock on the directory so two concurrent changes do not lose each other. A running gateway
//! notices the new file by itself within a few seconds, or at once on SIGHUP.
//!
//! Exit codes: 0 done, 64 (EX_USAGE) for anything the operator has to fix (arguments, names,
//! roles, an unknown id, a missing or invalid file), 1 when the system failed (I/O).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use gateway_http::auth::token_file::{self, NewToken, TokenEntry, TokenFileError};

use crate::options::EnvSource;

/// The environment variable `--file` defaults to (the gateway's `token_file` option).
const FILE_ENV: &str = "EG_TOKEN_FILE";

/// Mode of a token file this command creates.
const NEW_FILE_MODE: u32 = 0o600;

/// Why the command failed, deciding the exit code.
#[derive(Debug)]
enum Failure {
    /// The operator's input or file is wrong (exit 64).
    Usage(String),
    /// The system failed (exit 1).
    System(anyhow::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::System(e.into())
    }
}

/// Runs the sub-command; `args` starts with the sub-command's name (`token`).
pub(crate) fn main(args: impl IntoIterator<Item = OsString>, env: &dyn EnvSource) -> ExitCode {
    let matches = match command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(crate::EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&matches, env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("enterprise-gateway token: {message}");
            ExitCode::from(crate::EX_USAGE)
        }
        Err(Failure::System(error)) => {
            eprintln!("enterprise-gateway token: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn file_arg() -> Arg {
    Arg::new("file")
        .long("file")
        .value_name("PATH")
        .value_parser(clap::value_parser!(PathBuf))
        .help(format!(
            "The token file (TOML, or JSON when it ends in .json) [env: {FILE_ENV}]"
        ))
}

fn command() -> Command {
    Command::new("token")
        .bin_name("enterprise-gateway token")
        .about("Manage the per-user token file read by the token_file authenticator")
        .after_help(
            "Only SHA-256 hashes of the tokens are stored; `add` prints the token once. \
             A running gateway picks up changes within seconds, or at once on SIGHUP.",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("add")
                .about("Issue a token for a user; prints only the token on stdout")
                .arg(file_arg())
                .arg(
                    Arg::new("user")
                        .long("user")
                        .value_name("NAME")
                        .required(true)
                        .help("The user the token authenticates"),
                )
                .arg(
                    Arg::new("groups")
                        .long("groups")
                        .value_name("LIST")
                        .action(ArgAction::Append)
                        .help("The user's groups, comma-separated (repeatable)"),
                )
                .arg(
                    Arg::new("roles")
                        .long("roles")
                        .value_name("LIST")
                        .action(ArgAction::Append)
                        .help("Roles, comma-separated: admin, impersonate (repeatable)"),
                )
                .arg(
                    Arg::new("note")
                        .long("note")
                        .value_name("TEXT")
                        .help("Free text shown by `token list`"),
                ),
        )
        .subcommand(
            Command::new("list")
                .about("List the tokens (id, user, groups, roles, created, note; never hashes)")
                .arg(file_arg()),
        )
        .subcommand(
            Command::new("revoke")
                .about("Remove tokens by id, or every token of a user")
                .arg(file_arg())
                .arg(
                    Arg::new("id")
                        .value_name("ID")
                        .num_args(1..)
                        .required_unless_present("user")
                        .conflicts_with("user")
                        .help("Ids as shown by `token list`"),
                )
                .arg(
                    Arg::new("user")
                        .long("user")
                        .value_name("NAME")
                        .help("Revoke every token of this user"),
                ),
        )
}

fn run(matches: &ArgMatches, env: &dyn EnvSource) -> Result<(), Failure> {
    let Some((name, sub)) = matches.subcommand() else {
        return Err(Failure::Usage(
            "a sub-command is needed: add, list or revoke".to_owned(),
        ));
    };
    let path = file_of(sub.get_one::<PathBuf>("file"), env)?;
    match name {
        "add" => add(&path, sub),
        "list" => list(&path),
        "revoke" => revoke(&path, sub),
        other => Err(Failure::Usage(format!("unknown sub-command {other:?}"))),
    }
}

/// `--file`, else the environment's `EG_TOKEN_FILE`.
fn file_of(given: Option<&PathBuf>, env: &dyn EnvSource) -> Result<PathBuf, Failure> {
    given
        .cloned()
        .or_else(|| {
            env.var(FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .ok_or_else(|| Failure::Usage(format!("no token file: give --file or set {FILE_ENV}")))
}

/// Every value of a repeatable, comma-separated option, trimmed, empty items dropped.
fn list_values(matches: &ArgMatches, name: &str) -> Vec<String> {
    matches
        .get_many::<String>(name)
        .into_iter()
        .flatten()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn add(path: &Path, matches: &ArgMatches) -> Result<(), Failure> {
    let request = NewToken {
        user: matches
            .get_one::<String>("user")
            .cloned()
            .unwrap_or_default(),
        groups: list_values(matches, "groups"),
        roles: list_values(matches, "roles"),
        note: matches.get_one::<String>("note").cloned(),
    };
    let issued = update(path, true, |entries| {
        let issued = token_file::issue(request, entries).map_err(Failure::Usage)?;
        entries.push(issued.entry.clone());
        Ok(issued)
    })?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", issued.token)?;
    stdout.flush()?;
    eprintln!(
        "added token {} for {} to {} (the token is shown only this once)",
        issued.entry.id,
        issued.entry.user,
        path.display()
    );
    Ok(())
}

fn list(path: &Path) -> Result<(), Failure> {
    let entries = read_existing(path)?;
    let mut stdout = io::stdout().lock();
    stdout.write_all(table(&entries).as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// The listing: a header and one aligned line per token; `-` for an empty cell.
fn table(entries: &[TokenEntry]) -> String {
    let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    let mut rows = vec![["ID", "USER", "GROUPS", "ROLES", "CREATED", "NOTE"].map(str::to_owned)];
    for e in entries {
        rows.push([
            e.id.clone(),
            e.user.clone(),
            dash(e.groups.join(",")),
            dash(e.roles.join(",")),
            dash(e.created.clone().unwrap_or_default()),
            dash(e.note.clone().unwrap_or_default()),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn revoke(path: &Path, matches: &ArgMatches) -> Result<(), Failure> {
    let ids: Vec<String> = matches
        .get_many::<String>("id")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let user = matches.get_one::<String>("user").cloned();
    let removed = update(path, false, |entries| {
        remove(entries, &ids, user.as_deref())
    })?;
    for entry in &removed {
        eprintln!("revoked token {} of {}", entry.id, entry.user);
    }
    if removed.is_empty()
        && let Some(user) = &user
    {
        eprintln!(
            "{user} has no tokens in {}; nothing changed",
            path.display()
        );
    }
    Ok(())
}

/// Takes the entries named by `ids`, or every entry of `user`, out of `entries`. An id that is
/// not there fails the whole revocation (nothing is removed).
fn remove(
    entries: &mut Vec<TokenEntry>,
    ids: &[String],
    user: Option<&str>,
) -> Result<Vec<TokenEntry>, Failure> {
    if let Some(missing) = ids.iter().find(|id| !entries.iter().any(|e| &e.id == *id)) {
        return Err(Failure::Usage(format!(
            "no token with id {missing:?} (see `enterprise-gateway token list`); nothing was revoked"
        )));
    }
    let doomed = |e: &TokenEntry| ids.contains(&e.id) || user.is_some_and(|user| e.user == user);
    let (removed, kept): (Vec<_>, Vec<_>) = entries.drain(..).partition(doomed);
    *entries = kept;
    Ok(removed)
}

/// Reads a token file that must exist.
fn read_existing(path: &Path) -> Result<Vec<TokenEntry>, Failure> {
    token_file::read_entries(path).map_err(|e| match e {
        TokenFileError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            no_file(path)
        }
        TokenFileError::Read { .. } => Failure::System(e.into()),
        invalid => Failure::Usage(format!("{invalid}; fix it before changing it")),
    })
}

fn no_file(path: &Path) -> Failure {
    Failure::Usage(format!("there is no token file at {}", path.display()))
}

/// Read-modify-write of the token file under an exclusive lock on its directory. When `create`
/// is set a missing file counts as empty and is created owner-only. Nothing is written when
/// `change` fails.
fn update<T>(
    path: &Path,
    create: bool,
    change: impl FnOnce(&mut Vec<TokenEntry>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let lock = File::open(&dir)
        .map_err(|e| Failure::Usage(format!("cannot open the directory {}: {e}", dir.display())))?;
    lock.lock()?;
    let existing = match std::fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_file(path)),
        Err(e) => {
            return Err(Failure::System(
                anyhow::Error::new(e).context(format!("cannot look at {}", path.display())),
            ));
        }
    };
    let mut entries = match existing {
        Some(_) => read_existing(path)?,
        None => Vec::new(),
    };
    let result = change(&mut entries)?;
    let text = token_file::render_entries(path, &entries).map_err(|e| Failure::System(e.into()))?;
    write_replacing(path, &dir, text.as_bytes(), existing.as_ref())?;
    Ok(result)
}

/// Writes `bytes` to a new file in `dir` and renames it over `path`: readers see the old file or
/// the new one, never a part. The new file keeps the old one's permissions and, where allowed,
/// its owner; a first file is owner-only.
fn write_replacing(
    path: &Path,
    dir: &Path,
    bytes: &[u8],
    old: Option<&std::fs::Metadata>,
) -> Result<(), Failure> {
    let name = path
        .file_name()
        .ok_or_else(|| Failure::Usage(format!("{} is not a file name", path.display())))?;
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    let mode = old.map_or(NEW_FILE_MODE, |m| m.permissions().mode() & 0o777);
    if mode & 0o022 != 0 {
        eprintln!(
            "warning: {} is writable by its group or by others, who can add tokens for any user; \
             `chmod 600` it",
            path.display()
        );
    }
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(NEW_FILE_MODE)
            .open(&temp)?;
        // The umask may have narrowed the mode; the old file's mode is what the operator chose.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some(old) = old
            && (old.uid() != nix::unistd::geteuid().as_raw()
                || old.gid() != nix::unistd::getegid().as_raw())
            && let Err(e) = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()))
        {
            eprintln!(
                "note: cannot give the new {} the old file's owner ({e}); it now belongs to you",
                path.display()
            );
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // Make the rename itself durable.
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(Failure::System(
            anyhow::Error::new(e).context(format!("cannot write {}", path.display())),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gateway_http::auth::token_hash;

    use super::*;

    fn matches(args: &[&str]) -> Result<ArgMatches, clap::Error> {
        command().try_get_matches_from(std::iter::once("token").chain(args.iter().copied()))
    }

    fn sub(args: &[&str]) -> ArgMatches {
        let parsed = matches(args);
        let Ok(parsed) = parsed else {
            panic!("{args:?}: {parsed:?}")
        };
        let Some((_, sub)) = parsed.subcommand() else {
            panic!("no sub-command")
        };
        sub.clone()
    }

    fn entry(id: &str, user: &str) -> TokenEntry {
        TokenEntry {
            id: id.to_owned(),
            user: user.to_owned(),
            groups: Vec::new(),
            roles: Vec::new(),
            sha256: token_hash(id),
            created: None,
            note: None,
        }
    }

    #[test]
    fn arguments() {
        let add = sub(&[
            "add",
            "--user",
            "alice",
            "--groups",
            "a, b",
            "--groups=c",
            "--roles",
            "admin",
        ]);
        assert_eq!(list_values(&add, "groups"), ["a", "b", "c"]);
        assert_eq!(list_values(&add, "roles"), ["admin"]);
        assert!(list_values(&add, "note").is_empty());
        assert!(matches(&["add"]).is_err(), "--user is required");
        assert!(matches(&["revoke"]).is_err(), "an id or --user is required");
        assert!(matches(&["revoke", "x", "--user", "bob"]).is_err());
        assert!(matches(&["revoke", "x", "y"]).is_ok());
        assert!(matches(&[]).is_err_and(|e| !e.use_stderr()
            || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand));
        assert!(matches(&["--help"]).is_err_and(|e| !e.use_stderr()));
        command().debug_assert();
    }

    #[test]
    fn the_file_comes_from_the_option_or_the_environment() {
        let mut env = BTreeMap::new();
        assert!(matches!(file_of(None, &env), Err(Failure::Usage(_))));
        env.insert(FILE_ENV.to_owned(), "/etc/eg/tokens.toml".to_owned());
        assert!(file_of(None, &env).is_ok_and(|p| p == Path::new("/etc/eg/tokens.toml")));
        let given = PathBuf::from("t.json");
        assert!(file_of(Some(&given), &env).is_ok_and(|p| p == given));
    }

    #[test]
    fn the_listing_is_aligned_and_shows_no_hashes() {
        let mut a = entry("a1", "alice");
        a.groups = vec!["g1".into(), "g2".into()];
        a.note = Some("laptop".into());
        let b = entry("b22222", "bob");
        let text = table(&[a.clone(), b.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("ID      USER   GROUPS  ROLES  CREATED  NOTE"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("a1      alice  g1,g2   -      -        laptop"),
            "{text}"
        );
        assert_eq!(lines[2], "b22222  bob    -       -      -        -");
        assert!(!text.contains(&a.sha256) && !text.contains(&b.sha256));
    }

    #[test]
    fn revocation_by_id_or_user() {
        let all = vec![
            entry("a1", "alice"),
            entry("a2", "alice"),
            entry("b1", "bob"),
        ];
        let mut entries = all.clone();
        let removed = remove(&mut entries, &["a2".into()], None);
        assert!(removed.is_ok_and(|r| r.len() == 1 && r[0].id == "a2"));
        assert_eq!(entries.len(), 2);

        let mut entries = all.clone();
        let removed = remove(&mut entries, &[], Some("alice"));
        assert!(removed.is_ok_and(|r| r.len() == 2));
        assert_eq!(entries, [entry("b1", "bob")]);

        let mut entries = all.clone();
        let unknown = remove(&mut entries, &["b1".into(), "zz".into()], None);
        assert!(matches!(unknown, Err(Failure::Usage(m)) if m.contains("\"zz\"")));
        assert_eq!(entries, all, "nothing is removed when an id is unknown");
    }

    #[test]
    fn updates_write_owner_only_files_with_hashes_only() {
        let dir = tempfile::tempdir();
        let Ok(dir) = dir else { panic!("{dir:?}") };
        let path = dir.path().join("tokens.toml");

        assert!(
            matches!(read_existing(&path), Err(Failure::Usage(m)) if m.contains("no token file"))
        );
        let revoked = update(&path, false, |_| Ok(()));
        assert!(matches!(revoked, Err(Failure::Usage(_))));
        assert!(!path.exists());

        let issued = update(&path, true, |entries| {
            let issued = token_file::issue(
                NewToken {
                    user: "alice".into(),
                    ..NewToken::default()
                },
                entries,
            )
            .map_err(Failure::Usage)?;
            entries.push(issued.entry.clone());
            Ok(issued)
        });
        let Ok(issued) = issued else {
            panic!("{issued:?}")
        };
        let meta = std::fs::metadata(&path);
        assert!(meta.is_ok_and(|m| m.permissions().mode() & 0o777 == 0o600));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            text.contains(&issued.entry.sha256) && !text.contains(&issued.token),
            "{text}"
        );

        // A failing change writes nothing; a hostile user name is a usage error.
        let before = std::fs::read_to_string(&path).unwrap_or_default();
        let hostile = update(&path, true, |entries| {
            token_file::issue(
                NewToken {
                    user: "a b".into(),
                    ..NewToken::default()
                },
                entries,
            )
            .map(|_| ())
            .map_err(Failure::Usage)
        });
        assert!(matches!(hostile, Err(Failure::Usage(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), before);

        // The operator's mode survives a change; no temp file is left behind.
        let chmod = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640));
        assert!(chmod.is_ok());
        let removed = update(&path, false, |entries| remove(entries, &[], Some("alice")));
        assert!(removed.is_ok_and(|r| r.len() == 1));
        let meta = std::fs::metadata(&path);
        assert!(meta.is_ok_and(|m| m.permissions().mode() & 0o777 == 0o640));
        assert!(token_file::read_entries(&path).is_ok_and(|e| e.is_empty()));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names, [OsString::from("tokens.toml")]);

        // A broken file is refused, not overwritten.
        let broken = std::fs::write(&path, "tokens = 3\n");
        assert!(broken.is_ok());
        let refused = update(&path, true, |_| Ok(()));
        assert!(matches!(refused, Err(Failure::Usage(m)) if m.contains("fix it")));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            "tokens = 3\n"
        );
    }
}
