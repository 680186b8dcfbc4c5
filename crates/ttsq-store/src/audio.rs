//! The index of stored audio objects, keyed by content hash.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::{Store, StoreError};

/// One stored, immutable audio object.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AudioObject {
    /// Content hash of the job inputs.
    pub hash: String,
    /// Object key in the bucket.
    pub s3_key: String,
    /// Size in bytes.
    pub bytes: i64,
    /// Format name.
    pub format: String,
    /// Playing time.
    pub duration_ms: i32,
    /// Provider that synthesized it.
    pub provider: String,
    /// Hex SHA-256 of the bytes, for clients to verify downloads.
    pub sha256: String,
    /// When it was first stored.
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "hash, s3_key, bytes, format, duration_ms, provider, sha256, created_at";

impl Store {
    /// The object stored for `hash`, if any (and not found lost).
    pub async fn find_audio(&self, hash: &str) -> Result<Option<AudioObject>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM audio_objects WHERE hash = $1 AND lost_at IS NULL");
        Ok(sqlx::query_as(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The stored objects among `hashes`, by hash, except those found lost;
    /// one round trip.
    ///
    /// Planned afresh at each call (an unnamed statement): a plan cached
    /// while the table was young is a sequential scan, which a connection
    /// would otherwise keep as the table grows until autovacuum next
    /// analyzes it — milliseconds per lookup after a few thousand objects.
    pub async fn find_audio_many(
        &self,
        hashes: &[String],
    ) -> Result<HashMap<String, AudioObject>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM audio_objects WHERE hash = ANY($1) AND lost_at IS NULL");
        let rows: Vec<AudioObject> = sqlx::query_as(&sql)
            .persistent(false)
            .bind(hashes)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|o| (o.hash.clone(), o)).collect())
    }

    /// Records that the object of `hash` is missing from the bucket: lookups
    /// no longer find it, so the next job for the text synthesizes it again,
    /// which restores the object and the row.
    pub async fn mark_audio_lost(&self, hash: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE audio_objects SET lost_at = now() WHERE hash = $1 AND lost_at IS NULL")
            .bind(hash)
            .execute(&self.pool)
            .await?;
        tracing::warn!(
            hash,
            "audio object missing from the bucket; it is synthesized again on next use"
        );
        Ok(())
    }
}

/// Inserts index rows for `objects` (the first record of a hash wins, but a
/// row found lost is replaced); returns the hashes written now, not those
/// found on file.
pub(crate) async fn insert_audio<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    objects: &[AudioObject],
) -> Result<std::collections::HashSet<String>, StoreError> {
    if objects.is_empty() {
        return Ok(Default::default());
    }
    let column = |f: fn(&AudioObject) -> String| objects.iter().map(f).collect::<Vec<_>>();
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO audio_objects (hash, s3_key, bytes, format, duration_ms, provider, sha256)
         SELECT DISTINCT ON (hash) hash, s3_key, bytes, format, duration_ms, provider, sha256
           FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::int4[], $6::text[], $7::text[])
                AS t(hash, s3_key, bytes, format, duration_ms, provider, sha256)
          ORDER BY hash
         ON CONFLICT (hash) DO UPDATE
            SET s3_key = EXCLUDED.s3_key, bytes = EXCLUDED.bytes, format = EXCLUDED.format,
                duration_ms = EXCLUDED.duration_ms, provider = EXCLUDED.provider,
                sha256 = EXCLUDED.sha256, lost_at = NULL
          WHERE audio_objects.lost_at IS NOT NULL
         RETURNING hash",
    )
    .bind(column(|o| o.hash.clone()))
    .bind(column(|o| o.s3_key.clone()))
    .bind(objects.iter().map(|o| o.bytes).collect::<Vec<_>>())
    .bind(column(|o| o.format.clone()))
    .bind(objects.iter().map(|o| o.duration_ms).collect::<Vec<_>>())
    .bind(column(|o| o.provider.clone()))
    .bind(column(|o| o.sha256.clone()))
    .fetch_all(executor)
    .await?;
    Ok(inserted.into_iter().collect())
}
