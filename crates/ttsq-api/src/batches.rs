//! Batches: `POST /v1/tts/batches`, `GET` and `DELETE /v1/tts/batches/{id}`.
//!
//! A batch is written in one transaction (tasks inserted with UNNEST, within
//! the tenant's limits for all items together: over a limit the whole batch
//! is refused with 429), then the dispatcher is woken: it publishes the
//! queued items in the tenant's turn, interleaved with other tenants' work.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, value::RawValue};
use ttsq_core::{
    Job, Priority,
    error::ValidationErrors,
    job::{JobRequest, check_metadata, decode_json},
};
use ttsq_store::{BatchRow, NewBatch, NewBatchItem, NewChunk};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    ApiContext, ApiError,
    auth::Caller,
    error::{
        LimitProblem, Problem,
        responses::{BodyTooLarge, NoApiKey, NoSuchBatch, NotJson, Unavailable},
    },
    extract::{IdempotencyKey, JsonBody},
    long_jobs,
    view::{AcceptedBatch, BatchItemView, BatchPage, CancelledBatch},
};

/// Most items in one batch.
pub const MAX_ITEMS: usize = 1_000;

/// Most characters of a `custom_id`.
const MAX_CUSTOM_ID: usize = 256;

/// Default and largest page of items in `GET /v1/tts/batches/{id}`.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1_000;

/// A batch as sent. Items stay raw JSON, borrowed from the body, so that
/// each is decoded on its own (its errors named `items[i].field`) and no
/// more than [`MAX_ITEMS`] of them are ever read: decoding stops at the
/// first item past the bound, and memory follows the body, not the shape of
/// the JSON in it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest<'a> {
    #[serde(borrow, default, deserialize_with = "bounded_items")]
    items: Option<Vec<&'a RawValue>>,
    concatenate: Option<bool>,
    callback_url: Option<String>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
}

/// Reads at most [`MAX_ITEMS`] items, each as its raw JSON, and fails on
/// the next one without reading further.
fn bounded_items<'de, D>(deserializer: D) -> Result<Option<Vec<&'de RawValue>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Items;
    impl<'de> serde::de::Visitor<'de> for Items {
        type Value = Option<Vec<&'de RawValue>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of 1 to {MAX_ITEMS} jobs")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<&'de RawValue>()? {
                if items.len() == MAX_ITEMS {
                    return Err(serde::de::Error::custom(format!(
                        "must hold 1 to {MAX_ITEMS} jobs"
                    )));
                }
                items.push(item);
            }
            Ok(Some(items))
        }
    }
    deserializer.deserialize_option(Items)
}

/// Body of `POST /v1/tts/batches`, for the document: the body is decoded
/// as [`BatchRequest`], each item on its own.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "a schema for the document; the body is decoded as `BatchRequest`"
)]
struct BatchSubmission {
    /// The jobs, 1 to 1,000.
    #[schema(min_items = 1, max_items = 1000)]
    items: Vec<BatchItem>,
    /// Join the items' audio into one file, in order (every item in one
    /// format). The joined audio's length, estimated at submit as the sum
    /// of each item's characters × `batches.estimated_ms_per_char` ÷ its
    /// speed, must stay within `batches.max_joined_duration_secs` (4 hours
    /// by default); over it the batch is a `400` naming `concatenate`. A
    /// joined file over `batches.max_joined_bytes` is not made: the batch
    /// completes with `concatenate_error`.
    concatenate: Option<bool>,
    /// URL told once, when every item is terminal.
    callback_url: Option<String>,
    /// Client's own JSON, returned with the batch: at most
    /// `limits.max_metadata_bytes` as JSON, no U+0000.
    metadata: Option<Value>,
}

/// One job of a batch: a job's fields but `callback_url` (the batch has
/// the one callback) and `priority` other than `normal` (batches are
/// queued), with an optional `custom_id`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "a schema for the document; items are decoded as `JobRequest`"
)]
struct BatchItem {
    /// Text to speak.
    #[schema(min_length = 1, example = "Hello there.")]
    text: String,
    /// Dialect id from the catalog.
    #[schema(example = "en-gb")]
    dialect: String,
    /// Voice id of that dialect.
    voice: Option<String>,
    /// Speaking rate factor.
    #[schema(minimum = 0.5, maximum = 2.0, example = 1.0)]
    speed: Option<f64>,
    /// Emotion, where the dialect offers any.
    emotion: Option<String>,
    /// Output format.
    format: Option<ttsq_core::AudioFormat>,
    /// Only `normal`.
    priority: Option<Priority>,
    /// Client's own JSON, returned as given: at most
    /// `limits.max_metadata_bytes` as JSON, no U+0000.
    metadata: Option<Value>,
    /// Speech marks to produce: any of `word`, `sentence`, `viseme`.
    marks: Option<Vec<String>>,
    /// The client's own id of the item, unique within the batch and
    /// returned with it: 1 to 256 characters, no control characters.
    #[schema(min_length = 1, max_length = 256)]
    custom_id: Option<String>,
}

/// `POST /v1/tts/batches`: submit up to 1,000 jobs in one request, all or none (202).
#[utoipa::path(
    post,
    path = "/v1/tts/batches",
    operation_id = "submit_batch",
    tag = "batches",
    request_body = BatchSubmission,
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key from the same tenant returns the first batch")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted (or the first batch of this `Idempotency-Key`); `Location` is `status_url`", body = AcceptedBatch),
        (status = 400, description = "Invalid batch; `errors` names each item field (`items[3].text`), or `concatenate` when the joined audio would be too long", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = NoApiKey),
        (status = 413, response = BodyTooLarge),
        (status = 415, response = NotJson),
        (status = 429, description = "Over a tenant limit; nothing written", body = LimitProblem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.0.tenant_id, batch_id, items))]
pub async fn submit(
    State(context): State<ApiContext>,
    caller: Caller,
    idempotency_key: Result<IdempotencyKey, ApiError>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request: BatchRequest<'_> = decode_json(&body)?;
    let mut errors = ValidationErrors::default();
    let raw_items = request.items.unwrap_or_default();
    if raw_items.is_empty() || raw_items.len() > MAX_ITEMS {
        errors.push("items", format!("must hold 1 to {MAX_ITEMS} jobs"));
        return Err(errors.into());
    }
    let metadata = match request.metadata {
        Some(raw) => match decode_bounded::<Value>(raw, context.max_body_bytes) {
            Ok(metadata) => {
                if let Err(reason) = check_metadata(&metadata, context.limits.max_metadata_bytes) {
                    errors.push("metadata", reason);
                }
                Some(metadata)
            }
            Err(reason) => {
                errors.push("metadata", reason);
                None
            }
        },
        None => None,
    };
    let mut jobs = Vec::with_capacity(raw_items.len());
    let mut custom_ids: Vec<Option<String>> = Vec::with_capacity(raw_items.len());
    let mut seen = std::collections::HashSet::new();
    for (index, item) in raw_items.into_iter().enumerate() {
        let prefix = format!("items[{index}]");
        match parse_item(&context, item, &prefix) {
            Ok((job, custom_id)) => {
                if let Some(id) = &custom_id
                    && !seen.insert(id.clone())
                {
                    errors.push(
                        format!("{prefix}.custom_id"),
                        "is used by an earlier item; custom ids are unique within a batch",
                    );
                }
                jobs.push(job);
                custom_ids.push(custom_id);
            }
            Err(item_errors) => errors.0.extend(item_errors.0),
        }
    }
    let concatenate = request.concatenate.unwrap_or(false);
    if concatenate && let Some(first) = jobs.first() {
        for (index, job) in jobs.iter().enumerate() {
            if job.format != first.format {
                errors.push(
                    format!("items[{index}].format"),
                    "must be the format of every other item when `concatenate` is true",
                );
            }
        }
    }
    if concatenate && let Some(reason) = joined_too_long(&context.batches, &jobs) {
        errors.push("concatenate", reason);
    }
    if !errors.0.is_empty() {
        return Err(errors.into());
    }
    if let Some(url) = &request.callback_url {
        context.webhooks.check_target("callback_url", url).await?;
    }
    if jobs
        .iter()
        .any(|job| context.content_filter.blocks(&job.text))
    {
        tracing::info!("batch refused by the content filter");
        return Err(ApiError::ContentRejected);
    }
    let IdempotencyKey(idempotency_key) = idempotency_key?;
    let scope = caller.0.cache_scope();
    // Each long item's chunks (none for the others), and its hash theirs.
    let mut chunks = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter_mut().enumerate() {
        job.scope_cache(&scope);
        match long_jobs::split(job, context.providers.catalog(), &context.limits, &scope) {
            Ok(item_chunks) => chunks.push(item_chunks),
            Err(item_errors) => errors.0.extend(item_errors.0.into_iter().map(|mut e| {
                e.field = format!("items[{index}].{}", e.field);
                e
            })),
        }
    }
    if !errors.0.is_empty() {
        return Err(errors.into());
    }

    let hashes: Vec<String> = jobs
        .iter()
        .zip(&chunks)
        .flat_map(|(job, item_chunks)| {
            std::iter::once(&job.hash).chain(item_chunks.iter().map(|c| &c.job.hash))
        })
        .map(|hash| hash.as_str().to_owned())
        .collect();
    let cached = context.store.find_audio_many(&hashes).await?;
    let cache_hit = |hash: &ttsq_core::ContentHash| {
        cached
            .get(hash.as_str())
            .map(|object| ttsq_synthesis::cache_hit(&context.providers, object))
    };
    let batch_id = Uuid::now_v7();
    let span = tracing::Span::current();
    span.record("batch_id", tracing::field::display(batch_id));
    span.record("items", jobs.len());
    let items: Vec<NewBatchItem<'_>> = jobs
        .iter()
        .zip(&custom_ids)
        .zip(&chunks)
        .map(|((job, custom_id), item_chunks)| NewBatchItem {
            task_id: Uuid::now_v7(),
            job,
            custom_id: custom_id.as_deref(),
            cached: cache_hit(&job.hash),
            estimate: context.estimate_cost(job),
            chunks: item_chunks
                .iter()
                .map(|chunk| NewChunk {
                    task_id: Uuid::now_v7(),
                    job: &chunk.job,
                    offset: long_jobs::offset(chunk),
                    estimate: context.estimate_cost(&chunk.job),
                    cached: cache_hit(&chunk.job.hash),
                })
                .collect(),
        })
        .collect();
    // The workers continue this request's trace from the items' messages.
    let traceparent = ttsq_telemetry::trace_context::current_traceparent();
    let batch = NewBatch {
        id: batch_id,
        tenant_id: caller.0.tenant_id,
        items: items.clone(),
        concatenate,
        callback_url: request.callback_url.as_deref(),
        metadata: metadata.as_ref(),
        idempotency_key: idempotency_key.as_deref(),
        key_prefix: Some(&caller.0.key_prefix),
        traceparent: traceparent.as_deref(),
    };
    let (row, task_ids, created) = match context.store.insert_batch(&batch).await {
        Err(ttsq_store::StoreError::LimitExceeded(e)) => {
            tracing::info!(limit = e.limit.as_str(), "batch refused by a tenant limit");
            return Err(ApiError::LimitExceeded(e));
        }
        other => other?,
    };
    if created {
        context.dispatch.wake();
        tracing::info!(
            cache_hits = items.iter().filter(|i| i.cached.is_some()).count(),
            "batch accepted"
        );
    } else {
        tracing::debug!("idempotent repeat of an earlier batch");
    }
    let url = context.batch_url(row.id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(AcceptedBatch {
            batch_id: row.id,
            status: row.status,
            task_ids,
            status_url: url.clone(),
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&url) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Why the joined audio of `jobs` would be too long, if it would: its
/// length is estimated from each item's characters and speed, since the
/// audio does not exist yet, and bounded so that one batch cannot ask the
/// workers for hours of joined audio (the join is checked in bytes too).
fn joined_too_long(settings: &ttsq_config::BatchSettings, jobs: &[Job]) -> Option<String> {
    let estimated_ms: f64 = jobs
        .iter()
        .map(|job| settings.estimated_ms(job.characters, job.speed))
        .sum();
    let max_secs = settings.max_joined_duration_secs;
    (estimated_ms > max_secs as f64 * 1000.0).then(|| {
        format!(
            "the joined audio would last about {:.0} seconds (estimated from the items' \
             characters and speed), over the limit of {max_secs} seconds for a concatenated \
             batch; split the batch, or submit it without `concatenate`",
            estimated_ms / 1000.0
        )
    })
}

/// The largest batch body: room for [`MAX_ITEMS`] jobs of the single-job size.
pub fn batch_body_limit(max_body_bytes: usize) -> usize {
    max_body_bytes.saturating_mul(32)
}

/// Decodes a part of a batch body that may be at most `max_bytes` long, the
/// size of a single job's whole body: one part cannot take more memory than
/// a request of its own could.
fn decode_bounded<T: serde::de::DeserializeOwned>(
    raw: &RawValue,
    max_bytes: usize,
) -> Result<T, String> {
    if raw.get().len() > max_bytes {
        return Err(format!(
            "is larger than {max_bytes} bytes of JSON, the most a single job's body may be"
        ));
    }
    serde_json::from_str(raw.get()).map_err(|err| err.to_string())
}

/// Decodes and validates one item, naming its fields `{prefix}.field`.
fn parse_item(
    context: &ApiContext,
    raw: &RawValue,
    prefix: &str,
) -> Result<(Job, Option<String>), ValidationErrors> {
    let renamed = |errors: ValidationErrors| {
        ValidationErrors(
            errors
                .0
                .into_iter()
                .map(|mut e| {
                    e.field = if e.field.is_empty() {
                        prefix.to_owned()
                    } else {
                        format!("{prefix}.{}", e.field)
                    };
                    e
                })
                .collect(),
        )
    };
    let item = match decode_bounded::<Value>(raw, context.max_body_bytes) {
        Ok(item) => item,
        Err(reason) => {
            let mut errors = ValidationErrors::default();
            errors.push(prefix, reason);
            return Err(errors);
        }
    };
    let Value::Object(mut object) = item else {
        let mut errors = ValidationErrors::default();
        errors.push(prefix, "must be a job object");
        return Err(errors);
    };
    let mut errors = ValidationErrors::default();
    let custom_id = match object.remove("custom_id") {
        None | Some(Value::Null) => None,
        // No control characters: Postgres refuses U+0000 in text, and an
        // id is for matching, not for laying out.
        Some(Value::String(id))
            if (1..=MAX_CUSTOM_ID).contains(&id.chars().count())
                && !id.chars().any(char::is_control) =>
        {
            Some(id)
        }
        Some(_) => {
            errors.push(
                "custom_id",
                format!(
                    "must be a string of 1 to {MAX_CUSTOM_ID} characters without control characters"
                ),
            );
            None
        }
    };
    if object.contains_key("callback_url") {
        errors.push(
            "callback_url",
            "items of a batch have no callback of their own; set `callback_url` on the batch",
        );
        object.remove("callback_url");
    }
    let bytes = serde_json::to_vec(&Value::Object(object)).unwrap_or_default();
    let request: JobRequest = match decode_json(&bytes) {
        Ok(request) => request,
        Err(more) => {
            errors.0.extend(more.0);
            return Err(renamed(errors));
        }
    };
    let job = match Job::validate(request, context.providers.catalog(), &context.limits) {
        Ok(job) => Some(job),
        Err(more) => {
            errors.0.extend(more.0);
            None
        }
    };
    if let Some(job) = &job
        && job.priority == Priority::High
    {
        errors.push(
            "priority",
            "batches are queued; submit high-priority jobs to POST /v1/tts/jobs",
        );
    }
    match job {
        Some(job) if errors.0.is_empty() => Ok((job, custom_id)),
        _ => Err(renamed(errors)),
    }
}

async fn find_batch(
    context: &ApiContext,
    caller: &Caller,
    raw_id: &str,
) -> Result<BatchRow, ApiError> {
    let id = Uuid::parse_str(raw_id).map_err(|_| ApiError::NotFound("batch"))?;
    context
        .store
        .get_batch(caller.0.tenant_id, id)
        .await?
        .ok_or(ApiError::NotFound("batch"))
}

/// Query of `GET /v1/tts/batches/{id}`.
#[derive(Deserialize)]
pub struct PageQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/tts/batches/{id}`: counts per status and a page of items.
#[utoipa::path(
    get,
    path = "/v1/tts/batches/{id}",
    operation_id = "get_batch",
    tag = "batches",
    params(
        ("id" = Uuid, Path, description = "Batch id"),
        ("cursor" = Option<String>, Query, description = "The previous page's `next_cursor`", pattern = "^[0-9]{1,9}$"),
        ("limit" = Option<u32>, Query, description = "Items per page, 1 to 1,000 (default 100)", minimum = 1, maximum = 1000),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Counts per status, a page of items, `next_cursor`, `concatenated_audio_url`", body = BatchPage),
        (status = 400, description = "Bad cursor or limit", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = NoApiKey),
        (status = 404, response = NoSuchBatch),
    )
)]
#[tracing::instrument(skip_all, fields(batch_id = %id))]
pub async fn get(
    State(context): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BatchPage>, ApiError> {
    let query = query.map_err(|e| ApiError::field("", e.body_text()))?.0;
    let after = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(raw) => Some(
            raw.parse::<i32>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this API returned"))?,
        ),
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::field("limit", format!("must be 1 to {MAX_PAGE}")))?,
    };
    let batch = find_batch(&context, &caller, &id).await?;
    let rows = context.store.batch_items(batch.id, after, limit).await?;
    let next_cursor = match rows.last() {
        Some(last)
            if i64::try_from(rows.len()).unwrap_or(0) == limit
                && last.batch_index + 1 < batch.items =>
        {
            Some(last.batch_index.to_string())
        }
        _ => None,
    };
    let mut data = Vec::with_capacity(rows.len());
    for row in rows {
        data.push(BatchItemView::render(&context.audio, row).await?);
    }
    Ok(Json(BatchPage {
        batch: context.batch_view(batch).await?,
        data,
        next_cursor,
    }))
}

/// `DELETE /v1/tts/batches/{id}`: cancels the items still queued; finished
/// and running items are kept. Answers the batch as it is then.
#[utoipa::path(
    delete,
    path = "/v1/tts/batches/{id}",
    operation_id = "cancel_batch",
    tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Queued items cancelled; the batch as it is now", body = CancelledBatch),
        (status = 401, response = NoApiKey),
        (status = 404, response = NoSuchBatch),
    )
)]
#[tracing::instrument(skip_all, fields(batch_id = %id))]
pub async fn cancel(
    State(context): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CancelledBatch>, ApiError> {
    let batch = find_batch(&context, &caller, &id).await?;
    let cancelled = context
        .store
        .cancel_batch(caller.0.tenant_id, batch.id)
        .await?
        .ok_or(ApiError::NotFound("batch"))?;
    tracing::info!(cancelled, "batch cancelled");
    context.dispatch.wake();
    let batch = find_batch(&context, &caller, &id).await?;
    Ok(Json(CancelledBatch {
        batch: context.batch_view(batch).await?,
        cancelled_items: cancelled,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_metadata_is_no_metadata_and_items_past_the_bound_stop_decoding() {
        let request: BatchRequest<'_> =
            decode_json(br#"{"items": [{"text": "a"}], "metadata": null}"#).expect("decodes");
        assert!(request.metadata.is_none());
        assert_eq!(request.items.map(|i| i.len()), Some(1));

        let too_many = format!("{{\"items\": [{}]}}", vec!["0"; MAX_ITEMS + 1].join(","));
        let errors = decode_json::<BatchRequest<'_>>(too_many.as_bytes())
            .err()
            .expect("refused");
        assert_eq!(errors.0[0].field, "items", "{errors:?}");
    }
}
