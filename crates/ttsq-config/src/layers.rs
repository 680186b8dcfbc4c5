//! The three layers as TOML tables: the embedded defaults, a config file
//! merged over them, then `TTSQ_*` variables typed like the values they
//! replace. What comes out is deserialized into [`crate::Settings`].

use std::collections::BTreeMap;

use toml::{Table, Value};

use crate::{
    error::ConfigError, providers::OPTIONAL_PROVIDER_KEYS, service_links::is_service_link,
};

/// Prefix of every environment variable this crate reads.
pub const ENV_PREFIX: &str = "TTSQ_";

/// The variable name of a dotted key: `worker.batch_size` → `TTSQ_WORKER_BATCH_SIZE`.
pub fn env_var_for(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
}

/// Variables with the prefix that are not settings themselves.
pub(crate) const RESERVED_VARS: &[&str] = &[
    "TTSQ_CONFIG",
    "TTSQ_URL",
    "TTSQ_API_KEY",
    "TTSQ_HOME",
    "TTSQ_PROFILE",
    "TTSQ_SERVICES_TIMEOUT",
];

/// Prefix of variables that configure the test suite, not a process.
pub(crate) const TEST_VAR_PREFIX: &str = "TTSQ_TEST_";

/// Every variable naming a scalar setting of `table`, with its value as a
/// variable would spell it.
pub(crate) fn collect_scalars(table: &Table, prefix: &str, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => collect_scalars(t, &key, out),
            // Lists of numbers are settable as comma-separated values; other
            // lists (dialects, routes) belong in the config file.
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_integer) => {
                let joined: Vec<String> = items.iter().map(ToString::to_string).collect();
                out.push((env_var_for(&key), joined.join(",")));
            }
            Value::Array(_) => {}
            Value::String(s) => out.push((env_var_for(&key), s.clone())),
            other => out.push((env_var_for(&key), other.to_string())),
        }
    }
}

/// Merges `overlay` into `base`: tables key by key, anything else (arrays
/// too) replaced whole.
pub(crate) fn merge(base: &mut Table, overlay: Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies `TTSQ_*` variables onto the table; returns the dotted keys they
/// set. A variable that names no setting is an error, unless it is one of
/// Kubernetes' service-link variables ([`is_service_link`]).
pub(crate) fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, ()>, ConfigError> {
    let mut set = BTreeMap::new();
    let mut vars: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with(ENV_PREFIX)
                && !k.starts_with(TEST_VAR_PREFIX)
                && !RESERVED_VARS.contains(&k.as_str())
        })
        .collect();
    // Plain variables win over their `_FILE` twin, so apply `_FILE` ones first.
    vars.sort_by_key(|(k, _)| !k.ends_with("_FILE"));
    for (var, raw) in vars {
        let (name, value) = match resolve_key(table, &var[ENV_PREFIX.len()..])
            .or_else(|| add_optional_provider_key(table, &var[ENV_PREFIX.len()..]))
        {
            Some(key) => (key, raw),
            None => match var.strip_suffix("_FILE").and_then(|v| {
                resolve_key(table, &v[ENV_PREFIX.len()..])
                    .or_else(|| add_optional_provider_key(table, &v[ENV_PREFIX.len()..]))
            }) {
                Some(key) => {
                    let content = std::fs::read_to_string(&raw).map_err(|e| ConfigError::Env {
                        var: var.clone(),
                        reason: format!("cannot read file {raw}: {e}"),
                    })?;
                    (key, content.trim_end_matches(['\n', '\r']).to_owned())
                }
                None if is_service_link(&var[ENV_PREFIX.len()..], &raw) => continue,
                None => {
                    return Err(ConfigError::Env {
                        var,
                        reason: "unknown setting; see .env.example for every variable".into(),
                    });
                }
            },
        };
        let slot = lookup_mut(table, &name).expect("resolve_key returned an existing key");
        *slot = typed_like(slot, &value).map_err(|reason| ConfigError::Env {
            var: var.clone(),
            reason,
        })?;
        set.insert(name, ());
    }
    Ok(set)
}

/// Finds the scalar key a variable suffix (`WORKER_BATCH_SIZE`) names.
fn resolve_key(table: &Table, suffix: &str) -> Option<String> {
    for (k, v) in table {
        let upper = k.to_uppercase();
        match v {
            Value::Table(inner) => {
                if let Some(rest) = suffix
                    .strip_prefix(&upper)
                    .and_then(|r| r.strip_prefix('_'))
                    && let Some(found) = resolve_key(inner, rest)
                {
                    return Some(format!("{k}.{found}"));
                }
            }
            _ if upper == suffix => return Some(k.clone()),
            _ => {}
        }
    }
    None
}

/// For a variable naming an optional key of a configured provider, adds the
/// key (empty) to the table and returns its dotted name.
fn add_optional_provider_key(table: &mut Table, suffix: &str) -> Option<String> {
    let rest = suffix.strip_prefix("PROVIDERS_")?;
    let providers = table.get_mut("providers")?.as_table_mut()?;
    let (name, field) = providers.keys().find_map(|name| {
        let upper = name.to_uppercase().replace('-', "_");
        let field = rest.strip_prefix(&upper)?.strip_prefix('_')?;
        OPTIONAL_PROVIDER_KEYS
            .iter()
            .find(|k| k.to_uppercase() == field)
            .map(|k| (name.clone(), *k))
    })?;
    providers
        .get_mut(&name)?
        .as_table_mut()?
        .insert(field.to_owned(), Value::String(String::new()));
    Some(format!("providers.{name}.{field}"))
}

fn lookup_mut<'a>(table: &'a mut Table, key: &str) -> Option<&'a mut Value> {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            return current.get_mut(part);
        }
        current = current.get_mut(part)?.as_table_mut()?;
    }
    None
}

/// Parses an environment string as the type of the value it replaces.
fn typed_like(existing: &Value, raw: &str) -> Result<Value, String> {
    match existing {
        Value::String(_) => Ok(Value::String(raw.to_owned())),
        Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected a whole number, got `{raw}`")),
        Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, got `{raw}`")),
        Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, got `{raw}`")),
        },
        // A comma-separated list, each item typed like the default's items.
        Value::Array(items) => {
            let like = items
                .first()
                .cloned()
                .unwrap_or_else(|| Value::String(String::new()));
            raw.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| typed_like(&like, s.trim()))
                .collect::<Result<Vec<_>, String>>()
                .map(Value::Array)
        }
        _ => Err("this setting cannot be set from the environment".into()),
    }
}
