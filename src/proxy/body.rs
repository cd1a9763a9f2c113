//! The one response body type the gateway produces: the upstream's body
//! passed through as it streams, or a small body of our own. Either way it
//! carries the request's [`InFlight`] guard, so a request counts as in flight
//! until its body has been sent or dropped, which is what idle-connection
//! tracking and the in-flight gauge need.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use prometheus::IntGauge;

use super::upstream::ResponseBody;

pub struct GateBody {
    inner: Inner,
    _in_flight: Option<InFlight>,
}

enum Inner {
    Upstream(ResponseBody),
    Full(Full<Bytes>),
}

impl GateBody {
    pub fn upstream(body: ResponseBody) -> Self {
        GateBody {
            inner: Inner::Upstream(body),
            _in_flight: None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        GateBody {
            inner: Inner::Full(Full::new(bytes.into())),
            _in_flight: None,
        }
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub fn with_guard(mut self, guard: InFlight) -> Self {
        self._in_flight = Some(guard);
        self
    }
}

impl Body for GateBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(b) => b.size_hint(),
        }
    }
}

/// Per-connection activity, read by the connection's idle watchdog.
#[derive(Debug)]
pub struct ConnActivity {
    epoch: Instant,
    active: AtomicUsize,
    started: AtomicUsize,
    idle_since_ms: AtomicU64,
}

impl ConnActivity {
    pub fn new() -> Self {
        ConnActivity {
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    pub fn has_served(&self) -> bool {
        self.started() > 0
    }

    /// How many requests the connection has started.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    /// When the connection last became idle.
    pub fn idle_since(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self::new()
    }
}

/// Held while a request is being served.
pub struct InFlight {
    conn: Arc<ConnActivity>,
    gauge: IntGauge,
}

impl InFlight {
    pub fn start(conn: Arc<ConnActivity>, gauge: IntGauge) -> Self {
        conn.active.fetch_add(1, Ordering::AcqRel);
        conn.started.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        InFlight { conn, gauge }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.conn.epoch.elapsed().as_millis() as u64;
        self.conn.idle_since_ms.store(ms, Ordering::Release);
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}
