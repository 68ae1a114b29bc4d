//! Who may look at the dashboard.
//!
//! With no token configured (only allowed on loopback, see [`super::check_exposure`]) every
//! request passes. Otherwise a request passes with `Authorization: Bearer <token>` (any
//! configured token: the dashboard only reads) or with the cookie of a session that a login
//! made. Logging in posts a token to `/login`; it is compared in constant time
//! ([`Tokens::role_of`]) and a session id (128 random bits, not the token) is set as an
//! `HttpOnly; SameSite=Strict` cookie, so scripts on other sites can neither read nor send it.
//! Sessions live in memory for [`SESSION_TTL`]; a restart logs everyone out.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    Form,
    extract::{Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use tracing::warn;

use super::{App, html};
use crate::auth::Role;

/// How long a login lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's name.
pub(crate) const COOKIE: &str = "lorasweep_session";

/// At most this many sessions are kept; the oldest go first (a bound on what failed or
/// repeated logins can make the server hold).
const MAX_SESSIONS: usize = 10_000;

/// Live sessions: id → (role, created).
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, (Role, Instant)>>);

impl Sessions {
    fn create(&self, role: Role) -> String {
        let id = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, (_, at)| at.elapsed() < SESSION_TTL);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), (role, Instant::now()));
        id
    }

    fn get(&self, id: &str) -> Option<Role> {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(id).filter(|(_, at)| at.elapsed() < SESSION_TTL).map(|(role, _)| *role)
    }

    fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }
}

/// The session id in the request's cookies, if any.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The role a request carries, if any.
fn role(app: &App, headers: &HeaderMap) -> Option<Role> {
    if let Some(bearer) = headers.get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) {
        return app.tokens.role_of(bearer);
    }
    session_id(headers).and_then(|id| app.sessions.get(id))
}

/// Lets a request through when auth is off or it carries a token or session; otherwise a
/// browser is sent to the login form (and back afterwards) and anything else gets 401.
pub(crate) async fn require(State(app): State<App>, request: Request, next: Next) -> Response {
    if app.tokens.is_open() || role(&app, request.headers()).is_some() {
        return next.run(request).await;
    }
    let wants_html =
        request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    if wants_html && request.method() == axum::http::Method::GET {
        return Redirect::to(&format!("/login?next={}", html::query_value(&path))).into_response();
    }
    (StatusCode::UNAUTHORIZED, "log in at /login, or send Authorization: Bearer <token>\n").into_response()
}

/// Where to go after logging in: only a path on this server (no `//host` or scheme).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

/// `?next=` of the login form.
#[derive(Debug, Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

fn form_page(next: &str, message: Option<&str>) -> String {
    let message = message.map(|m| format!("<p class=pause>{}</p>", html::esc(m))).unwrap_or_default();
    html::frame(
        "Log in",
        &format!(
            "<h1>Log in</h1>{message}<form method=post action=\"/login\">\
             <input type=hidden name=next value=\"{}\">\
             <label>Token <input type=password name=token autocomplete=current-password autofocus></label> \
             <button>Log in</button></form>\
             <p class=muted>Any token of this coordinator opens the dashboard, which only reads; the viewer \
             token (--viewer-token-file) is meant for it.</p>",
            html::esc(next)
        ),
        false,
    )
}

/// `GET /login`.
pub(crate) async fn form(Query(q): Query<NextQuery>) -> Html<String> {
    Html(form_page(safe_next(q.next.as_deref()), None))
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct Login {
    token: String,
    next: Option<String>,
}

/// `POST /login`: a valid token makes a session; anything else shows the form again (401).
pub(crate) async fn submit(State(app): State<App>, Form(login): Form<Login>) -> Response {
    let next = safe_next(login.next.as_deref()).to_string();
    if app.tokens.is_open() {
        return Redirect::to(&next).into_response();
    }
    let Some(role) = app.tokens.role_of(login.token.trim().as_bytes()) else {
        warn!("dashboard login refused: the token is not valid");
        return (StatusCode::UNAUTHORIZED, Html(form_page(&next, Some("That token is not valid.")))).into_response();
    };
    let id = app.sessions.create(role);
    let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs());
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

/// `POST /logout`: ends the session and clears the cookie.
pub(crate) async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        app.sessions.remove(id);
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

/// Whether the request came with a session (so pages show the log-out button).
pub(crate) fn has_session(headers: &HeaderMap) -> bool {
    session_id(headers).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next(Some("/sweeps/abc?x=1")), "/sweeps/abc?x=1");
        for bad in ["//evil.example/", "https://evil.example/", "/\\evil", "evil"] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn sessions_expire_and_can_be_removed() {
        let s = Sessions::default();
        let id = s.create(Role::Viewer);
        assert_eq!(id.len(), 64);
        assert_eq!(s.get(&id), Some(Role::Viewer));
        assert_eq!(s.get("not-a-session"), None);
        s.remove(&id);
        assert_eq!(s.get(&id), None);
    }
}
