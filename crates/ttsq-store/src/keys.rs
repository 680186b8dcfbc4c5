//! Tenants and API keys. A key is shown once, when created; only its SHA-256
//! is stored. Keys carry 192 random bits, so a fast hash is enough: there is
//! nothing to brute-force that a slow password hash would protect.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    Store, StoreError,
    audit::{AdminAction, audit_admin},
    error::is_unique_violation,
};

/// Characters of a key kept in clear to tell keys apart (`ttsq_` + 8 hex).
const PREFIX_LEN: usize = 13;

/// A customer account; every task and every ledger row belongs to one.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Tenant {
    /// Tenant id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
}

/// A freshly created key: the only time its clear value exists.
#[derive(Debug)]
pub struct NewApiKey {
    /// The key to hand to the client.
    pub key: SecretString,
    /// Its visible prefix.
    pub prefix: String,
}

/// Who is calling: resolved from a presented key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant the key belongs to.
    pub tenant_id: Uuid,
    /// The key's visible prefix, for audit and logs.
    pub key_prefix: String,
    /// The shared cache pool the tenant opted into, if any.
    pub cache_pool: Option<String>,
}

impl Principal {
    /// The audio cache scope of the tenant's jobs: its own, or its pool's.
    pub fn cache_scope(&self) -> String {
        match &self.cache_pool {
            Some(pool) => format!("pool:{pool}"),
            None => format!("tenant:{}", self.tenant_id),
        }
    }
}

fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

fn generate_key() -> NewApiKey {
    let mut random = [0u8; 24];
    // The OS random source failing leaves no safe way to mint keys.
    getrandom::fill(&mut random).expect("the OS random source is available");
    let key = format!("ttsq_{}", hex::encode(random));
    let prefix = key[..PREFIX_LEN].to_owned();
    NewApiKey {
        key: SecretString::from(key),
        prefix,
    }
}

/// A tenant's limits; `None` is unlimited. See [`crate::limits`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantLimits {
    /// Characters per UTC day.
    pub daily_characters: Option<i64>,
    /// Cost per UTC month, in the tenant's currency.
    pub monthly_budget: Option<f64>,
    /// Jobs queued or processing at once.
    pub max_queued_jobs: Option<i32>,
    /// Tasks submitted per UTC day, cache hits included.
    pub daily_requests: Option<i64>,
}

impl TenantLimits {
    /// Checks the values; the reason names the field.
    pub fn validate(&self) -> Result<(), String> {
        check_limits(
            self.daily_characters,
            self.monthly_budget,
            self.max_queued_jobs,
            self.daily_requests,
        )
    }
}

fn check_limits(
    daily_characters: Option<i64>,
    monthly_budget: Option<f64>,
    max_queued_jobs: Option<i32>,
    daily_requests: Option<i64>,
) -> Result<(), String> {
    if daily_characters.is_some_and(|n| n <= 0) {
        return Err("daily_characters: must be at least 1 (omit it for no limit)".into());
    }
    if monthly_budget.is_some_and(|b| !(b.is_finite() && (0.0..1e12).contains(&b))) {
        return Err("monthly_budget: must be a number from 0 up to 10^12".into());
    }
    if max_queued_jobs.is_some_and(|n| n <= 0) {
        return Err("max_queued_jobs: must be at least 1 (omit it for no limit)".into());
    }
    if daily_requests.is_some_and(|n| n <= 0) {
        return Err("daily_requests: must be at least 1 (omit it for no limit)".into());
    }
    Ok(())
}

/// Whether `name` may name a cache pool (the column's CHECK, said once here
/// so the error names the field).
fn is_pool_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn check_currency(currency: &str) -> Result<(), StoreError> {
    if ttsq_config::is_currency_code(currency) {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "currency: must be a three-letter ISO 4217 code such as USD".into(),
        ))
    }
}

/// The largest dispatch weight (the `tenants.weight` check).
pub const MAX_WEIGHT: i32 = 1000;

/// Changes to a tenant: `None` leaves a field as it is; `Some(None)` lifts a
/// limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantUpdate {
    /// Characters per UTC day.
    pub daily_characters: Option<Option<i64>>,
    /// Cost per UTC month.
    pub monthly_budget: Option<Option<f64>>,
    /// Jobs queued or processing at once.
    pub max_queued_jobs: Option<Option<i32>>,
    /// Tasks submitted per UTC day, cache hits included.
    pub daily_requests: Option<Option<i64>>,
    /// Currency of the budget (ISO 4217).
    pub currency: Option<String>,
    /// Days tasks are kept; `Some(None)` returns to the deployment default.
    pub retention_days: Option<Option<i32>>,
    /// The shared cache pool to join; `Some(None)` makes the cache private
    /// to the tenant again.
    pub cache_pool: Option<Option<String>>,
    /// Share of dispatch against other tenants with work (1 to 1000).
    pub weight: Option<i32>,
}

/// A tenant with its limits, as operators see it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct TenantInfo {
    /// Tenant id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Currency of the budget.
    pub currency: String,
    /// Characters per UTC day; `None` is unlimited.
    pub daily_characters: Option<i64>,
    /// Cost per UTC month; `None` is unlimited.
    pub monthly_budget: Option<f64>,
    /// Open jobs at once; `None` is unlimited.
    pub max_queued_jobs: Option<i32>,
    /// Tasks submitted per UTC day, cache hits included; `None` is unlimited.
    pub daily_requests: Option<i64>,
    /// Days tasks are kept; `None` is the deployment default.
    pub retention_days: Option<i32>,
    /// The shared cache pool it is in; `None`: its cache is its own.
    pub cache_pool: Option<String>,
    /// Share of dispatch (jobs and webhook deliveries) against the other
    /// tenants with work waiting; 1 by default.
    pub weight: i32,
    /// Keys not revoked.
    pub active_keys: i64,
    /// Created at.
    pub created_at: DateTime<Utc>,
}

const TENANT_SELECT: &str = "SELECT t.id, t.name, t.currency, t.daily_characters,
        t.monthly_budget::float8 AS monthly_budget, t.max_queued_jobs, t.daily_requests,
        t.retention_days, t.cache_pool, t.weight,
        (SELECT count(*) FROM api_keys k WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS active_keys,
        t.created_at
    FROM tenants t";

/// An API key as operators see it: never the key itself.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    /// Key id.
    pub id: Uuid,
    /// Owner's name.
    pub tenant: String,
    /// Visible prefix.
    pub prefix: String,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Revoked at; a revoked key is refused at once.
    pub revoked_at: Option<DateTime<Utc>>,
}

const KEY_SELECT: &str = "SELECT k.id, t.name AS tenant, k.prefix, k.created_at, k.revoked_at
    FROM api_keys k JOIN tenants t ON t.id = k.tenant_id";

impl Store {
    /// Creates a tenant without limits and its first key.
    pub async fn create_tenant(&self, name: &str) -> Result<(Tenant, NewApiKey), StoreError> {
        let (info, key) = self
            .create_tenant_with(name, &TenantLimits::default(), None, "system")
            .await?;
        Ok((
            Tenant {
                id: info.id,
                name: info.name,
            },
            key,
        ))
    }

    /// Creates a tenant with `limits` (budget in `currency`, USD by default)
    /// and its first key; `actor` is recorded in the audit log.
    pub async fn create_tenant_with(
        &self,
        name: &str,
        limits: &TenantLimits,
        currency: Option<&str>,
        actor: &str,
    ) -> Result<(TenantInfo, NewApiKey), StoreError> {
        limits.validate().map_err(StoreError::Invalid)?;
        let currency = currency.unwrap_or("USD");
        check_currency(currency)?;
        // Control characters: U+0000 cannot be stored, the others cannot
        // be typed back into a URL or a shell.
        if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(StoreError::Invalid(
                "name: must be 1 to 200 characters without control characters".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        // A budget goes to `numeric` through its shortest exact text: a
        // `float8` cast straight to `numeric` keeps 15 digits and turns
        // 999999999999.9999 (valid, under 10^12) into an overflowing 10^12.
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO tenants (id, name, daily_characters, monthly_budget, max_queued_jobs,
                                  daily_requests, currency)
             VALUES ($1, $2, $3, $4::float8::text::numeric, $5, $6, $7) RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(name)
        .bind(limits.daily_characters)
        .bind(limits.monthly_budget)
        .bind(limits.max_queued_jobs)
        .bind(limits.daily_requests)
        .bind(currency)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("tenant `{name}`"))
            } else {
                e.into()
            }
        })?;
        let key = insert_key(&mut tx, id).await?;
        audit_admin(
            &mut tx,
            AdminAction {
                actor,
                tenant_id: Some(id),
                key_prefix: Some(&key.prefix),
                action: "tenant.create",
                target: name,
                detail: json!({
                    "daily_characters": limits.daily_characters,
                    "monthly_budget": limits.monthly_budget,
                    "max_queued_jobs": limits.max_queued_jobs,
                    "daily_requests": limits.daily_requests,
                    "currency": currency,
                }),
            },
        )
        .await?;
        let info = tenant_by_name(&mut tx, name).await?;
        tx.commit().await?;
        Ok((info, key))
    }

    /// Every tenant, by name.
    pub async fn list_tenants(&self) -> Result<Vec<TenantInfo>, StoreError> {
        Ok(sqlx::query_as(&format!("{TENANT_SELECT} ORDER BY t.name"))
            .fetch_all(&self.pool)
            .await?)
    }

    /// One tenant by name.
    pub async fn tenant(&self, name: &str) -> Result<TenantInfo, StoreError> {
        let mut conn = self.pool.acquire().await?;
        tenant_by_name(&mut conn, name).await
    }

    /// Applies `update` to the tenant named `name`; audited as `actor`.
    pub async fn update_tenant(
        &self,
        name: &str,
        update: &TenantUpdate,
        actor: &str,
    ) -> Result<TenantInfo, StoreError> {
        check_limits(
            update.daily_characters.flatten(),
            update.monthly_budget.flatten(),
            update.max_queued_jobs.flatten(),
            update.daily_requests.flatten(),
        )
        .map_err(StoreError::Invalid)?;
        if let Some(currency) = &update.currency {
            check_currency(currency)?;
        }
        if let Some(Some(pool)) = &update.cache_pool
            && !is_pool_name(pool)
        {
            return Err(StoreError::Invalid(
                "cache_pool: 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter or digit".into(),
            ));
        }
        if update
            .weight
            .is_some_and(|w| !(1..=MAX_WEIGHT).contains(&w))
        {
            return Err(StoreError::Invalid(format!(
                "weight: must be 1 to {MAX_WEIGHT}"
            )));
        }
        if update.retention_days.flatten().is_some_and(|d| d < 1) {
            return Err(StoreError::Invalid(
                "retention_days: must be at least 1 (null for the deployment default)".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        let id: Uuid = sqlx::query_scalar(
            "UPDATE tenants SET
                daily_characters = CASE WHEN $2 THEN $3 ELSE daily_characters END,
                monthly_budget = CASE WHEN $4 THEN $5::float8::text::numeric ELSE monthly_budget END,
                max_queued_jobs = CASE WHEN $6 THEN $7 ELSE max_queued_jobs END,
                currency = coalesce($8, currency),
                retention_days = CASE WHEN $9 THEN $10 ELSE retention_days END,
                cache_pool = CASE WHEN $11 THEN $12 ELSE cache_pool END,
                daily_requests = CASE WHEN $13 THEN $14 ELSE daily_requests END,
                weight = coalesce($15, weight),
                updated_at = now()
              WHERE name = $1 RETURNING id",
        )
        .bind(name)
        .bind(update.daily_characters.is_some())
        .bind(update.daily_characters.flatten())
        .bind(update.monthly_budget.is_some())
        .bind(update.monthly_budget.flatten())
        .bind(update.max_queued_jobs.is_some())
        .bind(update.max_queued_jobs.flatten())
        .bind(&update.currency)
        .bind(update.retention_days.is_some())
        .bind(update.retention_days.flatten())
        .bind(update.cache_pool.is_some())
        .bind(update.cache_pool.clone().flatten())
        .bind(update.daily_requests.is_some())
        .bind(update.daily_requests.flatten())
        .bind(update.weight)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("tenant `{name}`")))?;
        let mut detail = serde_json::Map::new();
        if let Some(v) = update.daily_characters {
            detail.insert("daily_characters".into(), json!(v));
        }
        if let Some(v) = update.monthly_budget {
            detail.insert("monthly_budget".into(), json!(v));
        }
        if let Some(v) = update.max_queued_jobs {
            detail.insert("max_queued_jobs".into(), json!(v));
        }
        if let Some(v) = update.daily_requests {
            detail.insert("daily_requests".into(), json!(v));
        }
        if let Some(v) = &update.currency {
            detail.insert("currency".into(), json!(v));
        }
        if let Some(v) = update.retention_days {
            detail.insert("retention_days".into(), json!(v));
        }
        if let Some(v) = &update.cache_pool {
            detail.insert("cache_pool".into(), json!(v));
        }
        if let Some(v) = update.weight {
            detail.insert("weight".into(), json!(v));
        }
        audit_admin(
            &mut tx,
            AdminAction {
                actor,
                tenant_id: Some(id),
                key_prefix: None,
                action: "tenant.update",
                target: name,
                detail: detail.into(),
            },
        )
        .await?;
        let info = tenant_by_name(&mut tx, name).await?;
        tx.commit().await?;
        Ok(info)
    }

    /// Adds a key to an existing tenant.
    pub async fn create_key(&self, tenant_name: &str) -> Result<NewApiKey, StoreError> {
        self.create_key_as(tenant_name, "system").await
    }

    /// Adds a key to an existing tenant; audited as `actor`.
    pub async fn create_key_as(
        &self,
        tenant_name: &str,
        actor: &str,
    ) -> Result<NewApiKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let tenant_id: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
            .bind(tenant_name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("tenant `{tenant_name}`")))?;
        let key = insert_key(&mut tx, tenant_id).await?;
        audit_admin(
            &mut tx,
            AdminAction {
                actor,
                tenant_id: Some(tenant_id),
                key_prefix: Some(&key.prefix),
                action: "key.create",
                target: &key.prefix,
                detail: json!({}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Keys of the tenant named `tenant` (or of all tenants), oldest first.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyInfo>, StoreError> {
        if let Some(name) = tenant {
            self.tenant(name).await?;
        }
        Ok(sqlx::query_as(&format!(
            "{KEY_SELECT} WHERE $1::text IS NULL OR t.name = $1 ORDER BY t.name, k.created_at"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes the key with this id or visible prefix; from the commit on,
    /// every replica refuses it (keys are checked in Postgres on each
    /// request). Revoking a revoked key changes nothing. A prefix two keys
    /// share is a conflict: use the id.
    pub async fn revoke_key(&self, id_or_prefix: &str, actor: &str) -> Result<KeyInfo, StoreError> {
        let mut tx = self.pool.begin().await?;
        let by_id = Uuid::parse_str(id_or_prefix).ok();
        let matches: Vec<KeyInfo> = sqlx::query_as(&format!(
            "{KEY_SELECT} WHERE k.id = $1 OR k.prefix = $2 FOR UPDATE OF k"
        ))
        .bind(by_id)
        .bind(id_or_prefix)
        .fetch_all(&mut *tx)
        .await?;
        let key = match matches.as_slice() {
            [] => return Err(StoreError::NotFound(format!("key `{id_or_prefix}`"))),
            [one] => one.clone(),
            _ => {
                return Err(StoreError::Conflict(format!(
                    "more than one key with prefix `{id_or_prefix}`; revoke by id"
                )));
            }
        };
        if key.revoked_at.is_some() {
            return Ok(key);
        }
        let tenant_id: Uuid = sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 RETURNING tenant_id",
        )
        .bind(key.id)
        .fetch_one(&mut *tx)
        .await?;
        audit_admin(
            &mut tx,
            AdminAction {
                actor,
                tenant_id: Some(tenant_id),
                key_prefix: Some(&key.prefix),
                action: "key.revoke",
                target: &key.id.to_string(),
                detail: json!({}),
            },
        )
        .await?;
        let key: KeyInfo = sqlx::query_as(&format!("{KEY_SELECT} WHERE k.id = $1"))
            .bind(key.id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// The principal of a presented key, or `None` for an unknown or revoked
    /// key. Always asks Postgres (one indexed lookup), so a revoke takes
    /// effect on every replica at once.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Principal>, StoreError> {
        let row: Option<(Uuid, String, Option<String>)> = sqlx::query_as(
            "SELECT k.tenant_id, k.prefix, t.cache_pool
               FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
              WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash_key(presented))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(tenant_id, key_prefix, cache_pool)| Principal {
            tenant_id,
            key_prefix,
            cache_pool,
        }))
    }
}

async fn tenant_by_name(
    conn: &mut sqlx::PgConnection,
    name: &str,
) -> Result<TenantInfo, StoreError> {
    sqlx::query_as(&format!("{TENANT_SELECT} WHERE t.name = $1"))
        .bind(name)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("tenant `{name}`")))
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: Uuid,
) -> Result<NewApiKey, StoreError> {
    let key = generate_key();
    sqlx::query("INSERT INTO api_keys (id, tenant_id, prefix, key_hash) VALUES ($1, $2, $3, $4)")
        .bind(Uuid::now_v7())
        .bind(tenant_id)
        .bind(&key.prefix)
        .bind(hash_key(key.key.expose_secret()))
        .execute(&mut **tx)
        .await?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_hash_to_32_bytes() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a.key.expose_secret(), b.key.expose_secret());
        assert!(a.key.expose_secret().starts_with(&a.prefix));
        assert!(a.prefix.starts_with("ttsq_"));
        assert_eq!(a.key.expose_secret().len(), 5 + 48);
        assert_eq!(hash_key(a.key.expose_secret()).len(), 32);
    }
}
