//! Shutdown: one [`CancellationToken`] per process, cancelled by SIGINT or SIGTERM, that every
//! long-running part (HTTP server, job workers) watches. Each part then has a bounded time to
//! drain before it is abandoned, so a stuck request or job cannot hold the process forever.

use std::future::Future;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

/// Cancels `token` when the process receives SIGINT or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutdown requested; draining");
        token.cancel();
    });
}

async fn wait_for_signal() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => "SIGINT",
        () = terminate => "SIGTERM",
    }
}

/// Runs `task` until it finishes by itself, or until `token` is cancelled and then at most
/// `drain` longer. Returns the task's output, or `None` when the drain time ran out.
pub async fn run_with_drain<F>(
    name: &str,
    task: F,
    token: &CancellationToken,
    drain: Duration,
) -> Option<F::Output>
where
    F: Future,
{
    tokio::pin!(task);
    tokio::select! {
        output = &mut task => return Some(output),
        () = token.cancelled() => {}
    }
    match tokio::time::timeout(drain, task).await {
        Ok(output) => Some(output),
        Err(_) => {
            tracing::warn!(
                part = name,
                drain_secs = drain.as_secs_f64(),
                "drain time ran out; abandoning"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_finishes_in_time_returns_its_output() {
        let token = CancellationToken::new();
        token.cancel();
        let task = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        };
        assert_eq!(
            run_with_drain("t", task, &token, Duration::from_secs(5)).await,
            Some(7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_overruns_the_drain_is_abandoned() {
        let token = CancellationToken::new();
        token.cancel();
        let task = std::future::pending::<u8>();
        assert_eq!(
            run_with_drain("t", task, &token, Duration::from_secs(5)).await,
            None
        );
    }
}
