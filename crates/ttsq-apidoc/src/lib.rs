#![doc = include_str!("../README.md")]

mod markup;
mod types;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{
    markup::{anchor, blocks, escape, inline},
    types::{collect_fields, fields_table, notes_html, ref_name, schema_body, type_html},
};

/// The page's stylesheet, inlined in its `<style>` element.
const STYLE: &str = include_str!("style.css");

/// The HTTP methods of a path item, in the order they are listed.
const METHODS: [&str; 8] = [
    "get", "put", "post", "patch", "delete", "head", "options", "trace",
];

/// A rendered reference page.
#[derive(Debug, Clone)]
pub struct Page {
    /// The whole HTML document.
    pub html: String,
    /// The `Content-Security-Policy` to serve it with: nothing may load,
    /// only the page's own stylesheet (by hash) applies, no script runs.
    pub content_security_policy: String,
}

/// Renders `document`, an OpenAPI 3.1 document, as one HTML page. Members
/// the page does not know are left out; a malformed document renders what
/// it can rather than failing.
pub fn render(document: &Value) -> Page {
    let html = Renderer { document }.page();
    let style_hash = STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    let content_security_policy = format!(
        "default-src 'none'; style-src 'sha256-{style_hash}'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    Page {
        html,
        content_security_policy,
    }
}

/// An operation of the document: a route or a webhook.
struct Operation<'a> {
    /// `GET`, `POST`, …
    method: String,
    /// The path, or the webhook's event name.
    path: &'a str,
    operation: &'a Value,
    /// The path item's parameters, shared by its operations.
    shared_parameters: &'a [Value],
    /// Its element id.
    id: String,
}

struct Renderer<'a> {
    document: &'a Value,
}

impl<'a> Renderer<'a> {
    fn page(&self) -> String {
        let info = &self.document["info"];
        let title = info["title"].as_str().unwrap_or("API");
        let version = info["version"].as_str().unwrap_or("");
        let routes = self.operations("paths", "op");
        let webhooks = self.operations("webhooks", "webhook");
        let tags = self.tags(&routes);
        let schemas = self.document["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();

        let mut html = String::with_capacity(256 * 1024);
        html.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
        html.push_str(&format!(
            "<title>{} {} — API reference</title><style>{STYLE}</style></head><body>",
            escape(title),
            escape(version)
        ));
        html.push_str(&self.sidebar(title, version, &tags, &webhooks, &schemas));
        html.push_str("<main>");
        html.push_str(&self.introduction(title, version));
        for (tag, description, operations) in &tags {
            html.push_str(&format!(
                "<section class=\"tag\" id=\"{}\"><h2>{}</h2>{}",
                anchor("tag", tag),
                escape(tag),
                blocks(description)
            ));
            for operation in operations {
                html.push_str(&self.operation(operation, false));
            }
            html.push_str("</section>");
        }
        if !webhooks.is_empty() {
            html.push_str("<section class=\"tag\" id=\"webhooks\"><h2>Webhooks</h2>");
            html.push_str(
                "<p>Requests this service makes to your endpoint when an event happens.</p>",
            );
            for operation in &webhooks {
                html.push_str(&self.operation(operation, true));
            }
            html.push_str("</section>");
        }
        if !schemas.is_empty() {
            html.push_str("<section class=\"tag\" id=\"schemas\"><h2>Schemas</h2>");
            for (name, schema) in &schemas {
                html.push_str(&format!(
                    "<section class=\"schema\" id=\"{}\"><h3>{}</h3>{}</section>",
                    anchor("schema", name),
                    escape(name),
                    schema_body(schema)
                ));
            }
            html.push_str("</section>");
        }
        html.push_str("</main></body></html>\n");
        html
    }

    fn introduction(&self, title: &str, version: &str) -> String {
        let info = &self.document["info"];
        let mut html = format!(
            "<header id=\"introduction\"><h1>{} <span class=\"version\">{}</span></h1>",
            escape(title),
            escape(version)
        );
        if let Some(text) = info["description"].as_str() {
            html.push_str(&blocks(text));
        }
        let mut facts = Vec::new();
        if let Some(openapi) = self.document["openapi"].as_str() {
            facts.push(format!(
                "OpenAPI {} document: <a href=\"openapi.json\">openapi.json</a>",
                escape(openapi)
            ));
        }
        if let Some(licence) = info["license"]["name"].as_str() {
            facts.push(format!("Licence: {}", escape(licence)));
        }
        if !facts.is_empty() {
            html.push_str(&format!("<p class=\"facts\">{}</p>", facts.join(" · ")));
        }
        if let Some(schemes) = self.document["components"]["securitySchemes"].as_object() {
            html.push_str("<h2 id=\"authentication\">Authentication</h2><dl class=\"auth\">");
            for (name, scheme) in schemes {
                let kind = match (scheme["type"].as_str(), scheme["scheme"].as_str()) {
                    (Some("http"), Some(s)) if s.eq_ignore_ascii_case("bearer") => {
                        "HTTP <code>Authorization: Bearer …</code>".to_owned()
                    }
                    (Some("apiKey"), _) => format!(
                        "API key in {} <code>{}</code>",
                        escape(scheme["in"].as_str().unwrap_or("")),
                        escape(scheme["name"].as_str().unwrap_or(""))
                    ),
                    (Some(t), Some(s)) => format!("{} {}", escape(t), escape(s)),
                    (Some(t), None) => escape(t),
                    _ => String::new(),
                };
                html.push_str(&format!(
                    "<dt id=\"{}\"><code>{}</code> — {kind}</dt><dd>{}</dd>",
                    anchor("auth", name),
                    escape(name),
                    blocks(scheme["description"].as_str().unwrap_or(""))
                ));
            }
            html.push_str("</dl>");
        }
        html.push_str("</header>");
        html
    }

    fn sidebar(
        &self,
        title: &str,
        version: &str,
        tags: &[(String, String, Vec<Operation<'_>>)],
        webhooks: &[Operation<'_>],
        schemas: &Map<String, Value>,
    ) -> String {
        let mut html = format!(
            "<nav aria-label=\"Contents\"><p class=\"brand\"><a href=\"#introduction\">{}</a> \
             <span class=\"version\">{}</span></p><ul>",
            escape(title),
            escape(version)
        );
        if self.document["components"]["securitySchemes"].is_object() {
            html.push_str(
                "<li class=\"group\"><a href=\"#authentication\">Authentication</a></li>",
            );
        }
        let entry = |operation: &Operation<'_>| {
            format!(
                "<li><a href=\"#{}\"><span class=\"method {}\">{}</span> {}</a></li>",
                operation.id,
                escape(&operation.method.to_ascii_lowercase()),
                escape(&operation.method),
                escape(operation.path)
            )
        };
        for (tag, _, operations) in tags {
            html.push_str(&format!(
                "<li class=\"group\"><a href=\"#{}\">{}</a><ul>",
                anchor("tag", tag),
                escape(tag)
            ));
            for operation in operations {
                html.push_str(&entry(operation));
            }
            html.push_str("</ul></li>");
        }
        if !webhooks.is_empty() {
            html.push_str("<li class=\"group\"><a href=\"#webhooks\">Webhooks</a><ul>");
            for operation in webhooks {
                html.push_str(&entry(operation));
            }
            html.push_str("</ul></li>");
        }
        if !schemas.is_empty() {
            html.push_str(
                "<li class=\"group\"><a href=\"#schemas\">Schemas</a><ul class=\"schemas\">",
            );
            for name in schemas.keys() {
                html.push_str(&format!(
                    "<li><a href=\"#{}\">{}</a></li>",
                    anchor("schema", name),
                    escape(name)
                ));
            }
            html.push_str("</ul></li>");
        }
        html.push_str("</ul></nav>");
        html
    }

    /// Every operation under the document's `member` (`paths`, `webhooks`).
    fn operations(&self, member: &str, prefix: &str) -> Vec<Operation<'a>> {
        let mut operations = Vec::new();
        let Some(items) = self.document[member].as_object() else {
            return operations;
        };
        for (path, item) in items {
            let item = self.resolve(item);
            let shared_parameters = item["parameters"].as_array().map_or(&[][..], Vec::as_slice);
            for method in METHODS {
                let Some(operation) = item.get(method).filter(|o| o.is_object()) else {
                    continue;
                };
                let name = operation["operationId"]
                    .as_str()
                    .map_or_else(|| format!("{method} {path}"), str::to_owned);
                operations.push(Operation {
                    method: method.to_ascii_uppercase(),
                    path,
                    operation,
                    shared_parameters,
                    id: anchor(prefix, &name),
                });
            }
        }
        operations
    }

    /// The operations grouped by their first tag: the document's tags in
    /// its order, then undeclared ones as they come, then the untagged.
    fn tags(&self, operations: &[Operation<'a>]) -> Vec<(String, String, Vec<Operation<'a>>)> {
        let mut groups: Vec<(String, String, Vec<Operation<'a>>)> = self.document["tags"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| {
                        let name = t["name"].as_str()?.to_owned();
                        let description = t["description"].as_str().unwrap_or("").to_owned();
                        Some((name, description, Vec::new()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for operation in operations {
            let tag = operation.operation["tags"][0].as_str().unwrap_or("other");
            let index = match groups.iter().position(|(name, _, _)| name == tag) {
                Some(index) => index,
                None => {
                    groups.push((tag.to_owned(), String::new(), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[index].2.push(Operation {
                method: operation.method.clone(),
                path: operation.path,
                operation: operation.operation,
                shared_parameters: operation.shared_parameters,
                id: operation.id.clone(),
            });
        }
        // A tag that only webhooks use gets no empty section among routes.
        groups.retain(|(_, _, operations)| !operations.is_empty());
        groups
    }

    /// `value`, or what its `$ref` points to inside the document.
    fn resolve(&self, value: &'a Value) -> &'a Value {
        let mut value = value;
        // A bounded walk: a cycle of references ends instead of looping.
        for _ in 0..8 {
            let Some(pointer) = value["$ref"].as_str().and_then(|r| r.strip_prefix('#')) else {
                break;
            };
            match self.document.pointer(pointer) {
                Some(target) => value = target,
                None => break,
            }
        }
        value
    }

    fn operation(&self, operation: &Operation<'_>, webhook: bool) -> String {
        let op = operation.operation;
        let mut html = format!(
            "<article class=\"operation\" id=\"{}\"><h3><span class=\"method {}\">{}</span> \
             <code class=\"path\">{}</code>{}</h3>",
            operation.id,
            escape(&operation.method.to_ascii_lowercase()),
            escape(&operation.method),
            escape(operation.path),
            if op["deprecated"] == Value::Bool(true) {
                " <span class=\"deprecated\">deprecated</span>"
            } else {
                ""
            }
        );
        if let Some(summary) = op["summary"].as_str() {
            html.push_str(&format!("<p class=\"summary\">{}</p>", inline(summary)));
        }
        if let Some(description) = op["description"].as_str() {
            html.push_str(&blocks(description));
        }
        if !webhook {
            html.push_str(&self.security(op));
        }
        html.push_str(&self.parameters(operation));
        if let Some(body) = op.get("requestBody") {
            html.push_str(&self.request_body(self.resolve(body), webhook));
        }
        if let Some(responses) = op["responses"].as_object() {
            html.push_str(&self.responses(responses, webhook));
        }
        html.push_str("</article>");
        html
    }

    fn security(&self, op: &Value) -> String {
        let requirements = op
            .get("security")
            .or_else(|| self.document.get("security"))
            .and_then(Value::as_array);
        let names: Vec<String> = requirements
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .map(|requirement| {
                if requirement.is_empty() {
                    "none".to_owned()
                } else {
                    requirement
                        .keys()
                        .map(|name| {
                            format!("<a href=\"#{}\">{}</a>", anchor("auth", name), escape(name))
                        })
                        .collect::<Vec<_>>()
                        .join(" and ")
                }
            })
            .collect();
        if names.is_empty() {
            "<p class=\"auth-line\">Authentication: none (public)</p>".to_owned()
        } else {
            format!(
                "<p class=\"auth-line\">Authentication: {}</p>",
                names.join(" or ")
            )
        }
    }

    fn parameters(&self, operation: &Operation<'_>) -> String {
        let own = operation.operation["parameters"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        let parameters: Vec<&Value> = operation
            .shared_parameters
            .iter()
            .chain(own)
            .map(|p| self.resolve(p))
            .collect();
        if parameters.is_empty() {
            return String::new();
        }
        let mut html = String::from(
            "<h4>Parameters</h4><table class=\"params\"><thead><tr><th>Name</th><th>In</th>\
             <th>Type</th><th>Notes</th></tr></thead><tbody>",
        );
        for parameter in parameters {
            html.push_str(&format!(
                "<tr><td><code class=\"name\">{}</code>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
                escape(parameter["name"].as_str().unwrap_or("")),
                if parameter["required"] == Value::Bool(true) {
                    " <span class=\"required\">required</span>"
                } else {
                    ""
                },
                escape(parameter["in"].as_str().unwrap_or("")),
                type_html(&parameter["schema"]),
                blocks(parameter["description"].as_str().unwrap_or("")),
                notes_html(&without_description(&parameter["schema"])),
            ));
        }
        html.push_str("</tbody></table>");
        html
    }

    fn request_body(&self, body: &Value, webhook: bool) -> String {
        let mut html = format!(
            "<h4>{}{}</h4>",
            if webhook { "Payload" } else { "Request body" },
            if body["required"] == Value::Bool(true) {
                " <span class=\"required\">required</span>"
            } else {
                ""
            }
        );
        if let Some(text) = body["description"].as_str() {
            html.push_str(&blocks(text));
        }
        html.push_str(&self.content(&body["content"]));
        html
    }

    /// A `content` map: each media type with its schema; an inline object
    /// schema gets its fields table here, a component schema a link.
    fn content(&self, content: &Value) -> String {
        let Some(media) = content.as_object() else {
            return String::new();
        };
        let mut html = String::from("<ul class=\"content\">");
        let mut tables = String::new();
        for (media_type, entry) in media {
            let schema = &entry["schema"];
            html.push_str(&format!(
                "<li><code>{}</code>: {}</li>",
                escape(media_type),
                type_html(schema)
            ));
            let mut rows = Vec::new();
            collect_fields(schema, "", 0, &mut rows);
            if !rows.is_empty() {
                tables.push_str(&fields_table(&rows));
            }
            if let Some(example) = entry.get("example") {
                tables.push_str(&format!(
                    "<pre class=\"example\">{}</pre>",
                    escape(&serde_json::to_string_pretty(example).unwrap_or_default())
                ));
            }
        }
        html.push_str("</ul>");
        html.push_str(&tables);
        html
    }

    fn responses(&self, responses: &Map<String, Value>, webhook: bool) -> String {
        let mut html = format!(
            "<h4>{}</h4><table class=\"responses\"><thead><tr><th>Status</th><th>Meaning</th>\
             </tr></thead><tbody>",
            if webhook { "Your answer" } else { "Responses" }
        );
        for (status, response) in responses {
            let reference = response["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/components/responses/"));
            let response = self.resolve(response);
            let class = match status.chars().next() {
                Some('2') => "ok",
                Some('3') => "redirect",
                Some('4') => "client",
                Some('5') => "server",
                _ => "other",
            };
            html.push_str(&format!(
                "<tr><td><span class=\"status {class}\">{}</span></td><td>{}",
                escape(status),
                blocks(response["description"].as_str().unwrap_or(""))
            ));
            if let Some(name) = reference {
                html.push_str(&format!(
                    "<p class=\"facts\">Shared response <code>{}</code></p>",
                    escape(name)
                ));
            }
            if let Some(headers) = response["headers"].as_object() {
                html.push_str("<p class=\"facts\">Headers: ");
                let list: Vec<String> = headers
                    .iter()
                    .map(|(name, header)| {
                        let header = self.resolve(header);
                        let text = header["description"].as_str().unwrap_or("");
                        format!(
                            "<code>{}</code> ({}){}",
                            escape(name),
                            type_html(&header["schema"]),
                            if text.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", inline(text))
                            }
                        )
                    })
                    .collect();
                html.push_str(&list.join("; "));
                html.push_str("</p>");
            }
            html.push_str(&self.content(&response["content"]));
            html.push_str("</td></tr>");
        }
        html.push_str("</tbody></table>");
        html
    }
}

/// `schema` without its description (shown once, from the parameter).
fn without_description(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.remove("description");
    }
    schema
}

/// The component schemas a page links to that the document lacks: a
/// check for documents and tests.
pub fn dangling_schema_refs(document: &Value) -> Vec<String> {
    let schemas = &document["components"]["schemas"];
    let mut missing = Vec::new();
    let mut stack = vec![document];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(object) => {
                if let Some(name) = object
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(ref_name)
                    && schemas.get(name).is_none()
                    && !missing.iter().any(|m| m == name)
                {
                    missing.push(name.to_owned());
                }
                stack.extend(object.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn document() -> Value {
        json!({
            "openapi": "3.1.0",
            "info": {"title": "Demo <api>", "version": "v1", "description": "Says `hello`."},
            "paths": {
                "/things/{id}": {
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "get": {
                        "tags": ["things"], "operationId": "get_thing", "summary": "Read a thing",
                        "security": [{"bearer": []}],
                        "responses": {
                            "200": {"description": "The thing", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                            "404": {"$ref": "#/components/responses/Missing"}
                        }
                    },
                    "delete": {"tags": ["things"], "responses": {"204": {"description": "Gone"}}}
                },
                "/health": {"get": {"tags": ["system"], "operationId": "health", "responses": {"200": {"description": "Up"}}}}
            },
            "webhooks": {
                "thing.changed": {"post": {
                    "operationId": "thing_changed",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                    "responses": {"2XX": {"description": "Received"}}
                }}
            },
            "components": {
                "schemas": {"Thing": {
                    "type": "object", "required": ["id"], "description": "A <thing>.",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "kind": {"type": "string", "enum": ["a", "b"], "example": "a"}
                    }
                }},
                "responses": {"Missing": {"description": "No such thing"}},
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A key."}}
            },
            "tags": [{"name": "system", "description": "Health"}, {"name": "things"}]
        })
    }

    #[test]
    fn every_operation_webhook_and_schema_is_on_the_page_with_an_anchor() {
        let page = render(&document()).html;
        for needle in [
            "id=\"op-get_thing\"",
            "<span class=\"method get\">GET</span> <code class=\"path\">/things/{id}</code>",
            "id=\"op-delete--things--id-\"",
            "<span class=\"method delete\">DELETE</span>",
            "id=\"op-health\"",
            "id=\"webhook-thing_changed\"",
            "<code class=\"path\">thing.changed</code>",
            "id=\"schema-Thing\"",
            "href=\"#schema-Thing\"",
            "No such thing",
            "<code>&quot;a&quot;</code> | <code>&quot;b&quot;</code>",
            "Authentication: <a href=\"#auth-bearer\">bearer</a>",
            "Authentication: none (public)",
        ] {
            assert!(page.contains(needle), "{needle} is missing from the page");
        }
        // Declared tag order, not path order.
        assert!(page.find("id=\"tag-system\"") < page.find("id=\"tag-things\""));
    }

    #[test]
    fn nothing_of_the_document_reaches_the_page_unescaped() {
        let page = render(&document()).html;
        assert!(page.contains("Demo &lt;api&gt;"));
        assert!(page.contains("A &lt;thing&gt;."));
        assert!(!page.contains("<api>") && !page.contains("<thing>"));
    }

    #[test]
    fn the_page_loads_nothing_and_runs_no_script() {
        let page = render(&document());
        assert!(!page.html.contains("<script"));
        assert!(!page.html.contains("src="));
        assert!(!page.html.contains("<link"));
        assert!(
            page.content_security_policy
                .starts_with("default-src 'none';")
        );
        assert!(page.content_security_policy.contains("style-src 'sha256-"));
    }

    #[test]
    fn a_document_without_paths_still_renders() {
        let page = render(&json!({"openapi": "3.1.0"})).html;
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.ends_with("</html>\n"));
    }

    #[test]
    fn dangling_references_are_found() {
        let mut doc = document();
        doc["paths"]["/health"]["get"]["responses"]["200"]["content"] =
            json!({"application/json": {"schema": {"$ref": "#/components/schemas/Nope"}}});
        assert_eq!(dangling_schema_refs(&doc), ["Nope"]);
        assert!(dangling_schema_refs(&document()).is_empty());
    }
}
