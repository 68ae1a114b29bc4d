//! The signal that starts a daemon's graceful shutdown (feature `signal`: the coordinator and
//! the worker enable it; the trainer, which has no async runtime, does not).

/// Resolves on the first ctrl-c or SIGTERM (SIGTERM is what Slurm, Kubernetes and Docker send).
/// `what` names the daemon in the log line when SIGTERM cannot be listened for.
pub async fn signalled(what: &str) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(cause = %e, "cannot listen for SIGTERM; only ctrl-c stops the {what}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}
