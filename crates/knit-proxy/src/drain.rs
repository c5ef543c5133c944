//! Graceful shutdown: a signal that tells every task to stop taking new work, and a count of the
//! tasks still finishing theirs (the pattern of tokio's mini-redis).

use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Held by the owner of the proxy: starts the drain and waits for it.
pub struct Signal {
    tx: watch::Sender<bool>,
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

/// Held by every listener and connection: says when to stop, and by existing keeps the drain
/// waiting.
#[derive(Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
}

/// Completes on SIGTERM (Kubernetes, systemd, `kill`) or SIGINT (a terminal) and says which.
/// The handlers are installed by this call, not when the future is first polled, so a signal
/// that arrives while the caller is still starting up is kept for it rather than killing the
/// process. Without handlers it never completes, after logging why.
pub fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; only an explicit shutdown stops this process");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    let w = Watch { rx, _done: done_tx.clone() };
    (Signal { tx, done_tx: Some(done_tx), done_rx }, w)
}

impl Signal {
    /// Tells every holder of a [`Watch`] to drain, then waits until all of them are dropped or
    /// `grace` has passed. Returns whether everything finished in time.
    pub async fn drain(mut self, grace: Duration) -> bool {
        let _ = self.tx.send(true);
        self.done_tx = None;
        tokio::time::timeout(grace, self.done_rx.recv()).await.is_ok()
    }
}

impl Watch {
    /// Completes when draining starts.
    pub async fn signaled(&mut self) {
        // An error means the Signal was dropped without draining: treat it as a drain too.
        let _ = self.rx.wait_for(|d| *d).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}
