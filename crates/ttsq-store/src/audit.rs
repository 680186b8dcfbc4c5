//! The audit log: who submitted what and which admin changed what, when.
//!
//! Rows are written in the transaction of the action they record and are
//! append-only (a trigger refuses UPDATE, DELETE and TRUNCATE). A submission
//! is recorded by the length and SHA-256 of its normalised text, never the
//! text itself.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Store, StoreError, tasks::NewTask};

/// An admin action to record, for [`audit_admin`].
pub(crate) struct AdminAction<'a> {
    /// Who: `admin-api`, `cli:<user>`.
    pub actor: &'a str,
    /// The tenant concerned.
    pub tenant_id: Option<Uuid>,
    /// The key concerned, by its visible prefix.
    pub key_prefix: Option<&'a str>,
    /// What: `tenant.create`, `tenant.update`, `key.create`, `key.revoke`.
    pub action: &'a str,
    /// The object acted on, by name or id.
    pub target: &'a str,
    /// What changed, free of secrets.
    pub detail: Value,
}

/// Records an accepted submission.
pub(crate) async fn audit_submission(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    task: &NewTask<'_>,
) -> Result<(), StoreError> {
    let job = task.job;
    let actor = task
        .key_prefix
        .map_or_else(|| "key".to_owned(), |p| format!("key:{p}"));
    sqlx::query(
        "INSERT INTO audit_log (actor, tenant_id, key_prefix, action, target, text_chars, text_sha256, detail)
         VALUES ($1, $2, $3, 'task.submit', $4, $5, $6, $7)",
    )
    .bind(actor)
    .bind(task.tenant_id)
    .bind(task.key_prefix)
    .bind(task.id.to_string())
    .bind(i32::try_from(job.characters).unwrap_or(i32::MAX))
    .bind(hex::encode(Sha256::digest(job.text.as_bytes())))
    .bind(json!({
        "priority": job.priority.as_str(),
        "dialect": job.dialect,
        "voice": job.voice,
        "idempotency_key": task.idempotency_key.is_some(),
    }))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Records a submission that was refused (`reason`: `limit_exceeded`,
    /// `content_rejected`) with the same text fingerprint as an accepted one.
    /// Nothing else was written for it, so this stands alone.
    pub async fn audit_refusal(
        &self,
        tenant_id: Uuid,
        key_prefix: Option<&str>,
        job: &ttsq_core::Job,
        reason: &str,
        detail: Value,
    ) -> Result<(), StoreError> {
        let actor = key_prefix.map_or_else(|| "key".to_owned(), |p| format!("key:{p}"));
        let mut detail = detail;
        if let Some(map) = detail.as_object_mut() {
            map.insert("reason".into(), reason.into());
            map.insert("priority".into(), job.priority.as_str().into());
            map.insert("dialect".into(), job.dialect.clone().into());
        }
        sqlx::query(
            "INSERT INTO audit_log (actor, tenant_id, key_prefix, action, text_chars, text_sha256, detail)
             VALUES ($1, $2, $3, 'task.refuse', $4, $5, $6)",
        )
        .bind(actor)
        .bind(tenant_id)
        .bind(key_prefix)
        .bind(i32::try_from(job.characters).unwrap_or(i32::MAX))
        .bind(hex::encode(Sha256::digest(job.text.as_bytes())))
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Records an admin action.
pub(crate) async fn audit_admin(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    action: AdminAction<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (actor, tenant_id, key_prefix, action, target, detail)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(action.actor)
    .bind(action.tenant_id)
    .bind(action.key_prefix)
    .bind(action.action)
    .bind(action.target)
    .bind(action.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
