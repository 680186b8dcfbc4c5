//! Webhook events, their delivery log and tenants' webhook settings.
//!
//! Events are written by a trigger in the transaction that makes a task (or
//! a batch) terminal, so none is missed; each is then relayed to the
//! `ttsq.webhooks` queue like a task through the outbox (`published_at`).
//! Every HTTP attempt is logged in `webhook_attempts`.

use std::{future::Future, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::json;
use uuid::Uuid;

use crate::{Store, StoreError, audit::AdminAction};

/// One webhook event to deliver.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookDelivery {
    /// Delivery id (also sent as `webhook-id`, for receivers to dedupe).
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// `task.completed` or `batch.completed`.
    pub event: String,
    /// The task, for a task event.
    pub task_id: Option<Uuid>,
    /// The batch, for a batch event.
    pub batch_id: Option<Uuid>,
    /// Where to POST.
    pub target_url: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
}

/// How an attempt ended, for [`Store::record_webhook_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Failed; another attempt follows.
    Retrying,
    /// Failed for the last time.
    Failed,
}

/// A tenant's webhook settings and secret versions.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantWebhook {
    /// Tenant id.
    pub tenant_id: Uuid,
    /// Default target of its events.
    pub webhook_url: Option<String>,
    /// Version of the current signing secret.
    pub secret_version: i32,
    /// Version of the previous secret while it still signs (rotation grace).
    pub previous_version: Option<i32>,
}

const DELIVERY_COLUMNS: &str =
    "id, tenant_id, event, task_id, batch_id, target_url, status, attempts";

impl Store {
    /// Publishes up to `limit` pending events whose message is not known to
    /// be published, with `publish` (returns the id when confirmed), and
    /// marks those that went out; rows are locked with `SKIP LOCKED`.
    ///
    /// A tenant never has more than `per_tenant` × its weight events
    /// published and not yet settled (in the queue, being delivered, or
    /// waiting for a retry): its next events stay here until one settles.
    /// The oldest events of each tenant go first, and tenants take turns by
    /// weight when more are waiting than `limit`; relays running at once on
    /// several replicas pick the same rows and skip each other's.
    pub async fn relay_webhooks<F, Fut>(
        &self,
        limit: i64,
        per_tenant: i64,
        publish: F,
    ) -> Result<usize, StoreError>
    where
        F: Fn(WebhookDelivery) -> Fut,
        Fut: Future<Output = Option<Uuid>>,
    {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "WITH in_flight AS (
                 SELECT tenant_id, count(*) AS n FROM webhook_deliveries
                  WHERE status = 'pending' AND published_at IS NOT NULL
                  GROUP BY tenant_id
             ), ranked AS (
                 SELECT d.id, tn.weight, coalesce(f.n, 0)
                          + row_number() OVER (PARTITION BY d.tenant_id ORDER BY d.created_at) AS slot
                   FROM webhook_deliveries d
                   JOIN tenants tn ON tn.id = d.tenant_id
                   LEFT JOIN in_flight f ON f.tenant_id = d.tenant_id
                  WHERE d.status = 'pending' AND d.published_at IS NULL
             )
             SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries w
               JOIN ranked r USING (id)
              WHERE r.slot <= $2 * r.weight
              ORDER BY r.slot::float8 / r.weight, w.created_at
              LIMIT $1
                FOR UPDATE OF w SKIP LOCKED"
        );
        let rows: Vec<WebhookDelivery> = sqlx::query_as(&sql)
            .bind(limit)
            .bind(per_tenant)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let published: Vec<Uuid> = join_all(rows.into_iter().map(&publish))
            .await
            .into_iter()
            .flatten()
            .collect();
        sqlx::query("UPDATE webhook_deliveries SET published_at = now() WHERE id = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(published.len())
    }

    /// One event by id.
    pub async fn webhook_delivery(&self, id: Uuid) -> Result<Option<WebhookDelivery>, StoreError> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1");
        Ok(sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Logs attempt number `attempt` of an event and updates the event's
    /// state. A retry's message is published after this; should that fail,
    /// `published_at` is cleared here already so the relay publishes it.
    pub async fn record_webhook_attempt(
        &self,
        delivery: &WebhookDelivery,
        attempt: i32,
        started_at: DateTime<Utc>,
        status_code: Option<u16>,
        error: Option<&str>,
        outcome: AttemptOutcome,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, tenant_id, target_url, event, attempt,
                                           status_code, error, started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(delivery.id)
        .bind(delivery.tenant_id)
        .bind(&delivery.target_url)
        .bind(&delivery.event)
        .bind(attempt)
        .bind(status_code.map(i32::from))
        .bind(error)
        .bind(started_at)
        .execute(&mut *tx)
        .await?;
        let status = match outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retrying => "pending",
            AttemptOutcome::Failed => "failed",
        };
        sqlx::query(
            "UPDATE webhook_deliveries
                SET status = $2, attempts = greatest(attempts, $3), last_status_code = $4,
                    last_error = $5, last_attempt_at = now(),
                    delivered_at = CASE WHEN $2 = 'delivered' THEN now() END
              WHERE id = $1",
        )
        .bind(delivery.id)
        .bind(status)
        .bind(attempt)
        .bind(status_code.map(i32::from))
        .bind(error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks an event's message unpublished, for the relay to send again
    /// (a retry that could not be queued).
    pub async fn unpublish_webhook(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE webhook_deliveries SET published_at = NULL WHERE id = $1")
            .bind(id)
            .execute(&mut *self.pool.acquire().await?)
            .await?;
        Ok(())
    }

    /// Sends events again: the one with `id`, or every one created since
    /// `since` that is not pending. They become pending with their attempt
    /// count reset and the relay publishes them. Returns how many.
    pub async fn replay_webhooks(
        &self,
        id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE webhook_deliveries
                SET status = 'pending', published_at = NULL, attempts = 0
              WHERE status <> 'pending'
                AND ($1::uuid IS NULL OR id = $1)
                AND ($2::timestamptz IS NULL OR created_at >= $2)
                AND ($1::uuid IS NOT NULL OR $2::timestamptz IS NOT NULL)",
        )
        .bind(id)
        .bind(since)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// A tenant's webhook settings; the previous secret version only while
    /// its grace period lasts.
    pub async fn tenant_webhook(&self, tenant_id: Uuid) -> Result<TenantWebhook, StoreError> {
        sqlx::query_as(
            "SELECT id AS tenant_id, webhook_url, webhook_secret_version AS secret_version,
                    CASE WHEN webhook_previous_until > now() THEN webhook_previous_version END
                        AS previous_version
               FROM tenants WHERE id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("tenant {tenant_id}")))
    }

    /// The id of the tenant named `name`.
    pub async fn tenant_id_by_name(&self, name: &str) -> Result<Uuid, StoreError> {
        sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("tenant `{name}`")))
    }

    /// Sets (or with `None` clears) a tenant's default webhook URL, audited.
    /// The caller has checked the URL is an allowed target.
    pub async fn set_tenant_webhook_url(
        &self,
        name: &str,
        url: Option<&str>,
        actor: &str,
    ) -> Result<TenantWebhook, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id: Uuid = sqlx::query_scalar(
            "UPDATE tenants SET webhook_url = $2, updated_at = now() WHERE name = $1 RETURNING id",
        )
        .bind(name)
        .bind(url)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("tenant `{name}`")))?;
        crate::audit::audit_admin(
            &mut tx,
            AdminAction {
                actor,
                tenant_id: Some(id),
                key_prefix: None,
                action: "tenant.webhook_url",
                target: name,
                detail: json!({ "webhook_url": url }),
            },
        )
        .await?;
        tx.commit().await?;
        self.tenant_webhook(id).await
    }

    /// Starts using a new signing secret for a tenant; the current one keeps
    /// signing alongside it for `grace`. Audited. Returns the new settings.
    pub async fn rotate_webhook_secret(
        &self,
        name: &str,
        grace: Duration,
        actor: &str,
    ) -> Result<TenantWebhook, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id: Uuid = sqlx::query_scalar(
            "UPDATE tenants
                SET webhook_previous_version = webhook_secret_version,
                    webhook_previous_until = now() + make_interval(secs => $2),
                    webhook_secret_version = webhook_secret_version + 1,
                    updated_at = now()
              WHERE name = $1 RETURNING id",
        )
        .bind(name)
        .bind(grace.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("tenant `{name}`")))?;
        crate::audit::audit_admin(
            &mut tx,
            AdminAction {
                actor,
                tenant_id: Some(id),
                key_prefix: None,
                action: "tenant.rotate_webhook_secret",
                target: name,
                detail: json!({ "grace_secs": grace.as_secs() }),
            },
        )
        .await?;
        tx.commit().await?;
        self.tenant_webhook(id).await
    }
}
