//! Request validation against arbitrary input: whatever JSON (or not-JSON)
//! a client sends to the job and batch endpoints, and whatever query it sends
//! for usage, the task list or a batch's page, the answer is a success or a
//! `4xx` problem document, never a `5xx` and never a crashed process.

use proptest::{
    prelude::*,
    test_runner::{TestCaseError, TestRunner},
};
use reqwest::RequestBuilder;
use serde_json::{Map, Value, json};
use ttsq_testkit::{TestApp, TestOptions};

/// Text as a hostile client sends it: plain words, any characters, and
/// words around a NUL, a control character or an invisible format
/// character (soft hyphen, zero-width, bidi controls), which generic
/// strings almost never hold.
fn tricky_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 ]{1,20}",
        1 => ".{0,20}",
        1 => "[a-z]{0,4}[\\x00-\\x1f\\x7f\\u{ad}\\u{200b}-\\u{200f}\\u{202a}-\\u{202e}\\u{feff}][a-z]{0,4}",
    ]
    .boxed()
}

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
        tricky_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(tricky_text(), inner, 0..6)
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
        field("text", tricky_text().prop_map(Value::from).boxed()),
        field(
            "dialect",
            prop_oneof![3 => Just("en-gb"), 1 => Just("fr-fr"), 1 => Just("xx-yy"), 1 => Just("")]
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
                Just("flac"),
                Just("aac")
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
        // Text and dialect mostly present, so that many jobs are valid
        // and reach the database.
        proptest::collection::vec(proptest::bool::weighted(0.9), 2),
        proptest::collection::vec(any::<bool>(), 5),
    )
        .prop_map(|(a, b, c, d, e, f, g, required, optional)| {
            let mut object = Map::new();
            let keep = required.into_iter().chain(optional);
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

/// A batch-shaped object: items that are job-like (with a `custom_id` of any
/// characters), batch fields with plausible or arbitrary values.
fn batch_like() -> impl Strategy<Value = Value> {
    // Mostly valid jobs, so that the batch reaches the database with its
    // custom ids and metadata; sometimes any job-like object.
    let valid_job = (
        "[a-zA-Z]{1,8}( [a-zA-Z]{1,8}){0,3}",
        proptest::option::of(any_json()),
    )
        .prop_map(|(text, metadata)| {
            let mut job = json!({"text": text, "dialect": "en-gb", "format": "wav"});
            if let Some(metadata) = metadata {
                job["metadata"] = metadata;
            }
            job
        });
    let item = (
        prop_oneof![3 => valid_job, 1 => job_like()],
        prop_oneof![
            3 => tricky_text().prop_map(Value::from),
            1 => any_json(),
        ],
        any::<bool>(),
    )
        .prop_map(|(mut job, custom_id, keep)| {
            if keep && let Value::Object(object) = &mut job {
                object.insert("custom_id".to_owned(), custom_id);
            }
            job
        });
    (
        prop_oneof![
            4 => proptest::collection::vec(item, 1..4).prop_map(Value::Array),
            1 => any_json(),
        ],
        any_json(),
        prop_oneof![any::<bool>().prop_map(Value::from), any_json(),],
        prop_oneof![
            tricky_text().prop_map(|path| Value::from(format!("http://93.184.216.34/{path}"))),
            ".{0,20}".prop_map(Value::from),
        ],
        proptest::bool::weighted(0.9),
        proptest::collection::vec(any::<bool>(), 3),
    )
        .prop_map(
            |(items, metadata, concatenate, callback_url, with_items, keep)| {
                let keep = std::iter::once(with_items).chain(keep);
                let mut object = Map::new();
                for ((name, value), keep) in [
                    ("items", items),
                    ("metadata", metadata),
                    ("concatenate", concatenate),
                    ("callback_url", callback_url),
                ]
                .into_iter()
                .zip(keep)
                {
                    if keep {
                        object.insert(name.to_owned(), value);
                    }
                }
                Value::Object(object)
            },
        )
}

fn batch_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        4 => batch_like().prop_map(Body::Json),
        1 => any_json().prop_map(Body::Json),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Body::Raw),
    ]
}

/// A query parameter's value: plausible or arbitrary text.
fn query_value(plausible: BoxedStrategy<String>) -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![3 => plausible, 1 => ".{0,24}".boxed()])
}

/// Dates as a client might send them, years of any width and sign included.
fn date_like() -> BoxedStrategy<String> {
    prop_oneof![
        "[0-9]{4}-[0-9]{2}-[0-9]{2}",
        "[+-]?[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}",
        Just("-262143-01-01".to_owned()),
        Just("+262142-12-31".to_owned()),
    ]
    .boxed()
}

/// `GET` requests with the query parameters of usage, listing and a batch's page.
#[derive(Debug, Clone)]
enum Query {
    Usage(Vec<(&'static str, String)>),
    Jobs(Vec<(&'static str, String)>),
    Batch(Vec<(&'static str, String)>),
}

fn query() -> impl Strategy<Value = Query> {
    let pairs = |values: Vec<(&'static str, Option<String>)>| {
        values
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect::<Vec<_>>()
    };
    let usage = (query_value(date_like()), query_value(date_like()))
        .prop_map(move |(from, to)| Query::Usage(pairs(vec![("from", from), ("to", to)])));
    let cursor = prop_oneof![
        "[0-9a-f]{48}",
        "[0-9a-fA-F]{0,60}",
        any::<i64>().prop_map(|micros| format!("{micros:016x}{}", "00".repeat(16))),
    ]
    .boxed();
    let jobs = (
        query_value(prop_oneof![Just("queued".to_owned()), Just("failed".to_owned())].boxed()),
        query_value("-?[0-9]{1,12}".boxed()),
        query_value(cursor),
    )
        .prop_map(move |(status, limit, cursor)| {
            Query::Jobs(pairs(vec![
                ("status", status),
                ("limit", limit),
                ("cursor", cursor),
            ]))
        });
    let batch = (
        query_value("-?[0-9]{1,12}".boxed()),
        query_value("-?[0-9]{1,12}".boxed()),
    )
        .prop_map(move |(cursor, limit)| {
            Query::Batch(pairs(vec![("cursor", cursor), ("limit", limit)]))
        });
    prop_oneof![usage, jobs, batch]
}

/// Sends `cases` generated requests to a fresh API (no worker) and checks
/// that every answer is a success or a `4xx` problem document.
fn never_a_server_error<S>(strategy: S, request: impl Fn(&TestApp, &S::Value) -> RequestBuilder)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let app = runtime.block_on(TestApp::spawn_with(TestOptions {
        worker: false,
        // Callback URLs are checked (and stored) only with webhooks on.
        env: vec![(
            "TTSQ_WEBHOOKS_SIGNING_KEY".to_owned(),
            "webhook-signing-key-for-tests".to_owned(),
        )],
        ..TestOptions::default()
    }));
    let cases: u32 = std::env::var("TTSQ_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        // Each step of shrinking is a request; a bounded search still ends
        // on a small input, and a failure is reported in seconds.
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strategy, |input| {
        let answer = runtime.block_on(async {
            let response = request(&app, &input)
                .send()
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, content_type, body))
        });
        let (status, content_type, answer) = match answer {
            Ok(answer) => answer,
            Err(error) => return Err(TestCaseError::fail(format!("{error} for {input:?}"))),
        };
        prop_assert!(
            !status.is_server_error(),
            "{status} for {input:?}: {}",
            String::from_utf8_lossy(&answer)
        );
        if status.is_client_error() {
            prop_assert_eq!(content_type.as_str(), "application/problem+json");
            let problem: Value = serde_json::from_slice(&answer).expect("problem JSON");
            prop_assert_eq!(&problem["status"], &json!(status.as_u16()));
        }
        Ok(())
    });
    // Its connections belong to the runtime: dropped inside it.
    runtime.block_on(async move { drop(app) });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// `request` with `body` as JSON or as raw bytes labelled JSON.
fn with_body(request: RequestBuilder, body: &Body) -> RequestBuilder {
    match body {
        Body::Json(value) => request.json(value),
        Body::Raw(bytes) => request
            .header("content-type", "application/json")
            .body(bytes.clone()),
    }
}

#[test]
fn no_submitted_body_ever_yields_a_server_error() {
    never_a_server_error(body(), |app, body| {
        let request = app
            .http
            .post(format!("{}/v1/tts/jobs", app.base_url))
            .bearer_auth(&app.api_key);
        with_body(request, body)
    });
}

#[test]
fn no_batch_body_ever_yields_a_server_error() {
    never_a_server_error(batch_body(), |app, body| {
        let request = app
            .http
            .post(format!("{}/v1/tts/batches", app.base_url))
            .bearer_auth(&app.api_key);
        with_body(request, body)
    });
}

#[test]
fn no_usage_listing_or_batch_page_query_ever_yields_a_server_error() {
    // Any id: a batch's query is read before the batch is looked up.
    let batch = uuid::Uuid::now_v7();
    never_a_server_error(query(), move |app, query| {
        let (path, pairs) = match query {
            Query::Usage(pairs) => ("/v1/usage".to_owned(), pairs),
            Query::Jobs(pairs) => ("/v1/tts/jobs".to_owned(), pairs),
            Query::Batch(pairs) => (format!("/v1/tts/batches/{batch}"), pairs),
        };
        app.http
            .get(format!("{}{path}", app.base_url))
            .bearer_auth(&app.api_key)
            .query(pairs)
    });
}
