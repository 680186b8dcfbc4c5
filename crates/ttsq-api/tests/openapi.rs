//! The committed OpenAPI document (`docs/openapi.json`) is the one the code
//! generates. Regenerate it with `UPDATE_OPENAPI=1` on this test, or
//! `ttsq openapi > docs/openapi.json`.

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let generated = ttsq_api::openapi::document_json();
    let path = committed_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("docs/openapi.json is writable");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is out of date with the code; regenerate it with \
         `UPDATE_OPENAPI=1 cargo nextest run -p ttsq-api --test openapi` \
         (or `ttsq openapi > docs/openapi.json`) and commit it"
    );
}

#[test]
fn the_document_is_openapi_3_1_and_covers_every_route_and_the_error_shapes() {
    let doc: serde_json::Value =
        serde_json::from_str(&ttsq_api::openapi::document_json()).expect("valid JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    let routes = [
        ("post", "/v1/tts/jobs"),
        ("get", "/v1/tts/jobs"),
        ("get", "/v1/tts/jobs/{id}"),
        ("delete", "/v1/tts/jobs/{id}"),
        ("get", "/v1/tts/jobs/{id}/audio"),
        ("get", "/v1/dialects"),
        ("post", "/v1/audio/speech"),
        ("get", "/health"),
        ("get", "/ready"),
        ("get", "/openapi.json"),
        ("get", "/docs"),
    ];
    for (method, path) in routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for schema in [
        "Problem",
        "FieldError",
        "TaskView",
        "OpenAiError",
        "JobRequest",
    ] {
        assert!(schemas[schema].is_object(), "schema {schema} is missing");
    }
    let not_found = resolved(
        &doc,
        &doc["paths"]["/v1/tts/jobs/{id}"]["get"]["responses"]["404"],
    );
    assert_eq!(
        not_found["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    // Every error answer of the `/v1` routes but the OpenAI-compatible one
    // is problem+json, whether written out or declared once under
    // `components.responses`.
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/v1/") || path == "/v1/audio/speech" {
            continue;
        }
        for (method, op) in ops.as_object().expect("operations") {
            for (status, response) in op["responses"].as_object().expect("responses") {
                if status.starts_with('4') || status.starts_with('5') {
                    let response = resolved(&doc, response);
                    assert!(
                        response["content"]["application/problem+json"]["schema"]["$ref"]
                            .is_string(),
                        "{method} {path} {status} is not problem+json: {response}"
                    );
                }
            }
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// A response, or the one its `$ref` names under `components.responses`.
fn resolved<'a>(
    doc: &'a serde_json::Value,
    response: &'a serde_json::Value,
) -> &'a serde_json::Value {
    match response["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/responses/")
                .unwrap_or_else(|| panic!("{reference} is no response component"));
            let component = &doc["components"]["responses"][name];
            assert!(component.is_object(), "{reference} is not declared");
            component
        }
        None => response,
    }
}

/// The sources whose routers make up the API: `lib.rs` and every module it
/// merges in with `.merge(module::routes())`.
const ROUTER_SOURCES: [(&str, &str); 3] = [
    ("lib", include_str!("../src/lib.rs")),
    ("admin", include_str!("../src/admin.rs")),
    ("tenant_webhooks", include_str!("../src/tenant_webhooks.rs")),
];

/// Every method of every `.route("path", get(…).post(…))` call in `source`.
fn routes_in(source: &str) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for call in source.split(".route(").skip(1) {
        let Some((path, rest)) = call
            .trim_start()
            .strip_prefix('"')
            .and_then(|c| c.split_once('"'))
        else {
            continue;
        };
        // The arguments of this call: up to its closing parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(rest.len(), |(i, _)| i);
        let args = &rest[..end];
        for method in ["get", "post", "put", "patch", "delete"] {
            let needle = format!("{method}(");
            let calls = args.match_indices(&needle).filter(|(i, _)| {
                args[..*i]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
            });
            for _ in calls {
                routes.push((method.to_owned(), path.to_owned()));
            }
        }
    }
    routes
}

/// Every route of the router (in `lib.rs` and the routers it merges) is in
/// the document, so a new route cannot ship undocumented.
#[test]
fn every_route_of_the_router_is_documented() {
    let doc: serde_json::Value =
        serde_json::from_str(&ttsq_api::openapi::document_json()).expect("valid JSON");
    // A router merged from a module this test does not read would escape it.
    let lib = ROUTER_SOURCES[0].1;
    for merged in lib.split(".merge(").skip(1) {
        let module = merged.split("::").next().unwrap_or_default().trim();
        assert!(
            ROUTER_SOURCES.iter().any(|(name, _)| *name == module),
            "lib.rs merges `{module}::routes()`; add src/{module}.rs to ROUTER_SOURCES"
        );
    }
    let mut checked = 0;
    for (module, source) in ROUTER_SOURCES {
        let routes = routes_in(source);
        assert!(!routes.is_empty(), "found no routes in {module}.rs");
        for (method, path) in routes {
            assert!(
                doc["paths"][&path][&method].is_object(),
                "the router serves {method} {path} ({module}.rs), but docs/openapi.json does not \
                 document it: annotate its handler with #[utoipa::path] and list it in openapi.rs"
            );
            checked += 1;
        }
    }
    assert!(checked >= 21, "found only {checked} routes");
}

#[test]
fn the_route_scanner_reads_chained_methods_across_lines() {
    let source = r#"Router::new()
        .route("/a", get(list).post(create))
        .route(
            "/a/{id}",
            get(one).patch(update),
        )
        .route("/b", delete(remove))
        .fallback(other)"#;
    let routes = routes_in(source);
    let pairs: Vec<(&str, &str)> = routes
        .iter()
        .map(|(m, p)| (m.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("get", "/a"),
            ("post", "/a"),
            ("get", "/a/{id}"),
            ("patch", "/a/{id}"),
            ("delete", "/b"),
        ]
    );
}

/// The admin API, the tenant limits and the content filter are documented
/// with their own security scheme and problem shapes.
#[test]
fn admin_limits_and_content_refusals_are_documented() {
    let doc: serde_json::Value =
        serde_json::from_str(&ttsq_api::openapi::document_json()).expect("valid JSON");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["admin_token"]["scheme"], "bearer");
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let scheme = if path.starts_with("/v1/admin/") {
                Some("admin_token")
            } else if path.starts_with("/v1/") {
                Some("bearer")
            } else {
                None
            };
            if let Some(scheme) = scheme {
                assert!(
                    op["security"][0][scheme].is_array(),
                    "{method} {path} does not require {scheme}"
                );
            }
        }
    }
    for path in ["/v1/tts/jobs", "/v1/audio/speech"] {
        let limited = &doc["paths"][path]["post"]["responses"]["429"];
        assert!(
            limited["headers"]["Retry-After"].is_object(),
            "{path}: 429 without Retry-After"
        );
    }
    let limited = &doc["paths"]["/v1/tts/jobs"]["post"]["responses"]["429"]["content"];
    assert_eq!(
        limited["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/LimitProblem"
    );
    let limit_fields = &doc["components"]["schemas"]["LimitProblem"]["allOf"][1]["properties"];
    for field in ["limit", "limit_value", "usage", "requested", "retry_after"] {
        assert!(
            limit_fields[field].is_object(),
            "LimitProblem lacks {field}"
        );
    }
    assert!(doc["paths"]["/v1/tts/jobs"]["post"]["responses"]["422"].is_object());
    assert!(
        doc["paths"]["/v1/audio/speech"]["post"]["responses"]["400"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("content_rejected"))
    );
}

/// Every schema node of `value` (recursively) that is a bare
/// `{"type": "object"}`: a body or field the document does not describe.
fn untyped_objects(value: &serde_json::Value, at: &str, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(object) => {
            let is_object_type = match object.get("type") {
                Some(serde_json::Value::String(t)) => t == "object",
                Some(serde_json::Value::Array(ts)) => ts.iter().any(|t| t == "object"),
                _ => false,
            };
            let described = [
                "properties",
                "additionalProperties",
                "allOf",
                "oneOf",
                "anyOf",
                "$ref",
            ]
            .iter()
            .any(|key| object.contains_key(*key));
            if is_object_type && !described {
                found.push(at.to_owned());
            }
            for (key, child) in object {
                untyped_objects(child, &format!("{at}/{key}"), found);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                untyped_objects(child, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// Request and response bodies, webhook payloads and schema fields are
/// typed: no `{"type": "object"}` says nothing of its fields. Only the
/// description of this document itself (`OpenApiDocument`) keeps its
/// members open, being the OpenAPI format's own.
#[test]
fn no_body_or_field_is_an_untyped_object() {
    let doc: serde_json::Value =
        serde_json::from_str(&ttsq_api::openapi::document_json()).expect("valid JSON");
    let mut found = Vec::new();
    untyped_objects(&doc, "", &mut found);
    found.retain(|at| !at.starts_with("/components/schemas/OpenApiDocument/"));
    assert!(
        found.is_empty(),
        "untyped objects in the document: {found:#?}"
    );
    assert!(
        ttsq_apidoc::dangling_schema_refs(&doc).is_empty(),
        "references to missing schemas: {:?}",
        ttsq_apidoc::dangling_schema_refs(&doc)
    );
}

/// The document's `webhooks` names every event ttsq sends (the events the
/// `webhook_deliveries.event` column allows), each a signed POST whose body
/// is the component schema of the type `ttsq-webhooks` serialises.
#[test]
fn every_webhook_event_is_documented_with_its_body_and_signature_headers() {
    let doc: serde_json::Value =
        serde_json::from_str(&ttsq_api::openapi::document_json()).expect("valid JSON");
    let migrations = include_str!("../../../migrations/20261124100001_batches_webhooks.sql");
    for (event, schema) in [
        ("task.completed", "TaskCompletedEvent"),
        ("batch.completed", "BatchCompletedEvent"),
    ] {
        assert!(
            migrations.contains(&format!("'{event}'")),
            "{event} is not an event of the schema"
        );
        let post = &doc["webhooks"][event]["post"];
        assert!(post.is_object(), "webhook {event} is not documented");
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{schema}")
        );
        let headers: Vec<&str> = post["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter(|p| p["in"] == "header")
            .filter_map(|p| p["name"].as_str())
            .collect();
        for header in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            assert!(headers.contains(&header), "{event} lacks {header}");
        }
        let body = &doc["components"]["schemas"][schema];
        assert_eq!(
            body["properties"]["type"]["$ref"].as_str().map(|r| {
                let name = r.trim_start_matches("#/components/schemas/");
                doc["components"]["schemas"][name]["enum"].clone()
            }),
            Some(serde_json::json!([event])),
            "{schema}.type is not exactly {event}"
        );
    }
    assert_eq!(
        doc["webhooks"].as_object().map(serde_json::Map::len),
        Some(2),
        "a webhook event is documented that ttsq does not send"
    );
}

/// The reference page of `/docs` has a section for every operation and
/// webhook of the document and for every schema (the browser test in
/// `crates/ttsq/tests/it/docs.rs` checks the page as served and rendered).
#[test]
fn the_reference_page_has_a_section_for_every_operation_webhook_and_schema() {
    let doc: serde_json::Value =
        serde_json::from_str(&ttsq_api::openapi::document_json()).expect("valid JSON");
    let page = ttsq_apidoc::render(&doc).html;
    for (member, prefix) in [("paths", "op"), ("webhooks", "webhook")] {
        for (path, item) in doc[member].as_object().expect("operations") {
            for (method, operation) in item.as_object().expect("a path item") {
                let id = operation["operationId"].as_str().expect("an operation id");
                let heading = format!(
                    "<span class=\"method {method}\">{}</span> <code class=\"path\">{path}</code>",
                    method.to_ascii_uppercase()
                );
                assert!(
                    page.contains(&format!("id=\"{prefix}-{id}\"")) && page.contains(&heading),
                    "{method} {path} has no section on the page"
                );
            }
        }
    }
    for name in doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
    {
        assert!(
            page.contains(&format!("id=\"schema-{name}\"")),
            "schema {name} has no section"
        );
    }
}

/// utoipa names a component after its Rust type alone, and of two types of
/// the same name the document keeps one: the other's routes then point at
/// the wrong body (`GET /v1/usage` once documented an admin limit's usage).
/// Every type that derives `ToSchema`, in the crates whose types the document
/// lists, has a name of its own.
#[test]
fn no_two_schema_types_share_a_name() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../");
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for krate in ["ttsq-api", "ttsq-views", "ttsq-core", "ttsq-store"] {
        let mut dirs = vec![root.join(krate).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("a source folder") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let source = std::fs::read_to_string(&path).expect("a source file");
                    for name in schema_types(&source) {
                        seen.entry(name)
                            .or_default()
                            .push(path.display().to_string());
                    }
                }
            }
        }
    }
    let shared: Vec<_> = seen.iter().filter(|(_, files)| files.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "schema types of the same name (rename one): {shared:?}"
    );
    assert!(seen.contains_key("SpeechRequest"), "the scan finds types");
}

/// The names of the types a source file derives `ToSchema` for.
fn schema_types(source: &str) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut names = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !(line.contains("derive(") && line.contains("ToSchema")) {
            continue;
        }
        for next in lines.iter().skip(i + 1).take(12) {
            let words: Vec<&str> = next.split_whitespace().collect();
            if let Some(at) = words.iter().position(|w| *w == "struct" || *w == "enum") {
                if let Some(name) = words.get(at + 1) {
                    let name: String = name
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    names.push(name);
                }
                break;
            }
        }
    }
    names
}
