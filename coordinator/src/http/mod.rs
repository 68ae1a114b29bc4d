//! The read-only web dashboard (`--http ADDR`): every sweep with its progress, a sweep's two
//! result tables, figures, jobs and workers, a job's curves, attempts, events and logs. Pages
//! are HTML rendered here from the store (the same reads as the gRPC services, never a second
//! connection to the database file), figures are the `lorasweep-report` SVGs the CLI writes,
//! and open pages update without a reload through one server-sent-events stream each.
//!
//! Nothing is fetched from elsewhere: clusters are often air-gapped, so the CSS and the small
//! script live in [`html`].
//!
//! - [`login`]: who may look. Open on loopback with no tokens; otherwise a browser logs in with
//!   any configured token (admin, worker or viewer) and gets a session cookie, and scripts may
//!   send `Authorization: Bearer`.
//! - [`pages`]: the three pages; [`tables`]: their tables.
//! - [`live`]: the change stream and the per-page render cache that lets many open pages share
//!   one render.
//! - [`figures`]: the SVG figures, served by content hash so browsers fetch each once.
//! - [`html`]: escaping and the page frame.

mod figures;
mod html;
mod live;
mod login;
mod pages;
mod tables;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    http::StatusCode,
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Error, auth::Tokens, store::Store};

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) store: Store,
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) sessions: Arc<login::Sessions>,
    pub(crate) cache: Arc<live::Cache>,
    pub(crate) figures: Arc<figures::Figures>,
    pub(crate) stop: CancellationToken,
}

/// Refuses a dashboard address other hosts can reach when no token is configured: the pages
/// show every sweep, error and log line. `--insecure` does not lift this (it is about gRPC).
///
/// # Errors
/// [`Error::Unsafe`] naming the address and the flags that fix it.
pub fn check_exposure(addr: SocketAddr, tokens: &Tokens) -> Result<(), Error> {
    if tokens.is_open() && !addr.ip().is_loopback() {
        return Err(Error::Unsafe(format!(
            "the dashboard address {addr} is reachable from other hosts and no token is configured; give \
             --admin-token-file (and --viewer-token-file for read-only users), or serve it on 127.0.0.1"
        )));
    }
    Ok(())
}

/// The dashboard's routes.
fn router(app: App) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/sweeps/{id}", get(pages::sweep))
        .route("/jobs/{id}", get(pages::job))
        .route("/live", get(live::stream))
        .route("/figures/{name}", get(figures::serve))
        .route("/logout", post(login::logout))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), login::require))
        .route("/login", get(login::form).post(login::submit))
        .fallback(|| async { not_found("no such page") })
        .with_state(app)
}

/// Serves the dashboard on `listener` until `stop` is cancelled; open live streams end then too.
pub(crate) async fn serve(listener: TcpListener, store: Store, tokens: Arc<Tokens>, stop: CancellationToken) {
    let addr = listener.local_addr().ok();
    let app = App {
        store,
        tokens: tokens.clone(),
        sessions: Arc::new(login::Sessions::default()),
        cache: Arc::new(live::Cache::default()),
        figures: Arc::new(figures::Figures::default()),
        stop: stop.clone(),
    };
    info!(?addr, auth = if tokens.is_open() { "off" } else { "tokens" }, "dashboard serving over http");
    let served = axum::serve(listener, router(app)).with_graceful_shutdown(stop.cancelled_owned()).await;
    if let Err(e) = served {
        warn!(cause = %e, "the dashboard listener failed");
    }
}

/// A page answering 404 with `what` (escaped).
fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Html(html::frame("Not found", &format!("<p>{}</p>", html::esc(what)), false)))
        .into_response()
}

/// Maps a store error onto a page: unknown ids are 404, the rest 500 with the cause.
fn error_page(e: &Error) -> Response {
    match e {
        Error::NotFound(what) => not_found(what),
        other => {
            warn!(cause = %other, "dashboard page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(html::frame("Error", &format!("<p>{}</p>", html::esc(&other.to_string())), false)),
            )
                .into_response()
        }
    }
}
