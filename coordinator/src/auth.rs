//! Bearer-token authentication of every gRPC call, as a tower layer in front of both services.
//!
//! Two tokens, two roles. The **worker token** may call the `Workers` service (register, lease,
//! heartbeat, report, complete, fail, ship logs). The **admin token** may call everything,
//! including the steering calls of `Sweeps` (SubmitSweep, CancelSweep, RetrySweep, ResumeSweep).
//! The read-only `Sweeps` calls (ListSweeps, GetSweep, ListJobs, GetJob, WatchSweep, GetCurve,
//! ListWorkers, ListEvents, FollowEvents, ListLogs, FollowLogs) accept either token: they
//! change nothing, and a worker operator watching progress should not need the admin secret.
//!
//! The **viewer token** (optional) may make the read-only calls and open the dashboard
//! ([`crate::http`]), and nothing else: for people who watch sweeps but must not steer them.
//!
//! With no token configured auth is off; `serve` allows that only on a loopback address (or with
//! `--insecure`), so local runs and tests stay open while a cluster deployment is closed by
//! default. A layer (not a tonic interceptor) because the decision depends on the method path,
//! which interceptors do not see.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};
use tracing::warn;

use crate::metrics::Metrics;

/// Shortest token accepted: 16 bytes of a random token are beyond guessing over the network,
/// while a short one ("secret", "admin") is a configuration mistake worth refusing.
pub const MIN_TOKEN_LEN: usize = 16;

/// Longest token accepted; it travels in an HTTP header on every call.
pub const MAX_TOKEN_LEN: usize = 1024;

/// A token's bytes; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Validates a token read from `origin` (a flag or variable name, used in the error): surrounding
    /// whitespace (a file's trailing newline) is dropped; the rest must be 16–1024 visible ASCII
    /// characters, because it is sent as an HTTP header value.
    ///
    /// # Errors
    /// A message naming `origin` and what is allowed.
    pub fn new(text: &str, origin: &str) -> Result<Secret, String> {
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "{origin}: the token is {} bytes long; allowed: {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} bytes \
                 (make one with `openssl rand -hex 32`)",
                token.len()
            ));
        }
        if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "{origin}: the token contains {bad:?}; allowed: visible ASCII characters without spaces"
            ));
        }
        Ok(Secret(token.as_bytes().to_vec()))
    }

    /// Constant-time equality: the time taken depends on the lengths only, not on where the
    /// bytes first differ, so a caller cannot find the token byte by byte by timing refusals.
    fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_slice().ct_eq(presented))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The configured tokens. Both `None`: auth is off.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Allows every call.
    pub admin: Option<Secret>,
    /// Allows the `Workers` service and the read-only `Sweeps` calls.
    pub worker: Option<Secret>,
    /// Allows the read-only calls and the dashboard only.
    pub viewer: Option<Secret>,
}

/// Which configured token a presented one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The admin token.
    Admin,
    /// The worker token.
    Worker,
    /// The viewer token.
    Viewer,
}

impl Tokens {
    /// True when no token is configured and every call is let through.
    pub fn is_open(&self) -> bool {
        self.admin.is_none() && self.worker.is_none() && self.viewer.is_none()
    }

    /// The role of `presented`, or `None` when it is no configured token. Every configured token
    /// is compared (in constant time), so the timing does not tell which one was close.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let is = |t: &Option<Secret>| t.as_ref().is_some_and(|t| t.matches(presented));
        let (admin, worker, viewer) = (is(&self.admin), is(&self.worker), is(&self.viewer));
        if admin {
            Some(Role::Admin)
        } else if worker {
            Some(Role::Worker)
        } else if viewer {
            Some(Role::Viewer)
        } else {
            None
        }
    }
}

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// The admin token.
    Admin,
    /// The worker or the admin token.
    Worker,
    /// Either token (read-only calls).
    Any,
    /// No token: the gRPC health protocol, so probes (Docker, Kubernetes, load balancers)
    /// need no secret. It tells only whether the coordinator serves.
    Nothing,
}

impl Need {
    fn describe(self) -> &'static str {
        match self {
            Need::Admin => "the admin token",
            Need::Worker => "the worker token (or the admin token)",
            Need::Any => "a valid token (worker or admin)",
            Need::Nothing => "no token",
        }
    }
}

/// The role a path needs and its short method name. Unknown paths need the admin token: deny by
/// default, so a method added later is closed until someone decides otherwise.
fn need_of(path: &str) -> (Need, &str) {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("", path));
    let need = match (service, method) {
        ("grpc.health.v1.Health", "Check" | "Watch") => Need::Nothing,
        ("lorasweep.v1.Workers", _) => Need::Worker,
        // Uploads and warnings are fenced worker calls; reading artifacts changes nothing.
        ("lorasweep.v1.Artifacts", "UploadArtifact" | "ReportJobWarning" | "ReportResumed") => Need::Worker,
        ("lorasweep.v1.Artifacts", "ListArtifacts" | "DownloadArtifact") => Need::Any,
        ("lorasweep.v1.Sweeps", "SubmitSweep" | "CancelSweep" | "RetrySweep" | "ResumeSweep") => Need::Admin,
        (
            "lorasweep.v1.Sweeps",
            "ListSweeps" | "GetSweep" | "ListJobs" | "GetJob" | "WatchSweep" | "GetCurve" | "ListWorkers"
            | "ListEvents" | "FollowEvents" | "ListLogs" | "FollowLogs",
        ) => Need::Any,
        _ => Need::Admin,
    };
    (need, method)
}

/// Decides one call from its path and `authorization` header value.
fn check(tokens: &Tokens, path: &str, authorization: Option<&[u8]>) -> Result<(), Status> {
    let (need, method) = need_of(path);
    if tokens.is_open() || need == Need::Nothing {
        return Ok(());
    }
    let how =
        "send it as `authorization: Bearer <token>` (lorasweep and lorasweep-worker: --token-file or LORASWEEP_TOKEN)";
    let Some(header) = authorization else {
        return Err(Status::unauthenticated(format!("{method} needs {}; no token was sent; {how}", need.describe())));
    };
    let presented = header.strip_prefix(b"Bearer ").or_else(|| header.strip_prefix(b"bearer ")).ok_or_else(|| {
        Status::unauthenticated(format!(
            "{method} needs {}; the authorization header is not `Bearer <token>`",
            need.describe()
        ))
    })?;
    match (tokens.role_of(presented), need) {
        (Some(Role::Admin), _) => Ok(()),
        (Some(Role::Worker), Need::Worker | Need::Any | Need::Nothing) => Ok(()),
        (Some(Role::Worker), Need::Admin) => Err(Status::permission_denied(format!(
            "{method} needs the admin token; the worker token only registers, leases, reports and reads"
        ))),
        (Some(Role::Viewer), Need::Any | Need::Nothing) => Ok(()),
        (Some(Role::Viewer), Need::Admin | Need::Worker) => {
            Err(Status::permission_denied(format!("{method} needs {}; the viewer token only reads", need.describe())))
        }
        (None, _) => {
            Err(Status::unauthenticated(format!("{method} needs {}; the token sent is not valid", need.describe())))
        }
    }
}

/// The tower layer adding [`AuthService`] in front of the gRPC routes.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) metrics: Arc<Metrics>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, tokens: self.tokens.clone(), metrics: self.metrics.clone() }
    }
}

/// Refuses calls without the token their method needs; passes the rest on. Also renames the
/// codec's message-size refusal (see [`crate::limits::rename_decode_limit`]).
#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let header = request.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        if let Err(status) = check(&self.tokens, request.uri().path(), header) {
            warn!(path = request.uri().path(), code = ?status.code(), "call refused by auth");
            self.metrics.auth_refused(status.code());
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            crate::limits::rename_decode_limit(&mut response);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    const ADMIN: &str = "admin-0123456789abcdef";
    const WORKER: &str = "worker-0123456789abcdef";
    const VIEWER: &str = "viewer-0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens {
            admin: Some(Secret::new(ADMIN, "a").unwrap()),
            worker: Some(Secret::new(WORKER, "w").unwrap()),
            viewer: Some(Secret::new(VIEWER, "v").unwrap()),
        }
    }

    fn code(path: &str, header: Option<&str>) -> Option<Code> {
        check(&tokens(), path, header.map(str::as_bytes)).err().map(|s| s.code())
    }

    #[test]
    fn roles_map_onto_methods() {
        let admin = format!("Bearer {ADMIN}");
        let worker = format!("Bearer {WORKER}");
        for path in ["/lorasweep.v1.Sweeps/SubmitSweep", "/lorasweep.v1.Sweeps/CancelSweep", "/x.Y/Z"] {
            assert_eq!(code(path, Some(&admin)), None, "{path}");
            assert_eq!(code(path, Some(&worker)), Some(Code::PermissionDenied), "{path}");
            assert_eq!(code(path, None), Some(Code::Unauthenticated), "{path}");
        }
        for path in ["/lorasweep.v1.Workers/LeaseJob", "/lorasweep.v1.Sweeps/GetCurve"] {
            assert_eq!(code(path, Some(&admin)), None, "{path}");
            assert_eq!(code(path, Some(&worker)), None, "{path}");
            assert_eq!(code(path, Some("Bearer admin-0123456789abcdeX")), Some(Code::Unauthenticated));
            assert_eq!(code(path, Some(ADMIN)), Some(Code::Unauthenticated), "no Bearer prefix");
        }
        assert_eq!(check(&Tokens::default(), "/lorasweep.v1.Sweeps/SubmitSweep", None).map_err(|s| s.code()), Ok(()));
        // Probes carry no secret; only the health protocol's two methods are open.
        for path in ["/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"] {
            assert_eq!(code(path, None), None, "{path}");
        }
        assert_eq!(code("/grpc.health.v1.Health/Other", None), Some(Code::Unauthenticated));
    }

    #[test]
    fn the_viewer_token_reads_and_changes_nothing() {
        let viewer = format!("Bearer {VIEWER}");
        for path in
            ["/lorasweep.v1.Sweeps/GetSweep", "/lorasweep.v1.Sweeps/ListJobs", "/lorasweep.v1.Sweeps/FollowLogs"]
        {
            assert_eq!(code(path, Some(&viewer)), None, "{path}");
        }
        for path in [
            "/lorasweep.v1.Sweeps/SubmitSweep",
            "/lorasweep.v1.Sweeps/CancelSweep",
            "/lorasweep.v1.Sweeps/ResumeSweep",
            "/lorasweep.v1.Workers/LeaseJob",
            "/lorasweep.v1.Workers/RegisterWorker",
            "/lorasweep.v1.Artifacts/UploadArtifact",
        ] {
            assert_eq!(code(path, Some(&viewer)), Some(Code::PermissionDenied), "{path}");
        }
        let t = tokens();
        assert_eq!(t.role_of(VIEWER.as_bytes()), Some(Role::Viewer));
        assert_eq!(t.role_of(WORKER.as_bytes()), Some(Role::Worker));
        assert_eq!(t.role_of(ADMIN.as_bytes()), Some(Role::Admin));
        assert_eq!(t.role_of(b"viewer-0123456789abcdeX"), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// Any header on any path: no panic, and only the exact tokens (after `Bearer `) pass.
        #[test]
        fn only_the_exact_tokens_pass(
            header in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)),
            near in proptest::collection::vec((0usize..40, proptest::prelude::any::<u8>()), 0..3),
            path in "/lorasweep\\.v1\\.(Sweeps|Workers|Artifacts|Other)/[A-Za-z]{0,14}",
        ) {
            let t = tokens();
            let exact = header.as_deref().is_some_and(|h| {
                let token = h.strip_prefix(b"Bearer ").or_else(|| h.strip_prefix(b"bearer "));
                token == Some(ADMIN.as_bytes()) || token == Some(WORKER.as_bytes()) || token == Some(VIEWER.as_bytes())
            });
            let passed = check(&t, &path, header.as_deref()).is_ok();
            proptest::prop_assert!(!passed || exact, "header {:?} passed on {}", header, path);
            // Tokens with a few bytes changed never pass.
            let mut mutated = format!("Bearer {ADMIN}").into_bytes();
            for &(i, b) in &near {
                let i = 7 + i % ADMIN.len();
                mutated[i] = b;
            }
            if mutated != format!("Bearer {ADMIN}").into_bytes() && mutated != format!("Bearer {WORKER}").into_bytes() {
                proptest::prop_assert!(check(&t, &path, Some(&mutated)).is_err());
            }
        }
    }

    #[test]
    fn bad_tokens_are_refused_and_never_printed() {
        for bad in
            ["", "short", &"x".repeat(2000), "has a space in it ok", "tab\there-0123456789", "ünïcödé-0123456789"]
        {
            assert!(Secret::new(bad, "--admin-token-file").is_err(), "{bad:?}");
        }
        let s = Secret::new(&format!("  {ADMIN}\n"), "f").expect("trimmed token is fine");
        assert!(s.matches(ADMIN.as_bytes()));
        assert!(!format!("{s:?}").contains(ADMIN));
    }
}
