//! Schemas as a reader wants them: a one-line type (`array of TaskView`,
//! `string (uuid) | null`, `"mp3" | "wav"`), and a table of an object's
//! fields with their types, whether required, descriptions, allowed values,
//! bounds, defaults and examples.

use serde_json::Value;

use crate::markup::{anchor, blocks, escape, inline};

/// How deep nested inline objects are unfolded into dotted field names.
const MAX_DEPTH: usize = 4;

/// The component schema a `$ref` names, if it names one.
pub fn ref_name(reference: &str) -> Option<&str> {
    reference.strip_prefix("#/components/schemas/")
}

/// The schema's type as one line of HTML, component names linked.
pub fn type_html(schema: &Value) -> String {
    let Some(object) = schema.as_object() else {
        return if schema == &Value::Bool(false) {
            "nothing".to_owned()
        } else {
            "any JSON".to_owned()
        };
    };
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        return match ref_name(reference) {
            Some(name) => format!(
                "<a class=\"ref\" href=\"#{}\">{}</a>",
                anchor("schema", name),
                escape(name)
            ),
            None => format!("<code>{}</code>", escape(reference)),
        };
    }
    if let Some(value) = object.get("const") {
        return literal(value);
    }
    if let Some(values) = object.get("enum").and_then(Value::as_array) {
        return values.iter().map(literal).collect::<Vec<_>>().join(" | ");
    }
    for (key, joiner) in [("oneOf", " | "), ("anyOf", " | "), ("allOf", " &amp; ")] {
        if let Some(members) = object.get(key).and_then(Value::as_array) {
            let joined = members
                .iter()
                .map(type_html)
                .collect::<Vec<_>>()
                .join(joiner);
            return joined;
        }
    }
    let types: Vec<&str> = match object.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let nullable = types.contains(&"null");
    let mut shown: Vec<String> = types
        .iter()
        .filter(|t| **t != "null")
        .map(|t| single_type(t, object))
        .collect();
    if shown.is_empty() {
        shown.push(if object.contains_key("properties") {
            "object".to_owned()
        } else if types.is_empty() {
            "any JSON".to_owned()
        } else {
            "null".to_owned()
        });
    }
    let mut html = shown.join(" | ");
    if nullable && !shown.iter().any(|t| t == "null") {
        html.push_str(" | null");
    }
    html
}

fn single_type(name: &str, object: &serde_json::Map<String, Value>) -> String {
    match name {
        "array" => match object.get("items") {
            Some(items) => format!("array of {}", type_html(items)),
            None => "array".to_owned(),
        },
        "object" => match object.get("additionalProperties") {
            Some(Value::Object(values)) if !values.is_empty() => {
                format!("map of {}", type_html(&Value::Object(values.clone())))
            }
            Some(Value::Object(_)) | Some(Value::Bool(true))
                if !object.contains_key("properties") =>
            {
                "map of any JSON".to_owned()
            }
            _ => "object".to_owned(),
        },
        other => match object.get("format").and_then(Value::as_str) {
            Some(format) => format!(
                "{} <span class=\"format\">({})</span>",
                escape(other),
                escape(format)
            ),
            None => escape(other),
        },
    }
}

fn literal(value: &Value) -> String {
    format!("<code>{}</code>", escape(&value.to_string()))
}

/// The notes beside a field or schema: description, allowed values,
/// bounds, default and example.
pub fn notes_html(schema: &Value) -> String {
    let mut html = String::new();
    if let Some(text) = schema.get("description").and_then(Value::as_str) {
        html.push_str(&blocks(text));
    }
    let mut facts = Vec::new();
    for (key, label) in [
        ("minimum", "minimum"),
        ("exclusiveMinimum", "above"),
        ("maximum", "maximum"),
        ("exclusiveMaximum", "below"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("pattern", "pattern"),
        ("default", "default"),
    ] {
        if let Some(value) = schema.get(key) {
            facts.push(format!("{label} {}", literal(value)));
        }
    }
    if schema.get("deprecated") == Some(&Value::Bool(true)) {
        facts.push("<strong>deprecated</strong>".to_owned());
    }
    if let Some(example) = schema.get("example") {
        facts.push(format!("example {}", literal(example)));
    }
    if let Some(examples) = schema.get("examples").and_then(Value::as_array) {
        for example in examples {
            facts.push(format!("example {}", literal(example)));
        }
    }
    if !facts.is_empty() {
        html.push_str("<p class=\"facts\">");
        html.push_str(&facts.join(" · "));
        html.push_str("</p>");
    }
    html
}

/// A component schema's body: its notes, then its fields (of its own
/// properties and of the inline members of an `allOf`), its variants
/// (`oneOf`, `anyOf`) or its allowed values.
pub fn schema_body(schema: &Value) -> String {
    let mut html = String::new();
    html.push_str("<p class=\"type\">Type: ");
    html.push_str(&type_html(schema));
    html.push_str("</p>");
    html.push_str(&notes_html(schema));
    let mut rows = Vec::new();
    collect_fields(schema, "", 0, &mut rows);
    if let Some(members) = schema.get("allOf").and_then(Value::as_array) {
        let includes: Vec<String> = members
            .iter()
            .filter(|m| m.get("$ref").is_some())
            .map(type_html)
            .collect();
        if !includes.is_empty() {
            html.push_str("<p>With every field of ");
            html.push_str(&includes.join(", "));
            html.push_str(".</p>");
        }
        for member in members {
            collect_fields(member, "", 0, &mut rows);
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(members) = schema.get(key).and_then(Value::as_array) {
            html.push_str("<p>One of:</p><ul class=\"variants\">");
            for member in members {
                html.push_str("<li>");
                html.push_str(&type_html(member));
                if let Some(text) = member.get("description").and_then(Value::as_str) {
                    html.push_str(" — ");
                    html.push_str(&inline(text));
                }
                html.push_str("</li>");
                collect_fields(member, "", 0, &mut rows);
            }
            html.push_str("</ul>");
        }
    }
    if !rows.is_empty() {
        html.push_str(&fields_table(&rows));
    }
    html
}

/// One row of a fields table.
pub struct Field {
    name: String,
    schema: Value,
    required: bool,
}

/// The fields of `schema` if it is an inline object, nested inline objects
/// unfolded as `parent.child` and `list[].child`.
pub fn collect_fields(schema: &Value, prefix: &str, depth: usize, rows: &mut Vec<Field>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, property) in properties {
        let full = format!("{prefix}{name}");
        rows.push(Field {
            name: full.clone(),
            schema: property.clone(),
            required: required.contains(&name.as_str()),
        });
        if depth < MAX_DEPTH {
            collect_fields(property, &format!("{full}."), depth + 1, rows);
            if let Some(items) = property.get("items") {
                collect_fields(items, &format!("{full}[]."), depth + 1, rows);
            }
        }
    }
}

/// Fields as a table: name, type, required, notes.
pub fn fields_table(rows: &[Field]) -> String {
    let mut html = String::from(
        "<table class=\"fields\"><thead><tr><th>Field</th><th>Type</th><th>Notes</th></tr></thead><tbody>",
    );
    for row in rows {
        html.push_str("<tr><td><code class=\"name\">");
        html.push_str(&escape(&row.name));
        html.push_str("</code>");
        if row.required {
            html.push_str(" <span class=\"required\">required</span>");
        }
        html.push_str("</td><td>");
        html.push_str(&type_html(&row.schema));
        html.push_str("</td><td>");
        html.push_str(&notes_html(&row.schema));
        html.push_str("</td></tr>");
    }
    html.push_str("</tbody></table>");
    html
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn types_read_as_a_reader_says_them() {
        assert_eq!(
            type_html(&json!({"type": "array", "items": {"$ref": "#/components/schemas/Mark"}})),
            "array of <a class=\"ref\" href=\"#schema-Mark\">Mark</a>"
        );
        assert_eq!(
            type_html(&json!({"type": ["string", "null"], "format": "uuid"})),
            "string <span class=\"format\">(uuid)</span> | null"
        );
        assert_eq!(
            type_html(&json!({"type": "string", "enum": ["mp3", "wav"]})),
            "<code>&quot;mp3&quot;</code> | <code>&quot;wav&quot;</code>"
        );
        assert_eq!(
            type_html(&json!({"type": "object", "additionalProperties": {"type": "integer"}})),
            "map of integer"
        );
        assert_eq!(type_html(&json!({})), "any JSON");
    }

    #[test]
    fn nested_inline_objects_unfold_into_dotted_fields() {
        let schema = json!({
            "type": "object",
            "required": ["a"],
            "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "string"}}},
                "c": {"type": "array", "items": {"type": "object", "properties": {"d": {"type": "integer"}}}}
            }
        });
        let mut rows = Vec::new();
        collect_fields(&schema, "", 0, &mut rows);
        let names: Vec<(&str, bool)> = rows.iter().map(|r| (r.name.as_str(), r.required)).collect();
        assert_eq!(
            names,
            [("a", true), ("a.b", false), ("c", false), ("c[].d", false)]
        );
    }
}
