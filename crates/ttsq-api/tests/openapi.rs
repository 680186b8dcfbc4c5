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
    let not_found = &doc["paths"]["/v1/tts/jobs/{id}"]["get"]["responses"]["404"]["content"];
    assert_eq!(
        not_found["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// Every `.route("path", method(…))` of the router in `lib.rs` is in the
/// document, so a new route cannot ship undocumented.
#[test]
fn every_route_of_the_router_is_documented() {
    let source = include_str!("../src/lib.rs");
    let doc: serde_json::Value =
        serde_json::from_str(&ttsq_api::openapi::document_json()).expect("valid JSON");
    let mut checked = 0;
    for call in source.split(".route(").skip(1) {
        let Some((path, rest)) = call
            .trim_start()
            .strip_prefix('"')
            .and_then(|c| c.split_once('"'))
        else {
            continue;
        };
        let method = rest
            .trim_start_matches([',', ' ', '\n'])
            .split('(')
            .next()
            .unwrap_or_default()
            .trim();
        assert!(
            doc["paths"][path][method].is_object(),
            "the router serves {method} {path}, but docs/openapi.json does not document it: \
             annotate its handler with #[utoipa::path] and list it in openapi.rs"
        );
        checked += 1;
    }
    assert!(checked >= 10, "found only {checked} routes in lib.rs");
}
