//! Tenants and API keys. A key is shown once, when created; only its SHA-256
//! is stored. Keys carry 192 random bits, so a fast hash is enough: there is
//! nothing to brute-force that a slow password hash would protect.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Store, StoreError, is_unique_violation};

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

impl Store {
    /// Creates a tenant and its first key.
    pub async fn create_tenant(&self, name: &str) -> Result<(Tenant, NewApiKey), StoreError> {
        let mut tx = self.pool.begin().await?;
        let tenant = sqlx::query_as::<_, Tenant>(
            "INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING id, name",
        )
        .bind(Uuid::now_v7())
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("tenant `{name}`"))
            } else {
                e.into()
            }
        })?;
        let key = insert_key(&mut tx, tenant.id).await?;
        tx.commit().await?;
        Ok((tenant, key))
    }

    /// Adds a key to an existing tenant.
    pub async fn create_key(&self, tenant_name: &str) -> Result<NewApiKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let tenant_id: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
            .bind(tenant_name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("tenant `{tenant_name}`")))?;
        let key = insert_key(&mut tx, tenant_id).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// The principal of a presented key, or `None` for an unknown or revoked key.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Principal>, StoreError> {
        let row: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT tenant_id, prefix FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash_key(presented))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(tenant_id, key_prefix)| Principal {
            tenant_id,
            key_prefix,
        }))
    }
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
