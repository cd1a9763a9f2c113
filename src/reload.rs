//! Rule reloads: on SIGHUP and when the rule file changes. A new rule set is
//! loaded and checked off the request path and swapped in whole; a broken
//! file leaves the running rules serving and shows in the log and metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use prometheus::IntCounterVec;

use crate::scopes::RuleSet;

/// How often the rule file's modification time is looked at. Polling, not
/// inotify: it also sees Kubernetes ConfigMap updates, which swap a symlink.
const POLL: Duration = Duration::from_secs(2);

/// Loads new rules with `load` and hands them to `install`; counts each
/// attempt in `reloads` by result.
pub async fn watch_rules(
    file: Option<PathBuf>,
    load: impl Fn() -> Result<RuleSet, String> + Send + 'static,
    install: impl Fn(Arc<RuleSet>) + Send + 'static,
    reloads: IntCounterVec,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; rules reload only on file change");
            return;
        }
    };
    let mut seen = file.as_ref().and_then(modified);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading rules");
            }
            _ = tokio::time::sleep(POLL), if file.is_some() => {
                let now = file.as_ref().and_then(modified);
                if now == seen {
                    continue;
                }
                seen = now;
                tracing::info!("rule file changed: reloading rules");
            }
            _ = shutdown.changed() => return,
        }
        match load() {
            Ok(rules) => {
                install(Arc::new(rules));
                reloads.with_label_values(&["ok"]).inc();
                tracing::info!("rules reloaded");
            }
            Err(e) => {
                reloads.with_label_values(&["error"]).inc();
                tracing::error!("rules not reloaded, the previous rules keep serving: {e}");
            }
        }
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
