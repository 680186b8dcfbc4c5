//! Bodies the API really sends, checked against the OpenAPI document it
//! serves, so that the document cannot drift from the code: a field sent
//! but undocumented, a wrong type, or a schema shadowed by another of the
//! same name fails the test that sent the request.

use serde_json::{Value, json};
use ttsq_testkit::TestApp;

/// The OpenAPI document the API serves.
pub(crate) async fn served_document(app: &TestApp) -> Value {
    app.http
        .get(format!("{}/openapi.json", app.base_url))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("the document")
}

/// Where `instance` breaks `schema` (JSON Schema 2020-12, its references
/// resolved in the document's components), with every object closed to
/// fields it does not describe, so a field sent but undocumented fails too.
pub(crate) fn schema_errors(document: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    let mut components = document["components"].clone();
    let merged = merged_components(&components);
    if let Some(schemas) = components["schemas"].as_object_mut() {
        for (name, schema) in schemas.iter_mut() {
            // A schema merged into another through `allOf` sees only part
            // of the object, so it cannot refuse the other's fields.
            if !merged.contains(name) {
                close_objects(schema);
            }
        }
    }
    let mut root = schema.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["components"] = components;
    let validator = jsonschema::draft202012::new(&root).expect("the document's schemas compile");
    validator
        .iter_errors(instance)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

/// Adds `additionalProperties: false` to every object schema that lists
/// its properties and says nothing of others, except inside an `allOf`,
/// whose members each see only part of the object.
fn close_objects(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if object.contains_key("properties") && !object.contains_key("additionalProperties") {
                object.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
            for (key, child) in object.iter_mut() {
                if key != "allOf" {
                    close_objects(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Names of the component schemas that some `allOf` refers to.
fn merged_components(value: &Value) -> Vec<String> {
    let mut names = Vec::new();
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::Object(object) => {
                for member in object
                    .get("allOf")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(name) = member["$ref"]
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    {
                        names.push(name.to_owned());
                    }
                }
                pending.extend(object.values());
            }
            Value::Array(items) => pending.extend(items),
            _ => {}
        }
    }
    names
}

/// The schema of `method path`'s `status` JSON answer in the document.
pub(crate) fn response_schema(document: &Value, method: &str, path: &str, status: u16) -> Value {
    let schema = &document["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
        ["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} has no JSON schema"
    );
    schema.clone()
}

/// Fails unless `body`, answered to `method path` with `status`, is what
/// the served document says.
pub(crate) async fn assert_documented(
    app: &TestApp,
    method: &str,
    path: &str,
    status: u16,
    body: &Value,
) {
    let document = served_document(app).await;
    let schema = response_schema(&document, method, path, status);
    assert_eq!(
        schema_errors(&document, &schema, body),
        Vec::<String>::new(),
        "{method} {path} answered a body its document does not describe: {body}"
    );
}
