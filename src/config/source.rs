//! From text to typed config: TOML syntax, environment overrides, deserialization, and where each
//! key came from (a line and column in the file, or an environment variable) for error messages.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, ConfigErrorKind};
use super::keys;
use super::schema::{ClientConfig, HealConfig, ServerConfig};

/// The prefix of every override variable.
pub(crate) const ENV_PREFIX: &str = "PALISADE_";
/// The top-level sections overrides may address.
pub(crate) const SECTIONS: [&str; 3] = ["server", "client", "heal"];

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: ServerConfig,
    #[serde(default)]
    pub(crate) client: ClientConfig,
    #[serde(default)]
    pub(crate) heal: HealConfig,
}

/// Where keys came from: positions in the file, and the variables that overrode keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct Provenance {
    pub(crate) origin: String,
    /// Key path → (line, column), 1-based.
    pub(crate) positions: BTreeMap<String, (usize, usize)>,
    /// Key path → variable name.
    pub(crate) env: BTreeMap<String, String>,
}

impl Provenance {
    pub(crate) fn new(origin: &str) -> Self {
        Provenance {
            origin: origin.to_owned(),
            ..Provenance::default()
        }
    }

    /// An error about `key`, located: named by its variable when an override set it (or a part of
    /// it), else by its line in the file (or the nearest enclosing key's).
    pub(crate) fn error(
        &self,
        kind: ConfigErrorKind,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let mut err = ConfigError::new(&self.origin, kind, message).with_key(key);
        let related = |path: &str| {
            path == key
                || key.strip_prefix(path).is_some_and(|r| r.starts_with('.'))
                || path.strip_prefix(key).is_some_and(|r| r.starts_with('.'))
        };
        if let Some((_, var)) = self.env.iter().find(|(path, _)| related(path)) {
            err.0.env_var = Some(var.clone());
            return err;
        }
        let mut probe = key;
        loop {
            if let Some(&pos) = self.positions.get(probe) {
                err.0.position = Some(pos);
                break;
            }
            match probe.rfind('.') {
                Some(i) => probe = &probe[..i],
                None => break,
            }
        }
        err
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn collect_positions(
    text: &str,
    table: &DeTable<'_>,
    prefix: &str,
    out: &mut BTreeMap<String, (usize, usize)>,
) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.entry(path.clone())
            .or_insert_with(|| line_col(text, k.span().start));
        if let DeValue::Table(t) = v.get_ref() {
            collect_positions(text, t, &path, out);
        }
    }
}

/// Parses `text` as TOML: a syntax error is located by line and column.
pub(crate) fn parse_text(
    text: &str,
    origin: &str,
) -> Result<(toml::Table, Provenance), ConfigError> {
    let mut prov = Provenance::new(origin);
    let doc = DeTable::parse(text).map_err(|e| {
        let mut err = ConfigError::new(origin, ConfigErrorKind::Syntax, e.message().trim());
        err.0.position = e.span().map(|s| line_col(text, s.start));
        err
    })?;
    collect_positions(text, doc.get_ref(), "", &mut prov.positions);
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let mut err = ConfigError::new(origin, ConfigErrorKind::Syntax, e.message().trim());
        err.0.position = e.span().map(|s| line_col(text, s.start));
        err
    })?;
    Ok((table, prov))
}

/// The key path an override variable addresses: `PALISADE_SERVER__RATE_LIMIT__MAX_KEYS` →
/// `server.rate_limit.max_keys`. `None` for variables that are not config overrides.
pub(crate) fn var_path(name: &str) -> Option<Result<Vec<String>, String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let section = SECTIONS
        .iter()
        .find(|s| rest.len() > s.len() && rest[..s.len()].eq_ignore_ascii_case(s))?;
    if !rest[..section.len()]
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'_')
        || !rest[section.len()..].starts_with("__")
    {
        return None;
    }
    let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if segments.iter().any(String::is_empty) {
        return Some(Err(
            "an empty path segment (`__` must separate non-empty names)".to_owned(),
        ));
    }
    Some(Ok(segments))
}

/// The variable name of a key path: `server.timeout.timeout` → `PALISADE_SERVER__TIMEOUT__TIMEOUT`.
pub(crate) fn path_var(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.split('.')
            .map(str::to_ascii_uppercase)
            .collect::<Vec<_>>()
            .join("__")
    )
}

/// An override's value: a TOML integer, float, boolean, inline table or array if it is one, else the
/// string as written.
fn env_value(var: &str, raw: &str, origin: &str) -> Result<toml::Value, ConfigError> {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    let structured = raw.starts_with('{') || raw.starts_with('[');
    match parsed {
        Some(
            v @ (toml::Value::Integer(_)
            | toml::Value::Float(_)
            | toml::Value::Boolean(_)
            | toml::Value::Table(_)
            | toml::Value::Array(_)),
        ) => Ok(v),
        _ if structured => {
            let mut err = ConfigError::new(
                origin,
                ConfigErrorKind::Environment,
                "starts like a TOML inline table or array but does not parse as one",
            );
            err.0.env_var = Some(var.to_owned());
            Err(err)
        }
        _ => Ok(toml::Value::String(raw.to_owned())),
    }
}

/// Applies the override variables in `vars` (name, value) to `table`, recording them in `prov`.
/// Shorter paths first, so a whole table set by one variable can be refined by another.
pub(crate) fn apply_env(
    table: &mut toml::Table,
    vars: Vec<(String, String)>,
    prov: &mut Provenance,
) -> Result<(), ConfigError> {
    let origin = prov.origin.clone();
    let env_err = |var: &str, key: Option<&str>, msg: String| {
        let mut err = ConfigError::new(&origin, ConfigErrorKind::Environment, msg);
        err.0.env_var = Some(var.to_owned());
        err.0.key = key.map(str::to_owned);
        err
    };
    let mut parsed = Vec::new();
    for (var, value) in vars {
        match var_path(&var) {
            None => {}
            Some(Err(msg)) => return Err(env_err(&var, None, msg)),
            Some(Ok(path)) => parsed.push((path, var, value)),
        }
    }
    parsed.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
    for (path, var, raw) in parsed {
        let key = path.join(".");
        let value = env_value(&var, &raw, &origin)?;
        let (last, parents) = path.split_last().unwrap_or((&path[0], &[]));
        let mut cur = &mut *table;
        for (i, seg) in parents.iter().enumerate() {
            let entry = cur
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match entry {
                toml::Value::Table(t) => t,
                other => {
                    return Err(env_err(
                        &var,
                        Some(&key),
                        format!(
                            "`{}` is a {}, not a table",
                            path[..=i].join("."),
                            other.type_str()
                        ),
                    ))
                }
            };
        }
        cur.insert(last.clone(), value);
        tracing::debug!(target: "palisade::config", var = %var, key = %key, "config key overridden from the environment");
        prov.env.insert(key, var);
    }
    Ok(())
}

/// The variables to ask a lookup-only environment for: every key the schema has, and every key
/// present in the file (tier names, tenants and the like).
pub(crate) fn candidate_vars(prov: &Provenance) -> Vec<String> {
    let mut names: Vec<String> = keys::all()
        .into_iter()
        .chain(prov.positions.keys().cloned())
        .map(|p| path_var(&p))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The key path and kind of a deserialization error.
fn serde_error(e: &toml::de::Error) -> (ConfigErrorKind, Option<String>, String) {
    let shown = e.to_string();
    let parent = shown
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`'))
        .map(str::to_owned);
    let message = e.message().trim().to_owned();
    let join = |field: &str| match &parent {
        Some(p) => format!("{p}.{field}"),
        None => field.to_owned(),
    };
    let field = |prefix: &str| {
        message
            .strip_prefix(prefix)?
            .split('`')
            .next()
            .map(str::to_owned)
    };
    if let Some(f) = field("unknown field `") {
        return (ConfigErrorKind::UnknownKey, Some(join(&f)), message);
    }
    if let Some(f) = field("missing field `") {
        return (ConfigErrorKind::MissingKey, Some(join(&f)), message);
    }
    (ConfigErrorKind::InvalidValue, parent, message)
}

/// Deserializes the (overridden) table into the typed config.
pub(crate) fn deserialize(table: toml::Table, prov: &Provenance) -> Result<RawConfig, ConfigError> {
    RawConfig::deserialize(table).map_err(|e| {
        let (kind, key, message) = serde_error(&e);
        match key {
            Some(key) => prov.error(kind, &key, message),
            None => ConfigError::new(&prov.origin, kind, message),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names_map_to_paths() {
        let ok = |n: &str| var_path(n).unwrap().unwrap().join(".");
        assert_eq!(
            ok("PALISADE_SERVER__RATE_LIMIT__MAX_KEYS"),
            "server.rate_limit.max_keys"
        );
        assert_eq!(
            ok("PALISADE_CLIENT__RETRY__BACKOFF__BASE"),
            "client.retry.backoff.base"
        );
        for not_ours in [
            "PALISADE_ADDR",
            "PALISADE_LEVEL",
            "PALISADE_READ_ONLY",
            "PALISADE_SERVERX__A",
            "PALISADE_SERVER",
            "HOME",
        ] {
            assert!(var_path(not_ours).is_none(), "{not_ours}");
        }
        assert!(var_path("PALISADE_SERVER____X").unwrap().is_err());
        assert!(var_path("PALISADE_SERVER__X__").unwrap().is_err());
        assert_eq!(
            path_var("server.timeout.timeout"),
            "PALISADE_SERVER__TIMEOUT__TIMEOUT"
        );
    }

    #[test]
    fn values_are_typed_like_toml_scalars() {
        let v = |s: &str| env_value("V", s, "o").unwrap();
        assert_eq!(v("5000"), toml::Value::Integer(5000));
        assert_eq!(v("0.5"), toml::Value::Float(0.5));
        assert_eq!(v("true"), toml::Value::Boolean(true));
        assert_eq!(v("3s"), toml::Value::String("3s".into()));
        assert_eq!(v("x-tenant-id"), toml::Value::String("x-tenant-id".into()));
        assert_eq!(v("1979-05-27"), toml::Value::String("1979-05-27".into()));
        assert_eq!(v(""), toml::Value::String(String::new()));
        assert!(v("{ limit = 5, per = \"1s\" }").is_table());
        let err = env_value("V", "{ limit = ", "o").unwrap_err();
        assert_eq!(err.env_var(), Some("V"));
    }

    #[test]
    fn positions_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
