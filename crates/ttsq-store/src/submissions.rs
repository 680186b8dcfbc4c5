//! Group commit: many single submissions in one transaction.
//!
//! A commit flushes the WAL, and one per job capped single submits at a few
//! hundred a second. [`Store::insert_submissions`] takes every submission a
//! caller gathered and writes them in one transaction with a fixed number
//! of statements, whatever their number:
//!
//! 1. lock each tenant with limits (in id order, so concurrent groups never
//!    deadlock) and read what is in use, once per tenant;
//! 2. find the earlier tasks of the `Idempotency-Key`s sent;
//! 3. admit the submissions in memory, in order, exactly as one after
//!    another would be: a job over a limit is refused alone, the rest go on;
//!    a key repeated within the group answers with its first task;
//! 4. insert the admitted tasks in one UNNEST statement, finish the cache
//!    hits and inline jobs with their ledger rows, write the audit rows in
//!    one statement, and read every task back with one `= ANY` query.
//!
//! [`Store::insert_queued`], [`Store::insert_finished`] and
//! [`Store::insert_claimed`] are a group of one.

use std::collections::{BTreeMap, HashMap, HashSet};

use ttsq_core::TaskStatus;
use uuid::Uuid;

use crate::{
    Store, StoreError,
    audit::audit_submissions,
    limit_usage::LimitUsage,
    limits::{Charge, Headroom, warn_once_past_threshold},
    new_task::{CostEstimate, NewTask},
    tasks::{FinishedTask, LongPlace, TASK_SELECT, TaskColumns, TaskOutcome, TaskRow, finish},
};

/// One submission of a group: a task, and how it ends at once if it does.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// The task to create.
    pub task: NewTask<'a>,
    /// `None`: the task is queued (or claimed, with `claim`). `Some`: it is
    /// terminal at once with this outcome and its ledger row (a cache hit).
    pub finished: Option<TaskOutcome>,
    /// `Some`: the task is created `processing`, claimed by a high-priority
    /// request that synthesizes it inline and ends it with
    /// [`Store::commit_claim`]. Admitted durably before the provider is paid.
    pub claim: Option<InlineClaim>,
    /// A long job's chunks, in order; empty for every other job. The long
    /// job is created `processing` (it is never queued or claimed itself:
    /// its chunks are) with no reservation of its own, its chunks `queued`
    /// with theirs, or finished at once when `cached`. With `finished` set
    /// (the joined audio is stored already) no chunk is created, but their
    /// number is recorded, and the long job is a cache hit. A long job
    /// cannot be `claim`ed inline ([`StoreError::Invalid`]).
    pub chunks: Vec<NewChunk<'a>>,
}

/// A chunk of a long job, created with it: an ordinary task of its own,
/// hidden from the tenant (see the migration `20261211100000_long_jobs`).
#[derive(Debug, Clone)]
pub struct NewChunk<'a> {
    /// Id of its task.
    pub task_id: Uuid,
    /// Its job: the long job's settings, the chunk's text and its own
    /// content hash.
    pub job: &'a ttsq_core::Job,
    /// Where its text starts in the long job's normalised text, in
    /// characters: what its speech marks are shifted by.
    pub offset: i32,
    /// What it is expected to cost, reserved against the budget while it is
    /// queued or processing.
    pub estimate: Option<CostEstimate<'a>>,
    /// Set when its audio is already stored: it finishes at once.
    pub cached: Option<TaskOutcome>,
}

/// A high-priority request's claim on the task it creates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InlineClaim {
    /// The replica serving the request (its heartbeat row): should it die,
    /// the task goes to the queue and a worker finishes it.
    pub replica_id: Uuid,
    /// The claim's token (`worker_batch_id`, and its leases' token).
    pub token: Uuid,
}

impl Submission<'_> {
    /// Whether it is a long job.
    fn is_long(&self) -> bool {
        !self.chunks.is_empty()
    }

    /// How it ends at once, if it does: a long job whose joined audio is
    /// stored is a cache hit, whatever the outcome given says.
    fn outcome(&self) -> Option<TaskOutcome> {
        let mut outcome = self.finished.clone()?;
        if self.is_long()
            && let TaskOutcome::Succeeded { cache_hit, .. } = &mut outcome
        {
            *cache_hit = true;
        }
        Some(outcome)
    }

    /// What it adds to the tenant's limits, and how many queued jobs. A
    /// long job counts once, with its whole text and estimate.
    fn charge(&self) -> (Charge<'_>, i64) {
        let characters = i64::from(self.task.job.characters);
        let reserved = Charge {
            characters,
            costs: self.task.estimate.into_iter().collect(),
            requests: 1,
        };
        if self.claim.is_some() {
            return (reserved, 0);
        }
        match &self.finished {
            None => (reserved, 1),
            Some(TaskOutcome::Succeeded {
                cache_hit: false, ..
            }) if self.is_long() => (
                Charge {
                    requests: 1,
                    ..Charge::default()
                },
                0,
            ),
            Some(TaskOutcome::Succeeded {
                cache_hit: false,
                price_per_1k,
                currency,
                ..
            }) => (
                Charge {
                    characters,
                    costs: vec![CostEstimate {
                        cost: characters as f64 * price_per_1k / 1000.0,
                        currency,
                    }],
                    requests: 1,
                },
                0,
            ),
            // Nothing billable: a cache hit, or a synthesis that failed.
            Some(_) => (
                Charge {
                    requests: 1,
                    ..Charge::default()
                },
                0,
            ),
        }
    }

    fn key(&self) -> Option<(Uuid, &str)> {
        self.task
            .idempotency_key
            .map(|key| (self.task.tenant_id, key))
    }
}

/// What became of one submission: the task on file and whether it was
/// created now (`false`: an earlier task with the same `Idempotency-Key`),
/// or why it was refused.
pub type Submitted = Result<(TaskRow, bool), StoreError>;

/// What step 3 decided for one submission.
enum Plan {
    /// Admitted: to insert.
    Insert,
    /// Its key is taken: answered with the task holding it.
    Repeat,
    /// Over a limit: nothing is written for it.
    Refused(StoreError),
}

impl Store {
    /// Creates a `queued` task within the tenant's limits, with its audit
    /// row, in one transaction. Returns the task on file and whether it was
    /// created now; with an `Idempotency-Key` already used by this tenant it
    /// is the earlier task, untouched (and no limit is checked). Over a limit
    /// it is [`StoreError::LimitExceeded`] and nothing is written.
    pub async fn insert_queued(&self, task: &NewTask<'_>) -> Result<(TaskRow, bool), StoreError> {
        self.insert_one(Submission {
            task: *task,
            finished: None,
            claim: None,
            chunks: Vec::new(),
        })
        .await
    }

    /// Creates a task that is terminal at once (a cache hit at submit, or an
    /// inline synthesis) together with its ledger and audit rows, in one
    /// transaction, within the tenant's limits when it is billable. Over a
    /// limit it is [`StoreError::LimitExceeded`] and nothing is written.
    pub async fn insert_finished(
        &self,
        task: &NewTask<'_>,
        outcome: &TaskOutcome,
    ) -> Result<(TaskRow, bool), StoreError> {
        self.insert_one(Submission {
            task: *task,
            finished: Some(outcome.clone()),
            claim: None,
            chunks: Vec::new(),
        })
        .await
    }

    /// Creates a task `processing` under a high-priority request's `claim`,
    /// within the tenant's limits (charged the estimated cost), with its
    /// audit row: the admission is durable before the provider is paid, and
    /// [`Store::commit_claim`] ends the task with its ledger row. Returns the
    /// task on file and whether it was created now, as
    /// [`Store::insert_queued`] does.
    pub async fn insert_claimed(
        &self,
        task: &NewTask<'_>,
        claim: InlineClaim,
    ) -> Result<(TaskRow, bool), StoreError> {
        self.insert_one(Submission {
            task: *task,
            finished: None,
            claim: Some(claim),
            chunks: Vec::new(),
        })
        .await
    }

    /// One submission as a group of one.
    async fn insert_one(&self, submission: Submission<'_>) -> Result<(TaskRow, bool), StoreError> {
        self.insert_submissions(std::slice::from_ref(&submission))
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::NotFound(format!("task {}", submission.task.id))))
    }

    /// Creates the tasks of `group` in one transaction, each within its
    /// tenant's limits and with its audit row, with the outcomes they would
    /// have submitted one after another in this order. Returns one answer
    /// per submission, in order: a refusal over a limit concerns that one
    /// alone.
    ///
    /// When the transaction fails for a reason that may clear up (Postgres
    /// unreachable, a deadlock) the error is returned for the whole group.
    /// Any other failure can only be one bad row: the submissions are then
    /// written one transaction each, so that it fails alone.
    pub async fn insert_submissions(
        &self,
        group: &[Submission<'_>],
    ) -> Result<Vec<Submitted>, StoreError> {
        match self.insert_group(group).await {
            Ok(answers) => Ok(answers),
            Err(err) if err.is_transient() || group.len() <= 1 => Err(err),
            Err(err) => {
                tracing::warn!(error = %err, submissions = group.len(), "a group of submissions failed; writing them one by one");
                let mut answers = Vec::with_capacity(group.len());
                for submission in group {
                    let answer = match self.insert_group(std::slice::from_ref(submission)).await {
                        Ok(mut one) => one.pop().unwrap_or_else(|| {
                            Err(StoreError::NotFound(format!("task {}", submission.task.id)))
                        }),
                        Err(err) => Err(err),
                    };
                    answers.push(answer);
                }
                Ok(answers)
            }
        }
    }

    async fn insert_group(&self, group: &[Submission<'_>]) -> Result<Vec<Submitted>, StoreError> {
        if group.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;

        // 1. Tenants with limits, locked in id order.
        let mut tenants: Vec<Uuid> = group.iter().map(|s| s.task.tenant_id).collect();
        tenants.sort_unstable();
        tenants.dedup();
        let mut headroom = HashMap::new();
        for tenant_id in tenants {
            if let Some(h) = Headroom::lock(&mut tx, tenant_id).await? {
                headroom.insert(tenant_id, h);
            }
        }

        // 2. Earlier tasks holding the keys sent. Read after the locks, so a
        // limited tenant's concurrent group has committed its keys by now.
        let keys: Vec<(Uuid, &str)> = group.iter().filter_map(Submission::key).collect();
        let mut holders = tasks_by_key(&mut tx, &keys).await?;

        // 3. Admission, in order.
        let mut usage: BTreeMap<Uuid, Vec<LimitUsage>> = BTreeMap::new();
        let mut taken: HashSet<(Uuid, &str)> = HashSet::new();
        let mut plans = Vec::with_capacity(group.len());
        for submission in group {
            let key = submission.key();
            let repeat = key.is_some_and(|k| {
                taken.contains(&k) || holders.contains_key(&(k.0, k.1.to_owned()))
            });
            if repeat {
                plans.push(Plan::Repeat);
                continue;
            }
            if submission.is_long() && submission.claim.is_some() {
                plans.push(Plan::Refused(StoreError::Invalid(
                    "a long job cannot be synthesized inline".into(),
                )));
                continue;
            }
            let (charge, jobs) = submission.charge();
            let admitted = match headroom.get_mut(&submission.task.tenant_id) {
                Some(h) => h.admit(&charge, jobs),
                None => Ok(Vec::new()),
            };
            match admitted {
                Ok(admitted) => {
                    if !admitted.is_empty() {
                        usage.insert(submission.task.tenant_id, admitted);
                    }
                    if let Some(k) = key {
                        taken.insert(k);
                    }
                    plans.push(Plan::Insert);
                }
                Err(refused) => plans.push(Plan::Refused(refused.into())),
            }
        }

        // 4. Writes. Sorted by tenant and key, so that groups committing at
        // once meet on the idempotency index in one order (no deadlock).
        let mut order: Vec<&Submission<'_>> = group
            .iter()
            .zip(&plans)
            .filter(|(_, plan)| matches!(plan, Plan::Insert))
            .map(|(s, _)| s)
            .collect();
        order.sort_by_key(|s| (s.task.tenant_id, s.task.idempotency_key));
        let mut columns = TaskColumns::default();
        for s in &order {
            push_submission(&mut columns, s);
        }
        let inserted: HashSet<Uuid> = columns.insert(&mut *tx).await?.into_iter().collect();
        let created: Vec<&Submission<'_>> = order
            .into_iter()
            .filter(|s| inserted.contains(&s.task.id))
            .collect();
        let long: Vec<Uuid> = created
            .iter()
            .filter(|s| s.is_long() && s.finished.is_none())
            .map(|s| s.task.id)
            .collect();
        insert_long_jobs(&mut tx, &long).await?;
        let finished: Vec<FinishedTask> = created
            .iter()
            .flat_map(|s| {
                let own = s.outcome().map(|outcome| FinishedTask {
                    task_id: s.task.id,
                    outcome,
                });
                let cached = s
                    .chunks
                    .iter()
                    .filter(|_| s.finished.is_none())
                    .filter(|c| inserted.contains(&c.task_id))
                    .filter_map(|c| {
                        c.cached.as_ref().map(|outcome| FinishedTask {
                            task_id: c.task_id,
                            outcome: outcome.clone(),
                        })
                    });
                own.into_iter().chain(cached)
            })
            .collect();
        // The long jobs' rows exist: cached chunks count in them.
        finish(&mut *tx, &finished).await?;
        claim_inline(&mut tx, &created).await?;
        let audited: Vec<&NewTask<'_>> = created.iter().map(|s| &s.task).collect();
        audit_submissions(&mut tx, &audited).await?;
        for (tenant_id, used) in &usage {
            warn_once_past_threshold(&mut tx, *tenant_id, used).await?;
        }

        // An admitted task not inserted lost its key to a group committed
        // meanwhile: it is answered with that group's task.
        let lost: Vec<(Uuid, &str)> = group
            .iter()
            .zip(&plans)
            .filter(|(s, plan)| matches!(plan, Plan::Insert) && !inserted.contains(&s.task.id))
            .filter_map(|(s, _)| s.key())
            .collect();
        holders.extend(tasks_by_key(&mut tx, &lost).await?);
        for s in &created {
            if let Some((tenant_id, key)) = s.key() {
                holders.insert((tenant_id, key.to_owned()), s.task.id);
            }
        }

        // Every task answered with, read once.
        let ids: Vec<Uuid> = created
            .iter()
            .map(|s| s.task.id)
            .chain(holders.values().copied())
            .collect();
        let sql = format!("{TASK_SELECT} WHERE t.id = ANY($1)");
        let rows: Vec<TaskRow> = sqlx::query_as(&sql).bind(&ids).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        for (tenant_id, used) in &usage {
            self.record_usage(*tenant_id, used);
        }

        let rows: HashMap<Uuid, TaskRow> = rows.into_iter().map(|r| (r.id, r)).collect();
        let row = |id: Uuid| {
            // The same task can answer several submissions (repeats).
            rows.get(&id)
                .cloned()
                .ok_or_else(|| StoreError::NotFound(format!("task {id}")))
        };
        Ok(group
            .iter()
            .zip(plans)
            .map(|(s, plan)| match plan {
                Plan::Refused(err) => Err(err),
                Plan::Insert if inserted.contains(&s.task.id) => row(s.task.id).map(|r| (r, true)),
                Plan::Insert | Plan::Repeat => {
                    let holder = s
                        .key()
                        .and_then(|(tenant_id, key)| holders.get(&(tenant_id, key.to_owned())));
                    match holder {
                        Some(id) => row(*id).map(|r| (r, false)),
                        None => Err(StoreError::NotFound(format!("task {}", s.task.id))),
                    }
                }
            })
            .collect())
    }
}

/// Adds a submission's task to `columns`, and a long job's chunks after it.
fn push_submission(columns: &mut TaskColumns, s: &Submission<'_>) {
    // Finished ones go in `processing` so that `finish` takes them to their
    // end state and ledger row exactly as a worker's; a long job is
    // `processing` until joined.
    let status = match (&s.finished, &s.claim) {
        (None, None) if !s.is_long() => TaskStatus::Queued,
        _ => TaskStatus::Processing,
    };
    // What finishes at once reserves nothing, nor does a long job: its
    // chunks do.
    let task = match s.finished {
        Some(_) => NewTask {
            estimate: None,
            ..s.task
        },
        None if s.is_long() => NewTask {
            estimate: None,
            ..s.task
        },
        None => s.task,
    };
    if !s.is_long() {
        columns.push(&task, status, None);
        return;
    }
    let total = i32::try_from(s.chunks.len()).unwrap_or(i32::MAX);
    let stored = matches!(s.finished, Some(TaskOutcome::Succeeded { .. }));
    let done = if stored { total } else { 0 };
    columns.push_long(&task, status, None, LongPlace::Job { total, done });
    if s.finished.is_some() {
        return;
    }
    push_chunks(columns, &s.task, &s.chunks);
}

/// Adds the chunks of the long job `parent` to `columns`: its tenant, key
/// prefix and trace, their own jobs and reservations; a cached chunk goes
/// in `processing`, for `finish` in the same transaction.
pub(crate) fn push_chunks(
    columns: &mut TaskColumns,
    parent: &NewTask<'_>,
    chunks: &[NewChunk<'_>],
) {
    for (index, chunk) in chunks.iter().enumerate() {
        let task = NewTask {
            id: chunk.task_id,
            tenant_id: parent.tenant_id,
            job: chunk.job,
            idempotency_key: None,
            key_prefix: parent.key_prefix,
            estimate: chunk.estimate.filter(|_| chunk.cached.is_none()),
            traceparent: parent.traceparent,
        };
        let status = if chunk.cached.is_some() {
            TaskStatus::Processing
        } else {
            TaskStatus::Queued
        };
        let place = LongPlace::Chunk {
            parent_id: parent.id,
            index: i32::try_from(index).unwrap_or(i32::MAX),
            offset: chunk.offset,
        };
        columns.push_long(&task, status, None, place);
    }
}

/// The `long_jobs` rows of the long jobs `ids` just created, in one
/// statement.
pub(crate) async fn insert_long_jobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ids: &[Uuid],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO long_jobs (task_id) SELECT UNNEST($1::uuid[])")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The tasks holding each of `keys` (tenant, `Idempotency-Key`), by key.
pub(crate) async fn tasks_by_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    keys: &[(Uuid, &str)],
) -> Result<HashMap<(Uuid, String), Uuid>, StoreError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let tenants: Vec<Uuid> = keys.iter().map(|(t, _)| *t).collect();
    let names: Vec<&str> = keys.iter().map(|(_, k)| *k).collect();
    let rows: Vec<(Uuid, String, Uuid)> = sqlx::query_as(
        "SELECT t.tenant_id, t.idempotency_key, t.id
           FROM tasks t
           JOIN UNNEST($1::uuid[], $2::text[]) AS k(tenant_id, idempotency_key)
             ON t.tenant_id = k.tenant_id AND t.idempotency_key = k.idempotency_key
          WHERE t.idempotency_key IS NOT NULL",
    )
    .bind(&tenants)
    .bind(&names)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant_id, key, id)| ((tenant_id, key), id))
        .collect())
}

/// Stamps the claim of the tasks created for inline synthesis, as a
/// worker's claim would.
async fn claim_inline(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    created: &[&Submission<'_>],
) -> Result<(), StoreError> {
    let (ids, claims): (Vec<Uuid>, Vec<&InlineClaim>) = created
        .iter()
        .filter_map(|s| s.claim.as_ref().map(|c| (s.task.id, c)))
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    let replicas: Vec<Uuid> = claims.iter().map(|c| c.replica_id).collect();
    let tokens: Vec<Uuid> = claims.iter().map(|c| c.token).collect();
    sqlx::query(
        "UPDATE tasks t
            SET claimed_by = c.replica, worker_batch_id = c.token, claimed_at = now(),
                attempts = 1, published_at = now()
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[]) AS c(id, replica, token)
          WHERE t.id = c.id",
    )
    .bind(&ids)
    .bind(&replicas)
    .bind(&tokens)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
