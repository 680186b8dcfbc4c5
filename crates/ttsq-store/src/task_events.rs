//! Waking long-polls when tasks finish: one `LISTEN` connection per process
//! fans Postgres notifications out to the requests waiting on those tasks.
//!
//! A trigger on `tasks` sends the task id on [`CHANNEL`] whenever a task
//! reaches a terminal state (see the migration `task_events_retention`). A
//! listener misses whatever is sent while its connection is down, so waiters
//! also re-read the task every `fallback` interval, and every waiter is woken
//! whenever the listener had to reconnect.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::Notify;
use uuid::Uuid;

/// The notification channel the `tasks` trigger sends finished task ids on.
pub const CHANNEL: &str = "ttsq_task_finished";

/// How long the listener waits before connecting again after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// How often an idle listener checks whether anyone still holds its waiters.
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// Per-task wake-ups for the waiters of this process; cheap to clone. The
/// listener task started by [`TaskWaiters::start`] ends on its own once every
/// clone is dropped.
#[derive(Clone, Debug)]
pub struct TaskWaiters {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Task id → the wake-up shared by its waiters and how many there are.
    waiting: Mutex<HashMap<Uuid, (Arc<Notify>, usize)>>,
    /// How often waiters re-read their task without a notification.
    fallback: Duration,
}

/// One request's registration for a task's wake-up; deregisters on drop.
#[derive(Debug)]
pub struct Waiter {
    inner: Arc<Inner>,
    task_id: Uuid,
    notify: Arc<Notify>,
}

impl TaskWaiters {
    /// Starts this process's listener on `pool` (it holds one connection) and
    /// returns the handle waiters register with. `fallback` bounds how late a
    /// missed notification is noticed.
    pub fn start(pool: PgPool, fallback: Duration) -> Self {
        let inner = Arc::new(Inner {
            waiting: Mutex::default(),
            fallback,
        });
        tokio::spawn(listen(pool, Arc::downgrade(&inner)));
        Self { inner }
    }

    /// How often waiters re-read their task regardless of notifications.
    pub fn fallback(&self) -> Duration {
        self.inner.fallback
    }

    /// Registers interest in `task_id`. Register before reading the task, so
    /// that a finish between the read and the wait is not missed.
    pub fn register(&self, task_id: Uuid) -> Waiter {
        let mut waiting = self.inner.lock();
        let entry = waiting
            .entry(task_id)
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Waiter {
            inner: Arc::clone(&self.inner),
            task_id,
            notify: Arc::clone(&entry.0),
        }
    }
}

impl Waiter {
    /// The wake-up of this task. Create (and `enable`) the future before
    /// reading the task, then await it: a notification sent in between wakes
    /// it all the same.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiting = self.inner.lock();
        if let Some(entry) = waiting.get_mut(&self.task_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiting.remove(&self.task_id);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Arc<Notify>, usize)>> {
        // The map stays consistent even if a holder panicked: every critical
        // section is a single insert, update or remove.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self, task_id: Uuid) {
        if let Some((notify, _)) = self.lock().get(&task_id) {
            notify.notify_waiters();
        }
    }

    /// After a reconnect: notifications may have been lost, so everyone
    /// re-reads their task.
    fn wake_all(&self) {
        for (notify, _) in self.lock().values() {
            notify.notify_waiters();
        }
    }
}

/// The listener loop: connect, `LISTEN`, wake the waiters of each finished
/// task; on a lost connection wake everyone and connect again. Ends when the
/// last [`TaskWaiters`] handle is gone.
async fn listen(pool: PgPool, inner: Weak<Inner>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "task listener cannot connect; long-polls fall back to polling");
                if pause_or_end(&inner).await {
                    return;
                }
                continue;
            }
        };
        if let Err(err) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %err, "LISTEN failed; long-polls fall back to polling");
            if pause_or_end(&inner).await {
                return;
            }
            continue;
        }
        tracing::debug!(channel = CHANNEL, "task listener connected");
        loop {
            let received = tokio::time::timeout(IDLE_CHECK, listener.try_recv()).await;
            let Some(waiters) = inner.upgrade() else {
                return;
            };
            match received {
                Err(_idle) => {}
                Ok(Ok(Some(notification))) => {
                    if let Ok(id) = Uuid::parse_str(notification.payload()) {
                        waiters.wake(id);
                    }
                }
                // The connection was lost; `try_recv` reconnects next time.
                Ok(Ok(None)) => {
                    tracing::info!("task listener lost its connection; reconnecting");
                    waiters.wake_all();
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "task listener failed; reconnecting");
                    waiters.wake_all();
                    break;
                }
            }
        }
        if pause_or_end(&inner).await {
            return;
        }
    }
}

/// Sleeps before a reconnect; `true` when nobody holds the waiters any more.
async fn pause_or_end(inner: &Weak<Inner>) -> bool {
    tokio::time::sleep(RECONNECT_PAUSE).await;
    inner.strong_count() == 0
}
