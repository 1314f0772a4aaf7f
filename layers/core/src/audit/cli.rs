//! The logic of the `palisade_audit` command line tool ([`cli_verify`]) and key files.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use super::file_verify::{verify_path_from, VerifyPathError};
use super::key::AuditKey;
use super::record::{hex, Head};

impl AuditKey {
    /// Reads a key file: exactly 32 raw bytes, or 64 hex digits (either case), optionally surrounded
    /// by whitespace such as a trailing newline.
    ///
    /// ```
    /// use palisade_core::audit::AuditKey;
    ///
    /// # let dir = std::env::temp_dir();
    /// # let path = dir.join(format!("palisade-doc-key-{}", std::process::id()));
    /// std::fs::write(&path, format!("{}\n", "2a".repeat(32)))?;
    /// let hex_key = AuditKey::from_key_file(&path)?;
    /// std::fs::write(&path, [0x2a; 32])?;
    /// let raw_key = AuditKey::from_key_file(&path)?;
    /// assert_eq!(hex_key.fingerprint(), raw_key.fingerprint());
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The file cannot be read, or holds neither form ([`io::ErrorKind::InvalidData`]).
    pub fn from_key_file(path: impl AsRef<Path>) -> io::Result<AuditKey> {
        let bytes = std::fs::read(path)?;
        parse_key(&bytes).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "not an audit key: expected 32 raw bytes or 64 hex digits, found {} bytes",
                    bytes.len()
                ),
            )
        })
    }
}

fn parse_key(bytes: &[u8]) -> Option<AuditKey> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Some(AuditKey::from_bytes(raw));
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    hex::decode(text).map(AuditKey::from_bytes)
}

const USAGE: &str = "\
usage: palisade_audit verify <PATH> --key-file <FILE> [--head <SEQ:HEX>] [--from <SEQ:HEX>]

  <PATH>             an audit log file, or a directory of audit-NNNNNN.jsonl files
  --key-file <FILE>  the audit key: 32 raw bytes, or 64 hex digits
  --head <SEQ:HEX>   the head kept outside the log (Audit::head); finds records cut off the end
  --from <SEQ:HEX>   the head the log continues from when older files were archived
                     (default: the log starts at sequence 1)

exit status: 0 the log verifies, 1 the log is damaged, 2 usage or I/O error";

/// The `palisade_audit` command line tool, as a function: takes the arguments after the program
/// name and returns the exit code and the message to print.
///
/// ```text
/// palisade_audit verify <PATH> --key-file <FILE> [--head <SEQ:HEX>] [--from <SEQ:HEX>]
/// ```
///
/// Runs [`verify_path`](super::verify_path) (or [`verify_path_from`] with `--from`) on `PATH`
/// with the key from [`AuditKey::from_key_file`]. Exit codes:
///
/// - `0`: the log verifies; the message gives the number of records and the head.
/// - `1`: the log is damaged; the message gives the first bad sequence number, the kind of damage,
///   and the file and line.
/// - `2`: bad arguments, an unreadable key file or log; the message explains and, for bad
///   arguments, shows the usage. Print it to stderr.
///
/// `--help` prints the usage with code 0. The `palisade` crate's `palisade_audit` example is this
/// function in a `main`.
///
/// ```
/// use palisade_core::audit::cli_verify;
///
/// let (code, message) = cli_verify(["verify", "/no/such/log", "--key-file", "/no/such/key"]);
/// assert_eq!(code, 2);
/// assert!(message.contains("key file"));
/// ```
pub fn cli_verify<I>(args: I) -> (u8, String)
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let args = match parse_args(args.into_iter().map(Into::into)) {
        Ok(Some(args)) => args,
        Ok(None) => return (0, USAGE.to_owned()),
        Err(message) => return (2, format!("error: {message}\n\n{USAGE}")),
    };
    let key = match AuditKey::from_key_file(&args.key_file) {
        Ok(key) => key,
        Err(e) => {
            return (
                2,
                format!(
                    "error: cannot read the key file {}: {e}",
                    args.key_file.display()
                ),
            )
        }
    };
    let anchor = args.from.unwrap_or(Head::GENESIS);
    match verify_path_from(&anchor, &args.path, &key, args.head.as_ref()) {
        Ok(report) => {
            let mut message = format!(
                "OK: {} records in {} file{}, seq {} to {}; head {}",
                report.records,
                report.files.len(),
                if report.files.len() == 1 { "" } else { "s" },
                report.anchor.seq + 1,
                report.head.seq,
                report.head,
            );
            if let Some(torn) = &report.torn_tail {
                let _ = write!(
                    message,
                    "\nnote: ignored a torn last line ({} bytes at offset {} of {}): a write cut \
                     short by a crash, never acknowledged; the sink removes it when it next opens the log",
                    torn.len,
                    torn.offset,
                    torn.path.display()
                );
            }
            if args.head.is_none() {
                message.push_str(
                    "\nnote: without --head, records cut off the end cannot be detected; keep the \
                     head above to check against next time",
                );
            }
            (0, message)
        }
        Err(e @ VerifyPathError::Damaged { .. }) => {
            let damage = e.damage().map_or_else(String::new, |d| {
                format!("DAMAGED: first bad seq {}: {}\n", d.seq, d.kind)
            });
            (1, format!("{damage}{e}"))
        }
        Err(e) => (2, format!("error: {e}")),
    }
}

struct Args {
    path: PathBuf,
    key_file: PathBuf,
    head: Option<Head>,
    from: Option<Head>,
}

/// `Ok(None)` for `--help`.
fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Option<Args>, String> {
    match args.next() {
        Some(cmd) if cmd == "verify" => {}
        Some(flag) if flag == "--help" || flag == "-h" || flag == "help" => return Ok(None),
        Some(other) => {
            return Err(format!(
                "unknown command {:?} (the only command is `verify`)",
                other.to_string_lossy()
            ))
        }
        None => return Err("no command given".to_owned()),
    }
    let mut path = None;
    let mut key_file = None;
    let mut head = None;
    let mut from = None;
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            set_once(&mut path, PathBuf::from(arg), "<PATH>")?;
            continue;
        };
        let (flag, inline) = match text.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(OsString::from(value))),
            _ => (text, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "--help" | "-h" => return Ok(None),
            "--key-file" => set_once(&mut key_file, value(flag)?.into(), flag)?,
            "--head" => set_once(&mut head, parse_head(&value(flag)?, flag)?, flag)?,
            "--from" => set_once(&mut from, parse_head(&value(flag)?, flag)?, flag)?,
            _ if text.starts_with('-') && text.len() > 1 => {
                return Err(format!("unknown option {text:?}"))
            }
            _ => set_once(&mut path, PathBuf::from(arg), "<PATH>")?,
        }
    }
    Ok(Some(Args {
        path: path.ok_or("no <PATH> given")?,
        key_file: key_file.ok_or("no --key-file given")?,
        head,
        from,
    }))
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("{name} given twice"));
    }
    Ok(())
}

fn parse_head(value: &OsString, flag: &str) -> Result<Head, String> {
    value.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
        format!(
            "{flag}: expected <SEQ>:<64 hex digits>, got {:?}",
            value.to_string_lossy()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_forms() {
        let raw = [0x5c; 32];
        assert!(parse_key(&raw).is_some());
        let hex_key = "5C".repeat(32);
        let a = parse_key(hex_key.as_bytes()).unwrap();
        let b = parse_key(format!("  {}\r\n", "5c".repeat(32)).as_bytes()).unwrap();
        assert_eq!(a.as_bytes(), &raw);
        assert_eq!(b.as_bytes(), &raw);
        assert!(parse_key(&[0x5c; 31]).is_none());
        assert!(parse_key(&[0x5c; 33]).is_none());
        assert!(parse_key("5c".repeat(31).as_bytes()).is_none());
        assert!(parse_key(format!("{}zz", "5c".repeat(31)).as_bytes()).is_none());
        assert!(parse_key(b"").is_none());
    }

    #[test]
    fn argument_errors_are_usage_errors() {
        let cases: &[&[&str]] = &[
            &[],
            &["check"],
            &["verify"],
            &["verify", "dir"],
            &["verify", "--key-file", "k"],
            &["verify", "dir", "--key-file"],
            &["verify", "dir", "--key-file", "k", "--head", "12"],
            &["verify", "dir", "--key-file", "k", "--bogus"],
            &["verify", "a", "b", "--key-file", "k"],
            &["verify", "a", "--key-file", "k", "--key-file=k2"],
        ];
        for args in cases {
            let (code, message) = cli_verify(args.iter().copied());
            assert_eq!(code, 2, "{args:?}: {message}");
            assert!(message.contains("usage:"), "{args:?}: {message}");
        }
        let (code, message) = cli_verify(["--help"]);
        assert_eq!((code, message.starts_with("usage:")), (0, true));
        let (code, _) = cli_verify(["verify", "--help"]);
        assert_eq!(code, 0);
    }

    #[test]
    fn inline_values_parse() {
        let head = format!("7:{}", "ab".repeat(32));
        let args = parse_args(
            [
                "verify",
                "dir",
                "--key-file=k",
                &format!("--head={head}"),
                "--from",
                &format!("3:{}", "00".repeat(32)),
            ]
            .into_iter()
            .map(OsString::from),
        )
        .unwrap()
        .unwrap();
        assert_eq!(args.path, PathBuf::from("dir"));
        assert_eq!(args.key_file, PathBuf::from("k"));
        assert_eq!(args.head.unwrap().seq, 7);
        assert_eq!(args.from.unwrap().seq, 3);
    }
}
