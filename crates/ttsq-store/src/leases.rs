//! Fleet-wide single flight: a lease per content hash, and the commit that
//! indexes synthesized audio together with the task that pays for it.
//!
//! Before any replica calls a provider for a hash it takes the hash's lease
//! ([`Store::acquire_leases`]). A claim (a worker batch, or a high-priority
//! request) is named by a token: the `worker_batch_id` its tasks carry and
//! the token its leases carry. [`Store::commit_claim`] then, in one
//! transaction, gives up the leases the token still holds, indexes the audio
//! made under them, bills each synthesis to exactly one task the token still
//! holds, and finishes or reschedules those tasks. Whatever the token no
//! longer holds (a replica presumed dead and taken over meanwhile) is left
//! alone: a stale replica changes nothing another one holds.
//!
//! So no crash point leaves indexed audio that no ledger row paid for: the
//! index row and the billed ledger row commit together or not at all. Audio
//! uploaded by a claim that died before its commit stays in the bucket,
//! unindexed; the next holder of the lease finds it and indexes it instead of
//! paying the provider again (it carries its facts in its S3 metadata).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use uuid::Uuid;

use crate::{
    AudioObject, Store, StoreError,
    tasks::{FinishedTask, Reschedule, TaskOutcome, finish, reschedule},
};

/// Audio a claim made (or found unindexed in the bucket) under the lease of
/// `lease_hash`, to index in [`Store::commit_claim`].
#[derive(Debug, Clone, PartialEq)]
pub struct MadeAudio {
    /// The content hash whose lease the claim held.
    pub lease_hash: String,
    /// The object to index. Its `hash` is `lease_hash`, or the hash the
    /// audio is kept under when it must not answer for `lease_hash` (audio
    /// of a fallback provider).
    pub object: AudioObject,
}

/// What [`Store::commit_claim`] writes for one claim.
#[derive(Debug, Clone, Copy)]
pub struct ClaimCommit<'a> {
    /// The claim's token: the tasks' `worker_batch_id`, the leases' token.
    pub token: Uuid,
    /// Audio made under the claim's leases.
    pub made: &'a [MadeAudio],
    /// Outcomes of claimed tasks. A success on audio in `made` is billed on
    /// the first such task the claim still holds, and is a cache hit on the
    /// others, whatever its `cache_hit` says.
    pub finished: &'a [FinishedTask],
    /// Claimed tasks to hand back for a later attempt.
    pub retries: &'a [Reschedule],
}

/// What [`Store::commit_claim`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimCommitted {
    /// Tasks finished or rescheduled now.
    pub settled: HashSet<Uuid>,
    /// Tasks billed now: each paid for the audio indexed with it.
    pub billed: HashSet<Uuid>,
    /// Tasks the claim no longer holds (another claim took them over): left
    /// as they are.
    pub fenced: HashSet<Uuid>,
    /// Tasks the claim still holds whose audio was made under a lease it had
    /// lost: left `processing`, for the caller to wait for the new holder's
    /// audio (they are not finished on audio nobody indexed).
    pub lease_lost: HashSet<Uuid>,
}

impl Store {
    /// Takes the leases of `hashes` for `token` held by replica `holder`:
    /// those nobody holds, those whose lease has expired, those `token` holds
    /// already, and those whose holder has not heartbeated within
    /// `replica_ttl` — the last only when `holder` itself has heartbeated
    /// without a gap for a whole `replica_ttl` (after a Postgres outage
    /// every replica looks silent for a moment). Returns the hashes `token`
    /// now holds; a lease lasts `lease_ttl` at most.
    pub async fn acquire_leases(
        &self,
        hashes: &[String],
        holder: Uuid,
        token: Uuid,
        lease_ttl: Duration,
        replica_ttl: Duration,
    ) -> Result<HashSet<String>, StoreError> {
        if hashes.is_empty() {
            return Ok(HashSet::new());
        }
        // Sorted: replicas taking overlapping sets lock rows in one order.
        let mut sorted: Vec<&str> = hashes.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let held: Vec<String> = sqlx::query_scalar(
            "INSERT INTO synthesis_leases AS l (hash, holder, token, expires_at)
             SELECT h, $2, $3, now() + make_interval(secs => $4)
               FROM UNNEST($1::text[]) WITH ORDINALITY AS u(h, n)
              ORDER BY n
             ON CONFLICT (hash) DO UPDATE
                SET holder = EXCLUDED.holder, token = EXCLUDED.token,
                    acquired_at = now(), expires_at = EXCLUDED.expires_at
              WHERE l.token = EXCLUDED.token
                 OR l.expires_at < now()
                 OR (NOT EXISTS (SELECT 1 FROM workers w
                                  WHERE w.id = l.holder
                                    AND w.last_seen > now() - make_interval(secs => $5))
                     AND EXISTS (SELECT 1 FROM workers me
                                  WHERE me.id = $2
                                    AND me.heartbeating_since < now() - make_interval(secs => $5)))
             RETURNING hash",
        )
        .bind(&sorted)
        .bind(holder)
        .bind(token)
        .bind(lease_ttl.as_secs_f64())
        .bind(replica_ttl.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(held.into_iter().collect())
    }

    /// Gives up whatever leases `token` holds (a claim that ends without
    /// committing, e.g. its synthesis failed), so that waiters take over at
    /// once instead of after the lease expires.
    pub async fn release_leases(&self, token: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM synthesis_leases WHERE token = $1")
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Commits what a claim did, in one transaction (see the module docs):
    /// indexes `made` where the claim still holds the lease and a task to
    /// bill, finishes and reschedules the tasks the claim still holds, and
    /// releases every lease of the token.
    pub async fn commit_claim(
        &self,
        commit: ClaimCommit<'_>,
    ) -> Result<ClaimCommitted, StoreError> {
        let mut tx = self.pool.begin().await?;
        let kept: HashSet<String> =
            sqlx::query_scalar("DELETE FROM synthesis_leases WHERE token = $1 RETURNING hash")
                .bind(commit.token)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let ids: Vec<Uuid> = commit
            .finished
            .iter()
            .map(|f| f.task_id)
            .chain(commit.retries.iter().map(|r| r.task_id))
            .collect();
        let held: HashSet<Uuid> = sqlx::query_scalar(
            "SELECT id FROM tasks
              WHERE id = ANY($1) AND status = 'processing' AND worker_batch_id = $2
              ORDER BY id
                FOR UPDATE",
        )
        .bind(&ids)
        .bind(commit.token)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        // The audio each success stands on, and who pays for it.
        let made: HashMap<&str, &MadeAudio> = commit
            .made
            .iter()
            .map(|m| (m.object.hash.as_str(), m))
            .collect();
        let mut payer: HashMap<&str, Uuid> = HashMap::new();
        let mut lease_lost = HashSet::new();
        for f in commit.finished {
            if let TaskOutcome::Succeeded { audio_hash, .. } = &f.outcome
                && let Some(m) = made.get(audio_hash.as_str())
                && held.contains(&f.task_id)
            {
                if kept.contains(&m.lease_hash) {
                    payer.entry(m.object.hash.as_str()).or_insert(f.task_id);
                } else {
                    lease_lost.insert(f.task_id);
                }
            }
        }
        let to_index: Vec<AudioObject> = payer
            .keys()
            .filter_map(|hash| made.get(hash).map(|m| m.object.clone()))
            .collect();
        let indexed = crate::audio::insert_audio(&mut *tx, &to_index).await?;

        let finished: Vec<FinishedTask> = commit
            .finished
            .iter()
            .filter(|f| held.contains(&f.task_id) && !lease_lost.contains(&f.task_id))
            .map(|f| {
                let mut f = f.clone();
                if let TaskOutcome::Succeeded {
                    audio_hash,
                    cache_hit,
                    ..
                } = &mut f.outcome
                    && made.contains_key(audio_hash.as_str())
                {
                    // Billed once: on the payer, and only when its index row
                    // is the one written now (not one found on file).
                    *cache_hit = !(payer.get(audio_hash.as_str()) == Some(&f.task_id)
                        && indexed.contains(audio_hash.as_str()));
                }
                f
            })
            .collect();
        let retries: Vec<Reschedule> = commit
            .retries
            .iter()
            .filter(|r| held.contains(&r.task_id))
            .cloned()
            .collect();
        finish(&mut *tx, &finished).await?;
        reschedule(&mut *tx, &retries).await?;
        tx.commit().await?;

        let settled: HashSet<Uuid> = finished
            .iter()
            .map(|f| f.task_id)
            .chain(retries.iter().map(|r| r.task_id))
            .collect();
        let billed = finished
            .iter()
            .filter(|f| {
                matches!(
                    f.outcome,
                    TaskOutcome::Succeeded {
                        cache_hit: false,
                        ..
                    }
                )
            })
            .map(|f| f.task_id)
            .collect();
        let fenced = ids.into_iter().filter(|id| !held.contains(id)).collect();
        Ok(ClaimCommitted {
            settled,
            billed,
            fenced,
            lease_lost,
        })
    }
}
