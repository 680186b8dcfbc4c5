//! Request validation against arbitrary input: whatever JSON (or not-JSON)
//! a client sends to the job endpoints, the answer is a success or a `4xx`
//! problem document, never a `5xx` and never a crashed process.

use proptest::{prelude::*, test_runner::TestRunner};
use serde_json::{Map, Value, json};
use ttsq_testkit::{TestApp, TestOptions};

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A job-shaped object: the real field names with plausible or arbitrary
/// values, so validation is exercised past the first error.
fn job_like() -> impl Strategy<Value = Value> {
    let field = |name: &'static str, plausible: BoxedStrategy<Value>| {
        (
            Just(name),
            prop_oneof![3 => plausible, 1 => any_json().boxed()],
        )
    };
    (
        field("text", ".{0,60}".prop_map(Value::from).boxed()),
        field(
            "dialect",
            prop_oneof![Just("en-gb"), Just("fr-fr"), Just("xx-yy"), Just("")]
                .prop_map(Value::from)
                .boxed(),
        ),
        field(
            "format",
            prop_oneof![
                Just("wav"),
                Just("mp3"),
                Just("pcm"),
                Just("ogg_opus"),
                Just("flac")
            ]
            .prop_map(Value::from)
            .boxed(),
        ),
        field("speed", (0.0f64..3.0).prop_map(Value::from).boxed()),
        field(
            "priority",
            prop_oneof![Just("normal"), Just("high"), Just("urgent")]
                .prop_map(Value::from)
                .boxed(),
        ),
        field("voice", ".{0,10}".prop_map(Value::from).boxed()),
        field("metadata", any_json().boxed()),
        proptest::collection::vec(any::<bool>(), 7),
    )
        .prop_map(|(a, b, c, d, e, f, g, keep)| {
            let mut object = Map::new();
            for ((name, value), keep) in [a, b, c, d, e, f, g].into_iter().zip(keep) {
                if keep {
                    object.insert(name.to_owned(), value);
                }
            }
            Value::Object(object)
        })
}

/// A request body: a job-like object, any JSON, or raw bytes.
#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        4 => job_like().prop_map(Body::Json),
        2 => any_json().prop_map(Body::Json),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Body::Raw),
    ]
}

#[test]
fn no_submitted_body_ever_yields_a_server_error() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let app = runtime.block_on(TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    }));
    let cases: u32 = std::env::var("TTSQ_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new(ProptestConfig::with_cases(cases));
    let result = runner.run(&body(), |body| {
        let (status, content_type, answer) = runtime.block_on(async {
            let request = app
                .http
                .post(format!("{}/v1/tts/jobs", app.base_url))
                .bearer_auth(&app.api_key);
            let request = match &body {
                Body::Json(value) => request.json(value),
                Body::Raw(bytes) => request
                    .header("content-type", "application/json")
                    .body(bytes.clone()),
            };
            let response = request.send().await.expect("the API answers");
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let answer = response.bytes().await.expect("a body");
            (status, content_type, answer)
        });
        prop_assert!(
            !status.is_server_error(),
            "{status} for {body:?}: {}",
            String::from_utf8_lossy(&answer)
        );
        if status.is_client_error() {
            prop_assert_eq!(content_type.as_str(), "application/problem+json");
            let problem: Value = serde_json::from_slice(&answer).expect("problem JSON");
            prop_assert_eq!(&problem["status"], &json!(status.as_u16()));
        }
        Ok(())
    });
    runtime.block_on(app.teardown());
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
