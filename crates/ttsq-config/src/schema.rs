//! The settings described for people and scripts: every key with its
//! variable, type, default and documentation, derived from the section
//! structs themselves (their JSON Schema, from `schemars`) and the embedded
//! defaults, so it cannot drift from what [`crate::Settings::load`] accepts.

use schemars::Schema;
use serde::Serialize;
use serde_json::{Map, Value};
use toml::Table;

use crate::{
    DEFAULTS_TOML, ENV_PREFIX, Settings, env_var_for,
    layers::{RESERVED_VARS, TEST_VAR_PREFIX},
};

/// Every setting, as `ttsq config schema` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct SettingsSchema {
    /// Prefix of every variable ttsq reads.
    pub env_prefix: &'static str,
    /// Variables with the prefix that are not settings (the config file's
    /// path, the client's URL and key, the local scripts' own).
    pub reserved_vars: Vec<&'static str>,
    /// Prefix of the test suite's variables, which ttsq ignores.
    pub test_var_prefix: &'static str,
    /// Every setting, by dotted key.
    pub settings: Vec<SettingSchema>,
}

/// One setting.
#[derive(Debug, Clone, Serialize)]
pub struct SettingSchema {
    /// Dotted key in the config file. A map's entries are written with a
    /// placeholder: `providers.<name>.api_key`.
    pub key: String,
    /// The variable that sets it (with the placeholder upper-cased:
    /// `TTSQ_PROVIDERS_<NAME>_API_KEY`); `null` for lists of tables, which
    /// only the config file can give. Any variable also works as
    /// `VAR_FILE`, naming a file that holds the value.
    pub env: Option<String>,
    /// JSON Schema type: `string`, `integer`, `number`, `boolean`, or
    /// `array of …`; a value the setting may also leave out adds `null`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The values a string setting takes, when it is one of a few.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
    /// The default, from the embedded defaults or the field's own; `null`
    /// when there is none.
    pub default: Value,
    /// A secret: redacted by `ttsq config show`, never printed by `Debug`,
    /// and best given through the environment or a `_FILE`.
    pub secret: bool,
    /// What it does.
    pub doc: String,
}

impl Settings {
    /// The JSON Schema (draft 2020-12) of the config file, derived from the
    /// section structs: their fields, types and `///` documentation, with
    /// secrets marked `writeOnly`.
    pub fn json_schema() -> Schema {
        schemars::schema_for!(Settings)
    }

    /// Every setting with its variable, type, default and documentation.
    pub fn schema() -> SettingsSchema {
        let schema = Self::json_schema();
        // The embedded defaults are checked by a unit test, so parsing cannot fail.
        let defaults: Table =
            toml::from_str(DEFAULTS_TOML).expect("embedded defaults are valid TOML");
        let empty = Map::new();
        let walker = Walker {
            defs: schema
                .get("$defs")
                .and_then(Value::as_object)
                .unwrap_or(&empty),
            defaults: &defaults,
        };
        let mut settings = Vec::new();
        walker.visit_object(schema.as_value(), "", &mut settings);
        SettingsSchema {
            env_prefix: ENV_PREFIX,
            reserved_vars: RESERVED_VARS.to_vec(),
            test_var_prefix: TEST_VAR_PREFIX,
            settings,
        }
    }
}

/// Walks the JSON Schema from the root, one entry per leaf setting.
struct Walker<'a> {
    /// The schema's `$defs`, which `$ref`s point into.
    defs: &'a Map<String, Value>,
    /// The embedded defaults.
    defaults: &'a Table,
}

impl Walker<'_> {
    /// The schema a `$ref` points at, or the node itself.
    fn resolve<'n>(&'n self, node: &'n Value) -> &'n Value {
        node.get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|name| self.defs.get(name))
            .unwrap_or(node)
    }

    /// Visits the properties of an object schema, or the entries of a map.
    /// Returns false when `node` is neither (a leaf).
    fn visit_object(&self, node: &Value, key: &str, out: &mut Vec<SettingSchema>) -> bool {
        let target = self.resolve(node);
        let join = |name: &str| {
            if key.is_empty() {
                name.to_owned()
            } else {
                format!("{key}.{name}")
            }
        };
        if let Some(properties) = target.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                self.visit(property, &join(name), out);
            }
            return true;
        }
        if let Some(entry) = target.get("additionalProperties").filter(|v| v.is_object()) {
            // A map keyed by a name the operator chooses: `providers.<name>`.
            let placeholder = if key == "providers" {
                "<name>"
            } else {
                "<key>"
            };
            let doc = node
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            self.visit_documented(entry, &join(placeholder), doc, out);
            return true;
        }
        false
    }

    fn visit(&self, node: &Value, key: &str, out: &mut Vec<SettingSchema>) {
        self.visit_documented(node, key, "", out);
    }

    /// Visits `node`; `outer_doc` documents it when it has no doc of its own
    /// (a map's entries, documented by the map).
    fn visit_documented(
        &self,
        node: &Value,
        key: &str,
        outer_doc: &str,
        out: &mut Vec<SettingSchema>,
    ) {
        if self.visit_object(node, key, out) {
            return;
        }
        let target = self.resolve(node);
        let (kind, nullable) = self.type_of(target);
        // Lists of tables (routes, dialects) have no variable: only the file gives them.
        let file_only = kind.contains("table");
        let doc = [node, target]
            .iter()
            .find_map(|n| n.get("description").and_then(Value::as_str))
            .unwrap_or(outer_doc);
        out.push(SettingSchema {
            key: key.to_owned(),
            env: (!file_only).then(|| env_var_for(key)),
            kind: if nullable {
                format!("{kind} or null")
            } else {
                kind
            },
            values: constants(target),
            default: self
                .default_of(key)
                .or_else(|| node.get("default").cloned())
                .unwrap_or(Value::Null),
            secret: [node, target]
                .iter()
                .any(|n| n.get("writeOnly") == Some(&Value::Bool(true))),
            // One line, and rustdoc's link brackets dropped: [`Self::x`] is `Self::x`.
            doc: doc
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace("[`", "`")
                .replace("`]", "`"),
        });
    }

    /// The key's value in the embedded defaults, as JSON.
    fn default_of(&self, key: &str) -> Option<Value> {
        let mut parts = key.split('.');
        let first = parts.next()?;
        let mut current = self.defaults.get(first)?;
        for part in parts {
            current = current.as_table()?.get(part)?;
        }
        serde_json::to_value(current).ok()
    }

    /// A schema's type in words, and whether it admits `null`.
    fn type_of(&self, schema: &Value) -> (String, bool) {
        let schema = self.resolve(schema);
        if constants(schema).is_some() {
            return ("string".to_owned(), false);
        }
        if schema.get("properties").is_some() {
            return ("table".to_owned(), false);
        }
        if let Some(options) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Value::as_array)
        {
            let null = Value::from("null");
            let nullable = options.iter().any(|o| o.get("type") == Some(&null));
            let kinds: Vec<String> = options
                .iter()
                .filter(|o| o.get("type") != Some(&null))
                .map(|o| self.type_of(o).0)
                .collect();
            return (kinds.join(" or "), nullable);
        }
        let (names, nullable) = match schema.get("type") {
            Some(Value::String(name)) => (vec![name.as_str()], false),
            Some(Value::Array(names)) => (
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|n| *n != "null")
                    .collect(),
                names.iter().any(|n| n == "null"),
            ),
            _ => (vec![], false),
        };
        let words: Vec<String> = names
            .iter()
            .map(|name| match *name {
                "array" => {
                    let items = schema.get("items").unwrap_or(&Value::Null);
                    format!("array of {}", self.type_of(items).0)
                }
                "object" => "table".to_owned(),
                other => other.to_owned(),
            })
            .collect();
        (words.join(" or "), nullable)
    }
}

/// The values of an enumeration: `enum`, or `oneOf` branches that are each
/// a `const` (how a documented variant is written).
fn constants(schema: &Value) -> Option<Vec<Value>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(values.clone());
    }
    schema
        .get("oneOf")
        .and_then(Value::as_array)
        .and_then(|options| options.iter().map(|o| o.get("const").cloned()).collect())
}

#[cfg(test)]
mod tests {
    use crate::{Settings, tests::env};

    #[test]
    fn the_schema_lists_every_variable_with_its_default() {
        let schema = Settings::schema();
        // `TTSQ_PROVIDERS_<NAME>_BINARY` names `TTSQ_PROVIDERS_ESPEAK_BINARY`.
        let names = |pattern: &str, var: &str| match pattern.split_once('<') {
            None => pattern == var,
            Some((head, rest)) => {
                let tail = rest.split_once('>').map_or("", |(_, tail)| tail);
                var.len() > head.len() + tail.len() && var.starts_with(head) && var.ends_with(tail)
            }
        };
        for (var, default) in Settings::env_reference() {
            let setting = schema
                .settings
                .iter()
                .filter(|s| s.env.as_deref().is_some_and(|p| names(p, &var)))
                // The most specific: `…_<NAME>_QUOTA_MAX_CONCURRENT` over `…_<NAME>_…`.
                .max_by_key(|s| s.env.as_ref().map_or(0, String::len))
                .unwrap_or_else(|| panic!("{var} is in the schema"));
            assert!(!setting.doc.is_empty(), "{var} is documented");
            if setting.key.contains('<') {
                // A map entry's default is the field's, not the embedded entry's value.
                continue;
            }
            let spelled = match &setting.default {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            assert_eq!(spelled, default, "{var}");
        }
    }

    #[test]
    fn the_schema_marks_exactly_the_secrets() {
        let secrets: Vec<_> = Settings::schema()
            .settings
            .into_iter()
            .filter(|s| s.secret)
            .map(|s| s.key)
            .collect();
        assert_eq!(
            secrets,
            [
                "admin.token",
                "audit.text_key",
                "database.url",
                "providers.<name>.api_key",
                "queue.url",
                "s3.secret_access_key",
                "webhooks.signing_key",
            ]
        );
    }

    #[test]
    fn enumerations_list_their_values() {
        let schema = Settings::schema();
        let format = schema
            .settings
            .iter()
            .find(|s| s.key == "log.format")
            .expect("log.format is listed");
        assert_eq!(format.kind, "string");
        assert_eq!(
            format.values.as_deref(),
            Some(&["pretty".into(), "json".into()][..])
        );
        // Every key the schema names without a placeholder loads as a variable.
        for setting in &schema.settings {
            if let Some(var) = &setting.env
                && !var.contains('<')
                && !setting.default.is_null()
            {
                let value = match &setting.default {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(items) => items
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                Settings::load(None, env(&[(var, &value)]))
                    .unwrap_or_else(|e| panic!("{var}={value}: {e}"));
            }
        }
    }
}
