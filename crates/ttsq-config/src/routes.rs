//! `[[routes]]`: dialect patterns to provider chains, first match wins.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    ProviderSettings,
    validation::{Checked, Invalid},
};

/// Dialect patterns served by a chain of providers.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Glob patterns over dialect ids (`*` matches any run of characters).
    pub dialects: Vec<String>,
    /// Provider names, tried in order.
    pub chain: Vec<String>,
}

impl RouteSettings {
    /// Whether this route covers `dialect`.
    pub fn matches(&self, dialect: &str) -> bool {
        self.dialects.iter().any(|p| glob_match(p, dialect))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

/// There is a route, and each names only configured providers.
pub(crate) fn check_all(
    routes: &[RouteSettings],
    providers: &BTreeMap<String, ProviderSettings>,
) -> Checked {
    if routes.is_empty() {
        return Err(Invalid::new("routes", "must have at least one route"));
    }
    for (i, route) in routes.iter().enumerate() {
        if route.chain.is_empty() {
            return Err(Invalid::new(
                format!("routes.{i}.chain"),
                "must name at least one provider",
            ));
        }
        if let Some(unknown) = route.chain.iter().find(|p| !providers.contains_key(*p)) {
            return Err(Invalid::new(
                format!("routes.{i}.chain"),
                format!("names provider `{unknown}`, which is not configured"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::glob_match;
    use crate::{Settings, tests::env};

    #[test]
    fn a_route_to_an_unknown_provider_is_refused_by_name() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[[routes]]\ndialects = [\"*\"]\nchain = [\"nobody\"]").unwrap();
        let err = Settings::load(Some(file.path()), env(&[])).unwrap_err();
        assert!(err.to_string().contains("nobody"), "{err}");
    }

    #[test]
    fn glob_patterns_match_whole_ids() {
        assert!(glob_match("*", "yue"));
        assert!(glob_match("en-*", "en-gb-scotland"));
        assert!(!glob_match("en-*", "fr-fr"));
        assert!(glob_match("*-419", "es-419"));
        assert!(glob_match("cmn", "cmn"));
        assert!(!glob_match("cmn", "cmn-x"));
    }
}
