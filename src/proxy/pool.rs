//! Idle upstream connections, most recently used first, closed after
//! `pool_idle_timeout`. Why the pool is ours and not hyper-util's: see
//! `upstream.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use super::upstream::UpstreamBody;

/// Idle connections, ready for a request: the most recently used first.
pub(super) struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    reaper: AtomicBool,
}

struct Idle {
    tx: SendRequest<UpstreamBody>,
    since: Instant,
}

impl Pool {
    pub(super) fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            reaper: AtomicBool::new(false),
        }
    }

    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            // A connection the homeserver closed is no longer ready.
            if entry.since.elapsed() < self.idle_timeout && entry.tx.is_ready() {
                return Some(entry.tx);
            }
        }
        None
    }

    /// A connection whose response has been read to the end: pooled once
    /// hyper is ready to send on it again.
    pub(super) fn checkin(self: &Arc<Self>, mut tx: SendRequest<UpstreamBody>) {
        if self.max_idle == 0 || tx.is_closed() {
            return;
        }
        if tx.is_ready() {
            self.put(tx);
            return;
        }
        // hyper's connection task has not yet finished with the response
        // (or is still sending a request body): pool it when it has.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            if tx.ready().await.is_ok() {
                if let Some(pool) = pool.upgrade() {
                    pool.put(tx);
                }
            }
        });
    }

    fn put(self: &Arc<Self>, tx: SendRequest<UpstreamBody>) {
        {
            let mut idle = self.lock();
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
        if !self.reaper.swap(true, Ordering::Relaxed) {
            let every =
                (self.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(reap(Arc::downgrade(self), every));
            }
        }
    }
}

/// Closes pooled connections idle for longer than the pool's timeout, and
/// forgets those the homeserver closed; ends with the pool.
async fn reap(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let expired: Vec<Idle> = {
            let mut idle = pool.lock();
            let (keep, expired) = std::mem::take(&mut *idle).into_iter().partition(|entry| {
                entry.since.elapsed() < pool.idle_timeout && !entry.tx.is_closed()
            });
            *idle = keep;
            expired
        };
        // Dropping a sender ends its connection; outside the lock.
        drop(expired);
    }
}
