//! The audit log: who submitted what and which admin changed what, when.
//!
//! Rows are written in the transaction of the action they record and are
//! append-only (a trigger refuses UPDATE, DELETE and TRUNCATE). A submission
//! is recorded by the length of its normalised text and, with an
//! `audit.text_key`, its keyed fingerprint ([`ttsq_core::Job::text_fingerprint`],
//! an HMAC-SHA256 kept in the `text_sha256` column), never the text itself:
//! a plain hash of a short text would give it away to anyone hashing guesses.

use serde_json::Value;
use uuid::Uuid;

use crate::{Store, StoreError, new_task::NewTask};

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

/// Records accepted submissions, one row each, in one statement.
pub(crate) async fn audit_submissions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tasks: &[&NewTask<'_>],
) -> Result<(), StoreError> {
    if tasks.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&NewTask<'_>) -> String| tasks.iter().map(|t| f(t)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO audit_log (actor, tenant_id, key_prefix, action, target, text_chars, text_sha256, detail)
         SELECT coalesce('key:' || u.key_prefix, 'key'), u.tenant_id, u.key_prefix, 'task.submit',
                u.id::text, u.characters, u.sha256,
                jsonb_build_object('priority', u.priority, 'dialect', u.dialect, 'voice', u.voice,
                                   'idempotency_key', u.keyed)
           FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::bool[])
                AS u(id, tenant_id, key_prefix, characters, sha256, priority, dialect, voice, keyed)",
    )
    .bind(tasks.iter().map(|t| t.id).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.tenant_id).collect::<Vec<_>>())
    .bind(
        tasks
            .iter()
            .map(|t| t.key_prefix.map(str::to_owned))
            .collect::<Vec<_>>(),
    )
    .bind(
        tasks
            .iter()
            .map(|t| i32::try_from(t.job.characters).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(
        tasks
            .iter()
            .map(|t| t.job.text_fingerprint.clone())
            .collect::<Vec<_>>(),
    )
    .bind(text(|t| t.job.priority.as_str().to_owned()))
    .bind(text(|t| t.job.dialect.clone()))
    .bind(text(|t| t.job.voice.clone()))
    .bind(
        tasks
            .iter()
            .map(|t| t.idempotency_key.is_some())
            .collect::<Vec<_>>(),
    )
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
        .bind(job.text_fingerprint.as_deref())
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
