//! Clients against a coordinator that requires tokens: the worker daemon authenticates with the
//! worker token, the CLI with `--token-file`/`LORASWEEP_TOKEN`, and a missing token is refused
//! with a message that says how to give one.

use lorasweep_coordinator::auth::{Secret, Tokens};
use lorasweep_worker::ConnectArgs;
use tokio_util::sync::CancellationToken;

use crate::helpers::{self, cli, cli_ok};

const ADMIN: &str = "admin-0123456789abcdef";
const WORKER: &str = "worker-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_protected_coordinator_serves_clients_that_send_their_token() -> anyhow::Result<()> {
    helpers::init_tracing();
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut config = lorasweep_coordinator::Config::new(dir.path().join("data"));
    let secret = |t: &str| Secret::new(t, "test").map_err(anyhow::Error::msg);
    config.tokens = Tokens { admin: Some(secret(ADMIN)?), worker: Some(secret(WORKER)?), viewer: None };
    let stop = CancellationToken::new();
    let server = tokio::spawn(lorasweep_coordinator::serve(listener, config, stop.clone()));

    let sweep_file = dir.path().join("one.toml");
    std::fs::write(
        &sweep_file,
        "[train]\nmax_steps = 3\n[grid]\ninits = [\"standard\"]\nlrs = [1e-3]\nseeds = [42]\n",
    )?;
    let sweep_path = sweep_file.to_str().expect("utf-8 path");

    // No token: refused, and the message says how to give one.
    let refused = cli(&url, &["submit", sweep_path]).await?;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--token-file") || err.contains("LORASWEEP_TOKEN"), "{err}");
    // The worker token may read but not submit.
    let worker_file = dir.path().join("worker.token");
    std::fs::write(&worker_file, format!("{WORKER}\n"))?;
    let worker_path = worker_file.to_str().expect("utf-8 path");
    assert!(!cli(&url, &["--token-file", worker_path, "submit", sweep_path]).await?.status.success());
    // The admin token may submit.
    let admin_file = dir.path().join("admin.token");
    std::fs::write(&admin_file, format!("{ADMIN}\n"))?;
    let admin_path = admin_file.to_str().expect("utf-8 path");
    let sweep = cli_ok(&url, &["--token-file", admin_path, "submit", sweep_path]).await?.trim().to_string();

    // A worker with the worker token runs it.
    let connect = ConnectArgs { token: Some(WORKER.into()), ..Default::default() };
    let worker = helpers::spawn_worker_with(&url, "authed", 1, &connect)?;
    helpers::await_succeeded_via_cli(&url, &["--token-file", worker_path], &sweep, 1).await?;
    worker.stop().await?;
    stop.cancel();
    server.await??;
    Ok(())
}
