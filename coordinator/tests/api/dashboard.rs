//! The web dashboard over real HTTP: every page and its data for a sweep with finished,
//! running, failed and diverged jobs; escaping of what users wrote; the live stream; and the
//! login (refusals, cookie attributes, the viewer token, log-out).

use std::net::SocketAddr;

use lorasweep_coordinator::auth::{Secret, Tokens};
use lorasweep_proto::pb;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::helpers::*;

const XSS: &str = "<script>alert(1)</script>";
const ADMIN: &str = "admin-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";

/// One HTTP/1.1 exchange: `method path` with `headers` and `body`; returns the head and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP head in {raw:?}"))?;
    Ok((head.to_string(), body.to_string()))
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(String, String)> {
    http(addr, "GET", path, &[], "").await
}

fn status(head: &str) -> u16 {
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A 2-lr × 2-seed Standard sweep named like an attack: one job succeeded, one diverged, one
/// failed (its error holds markup too), one running with points.
async fn mixed_sweep(c: &mut TestCoordinator) -> anyhow::Result<(String, Vec<pb::Lease>)> {
    let toml =
        format!("name = {XSS:?}\n[grid]\ninits = [\"standard\", \"reversed\"]\nlrs = [1e-4, 1e-3]\nseeds = [0]\n");
    let sweep = c.submit(&toml).await?;
    let w = c.register(&format!("worker {XSS}")).await?;
    let ok = c.lease(&w).await?;
    c.report(&ok.job_id, ok.attempt, &train_points(50), 10).await?;
    c.complete(&w, &ok, 2.25).await?;
    let diverged = c.lease(&w).await?;
    c.workers
        .complete_job(pb::CompleteJobRequest {
            worker_id: w.clone(),
            job_id: diverged.job_id.clone(),
            attempt: diverged.attempt,
            state: pb::JobState::Diverged as i32,
            final_eval_loss: Some(9.5),
            diverged_step: Some(7),
            diverged_loss: Some(f64::INFINITY),
            ..Default::default()
        })
        .await?;
    let failed = c.lease(&w).await?;
    c.workers
        .fail_job(pb::FailJobRequest {
            worker_id: w.clone(),
            job_id: failed.job_id.clone(),
            attempt: failed.attempt,
            error: format!("model not found: <b>{XSS}</b>"),
            retryable: false,
            released: false,
        })
        .await?;
    let running = c.lease(&w).await?;
    c.report(&running.job_id, running.attempt, &train_points(20), 5).await?;
    Ok((sweep, vec![ok, diverged, failed, running]))
}

/// No raw markup a user wrote reaches a page.
fn assert_escaped(page: &str, what: &str) {
    assert!(!page.contains(XSS), "{what}: the raw sweep name or error is in the page");
    assert!(!page.contains("model not found: <b>"), "{what}: raw markup from an error is in the page");
}

#[tokio::test]
async fn every_page_shows_a_mixed_sweep_and_escapes_what_users_wrote() -> anyhow::Result<()> {
    let (mut c, addr) = spawn_with_dashboard(|_| {}).await?;
    let (sweep, leases) = mixed_sweep(&mut c).await?;
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";

    let (head, index) = get(addr, "/").await?;
    assert_eq!(status(&head), 200, "{head}");
    assert!(header(&head, "content-type").is_some_and(|t| t.starts_with("text/html")), "{head}");
    assert_escaped(&index, "/");
    assert!(index.contains(escaped) && index.contains(&format!("href=\"/sweeps/{sweep}\"")), "{index}");
    assert!(index.contains("3/4"), "3 of 4 jobs finished: {index}");
    assert!(index.contains("1 running, 1 succeeded, 1 failed, 1 diverged"), "counts by state: {index}");

    let (head, page) = get(addr, &format!("/sweeps/{sweep}")).await?;
    assert_eq!(status(&head), 200, "{head}{page}");
    assert_escaped(&page, "/sweeps");
    assert!(page.contains(escaped));
    // The tables carry the stored values: Standard at 1e-4 is the succeeded job (2.25).
    let ok_job = c.job(&sweep, &leases[0].job_id).await?;
    let cell = format!("data-init=\"{}\" data-lr=\"{:?}\" data-mean=\"2.25\"", ok_job.init, ok_job.lr);
    assert!(page.contains(&cell), "missing {cell}");
    assert!(page.contains("data-mean=\"9.5\" data-std=\"0.0\" data-n=\"1\" data-diverged=\"1\""), "the diverged cell");
    for (lease, state) in leases.iter().zip(["succeeded", "diverged", "failed", "running"]) {
        assert!(page.contains(&format!("data-job=\"{}\" data-state=\"{state}\"", lease.job_id)), "{state} row");
    }
    assert!(page.contains("model not found: &lt;b&gt;"), "the failed job's error, escaped");
    // Figures are separate, content-named SVGs: loss vs lr, zoomed, eval curves.
    let figures: Vec<&str> = page.split("<img src=\"/figures/").skip(1).filter_map(|s| s.split('"').next()).collect();
    assert_eq!(figures.len(), 3, "three figures");
    let (head, svg) = get(addr, &format!("/figures/{}", figures[0])).await?;
    assert_eq!(status(&head), 200);
    assert_eq!(header(&head, "content-type"), Some("image/svg+xml"));
    assert!(header(&head, "cache-control").is_some_and(|c| c.contains("immutable")));
    assert!(
        svg.starts_with("<svg") && svg.contains("&lt;script&gt;") && !svg.contains(XSS),
        "the figure escapes the title"
    );
    assert_eq!(status(&get(addr, "/figures/0000000000000000.svg").await?.0), 404);
    assert!(page.contains("<script>") && page.contains("EventSource"), "the live script");
    assert!(page.contains("worker &lt;script&gt;"), "the workers table, escaped");

    // Filter and sort.
    let (_, only_failed) = get(addr, &format!("/sweeps/{sweep}?state=failed")).await?;
    assert_eq!(only_failed.matches("data-job=").count(), 1, "state filter");
    let (_, by_eval) = get(addr, &format!("/sweeps/{sweep}?sort=eval&desc=1")).await?;
    let first = by_eval.find(&format!("data-job=\"{}\"", leases[1].job_id)).unwrap_or(usize::MAX);
    let second = by_eval.find(&format!("data-job=\"{}\"", leases[0].job_id)).unwrap_or(0);
    assert!(first < second, "eval loss descending puts the diverged 9.5 before 2.25");

    // The fragment is <main>'s content only.
    let (_, fragment) = get(addr, &format!("/sweeps/{sweep}?fragment=1")).await?;
    assert!(!fragment.contains("<html") && fragment.contains("id=jobs"), "fragment");

    // Job pages.
    let (head, job) = get(addr, &format!("/jobs/{}", leases[0].job_id)).await?;
    assert_eq!(status(&head), 200);
    assert!(job.contains("id=state>succeeded") && job.contains("50 train and 0 eval points stored"), "{job}");
    assert!(job.contains("<img src=\"/figures/"), "the job's curves");
    assert!(
        job.contains("id=attempts") && job.contains("leased") && job.contains("final eval loss 2.250000"),
        "events"
    );
    let (_, job) = get(addr, &format!("/jobs/{}", leases[1].job_id)).await?;
    assert!(job.contains("diverged at step 7: train loss inf"), "the diverged job's error");
    let (_, job) = get(addr, &format!("/jobs/{}", leases[2].job_id)).await?;
    assert_escaped(&job, "/jobs (failed)");
    assert!(job.contains("(fatal)"), "the failed attempt's kind");
    let (_, job) = get(addr, &format!("/jobs/{}", leases[3].job_id)).await?;
    assert!(job.contains("id=state>running") && job.contains("20 train"), "the running job");

    let (head, missing) = get(addr, "/jobs/no-such-job").await?;
    assert_eq!(status(&head), 404);
    assert!(missing.contains("no-such-job"));
    assert_eq!(status(&get(addr, "/sweeps/nope").await?.0), 404);
    assert_eq!(status(&get(addr, "/nothing/here").await?.0), 404);
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_live_stream_says_when_something_changed() -> anyhow::Result<()> {
    let (mut c, addr) = spawn_with_dashboard(|_| {}).await?;
    let sweep = c.submit(&grid(1, 1)).await?;
    let w = c.register("w").await?;
    let lease = c.lease(&w).await?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"GET /live HTTP/1.1\r\nHost: test\r\n\r\n").await?;
    let mut lines = BufReader::new(read).lines();
    let mut head = Vec::new();
    while let Some(line) = lines.next_line().await? {
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    assert!(head.iter().any(|h| h.eq_ignore_ascii_case("content-type: text/event-stream")), "{head:?}");
    c.report(&lease.job_id, lease.attempt, &train_points(3), 3).await?;
    let data = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(d) = line.strip_prefix("data:") {
                return anyhow::Ok(d.trim().to_string());
            }
        }
        anyhow::bail!("the stream ended")
    })
    .await??;
    assert!(data.parse::<u64>().is_ok_and(|v| v > 0), "the store's change counter: {data:?}");
    // And the page reflects the change.
    let (_, page) = get(addr, &format!("/jobs/{}", lease.job_id)).await?;
    assert!(page.contains("3 train"), "the reported points: {page}");
    let _ = sweep;
    // Stopping the coordinator ends open streams (graceful shutdown does not hang on them).
    tokio::time::timeout(std::time::Duration::from_secs(10), c.stop()).await??;
    Ok(())
}

#[tokio::test]
async fn with_tokens_a_browser_must_log_in_and_the_viewer_token_only_reads() -> anyhow::Result<()> {
    let (mut c, addr) = spawn_with_dashboard(|config| {
        config.tokens = Tokens {
            admin: Some(Secret::new(ADMIN, "test").expect("token")),
            worker: None,
            viewer: Some(Secret::new(VIEWER, "test").expect("token")),
        };
    })
    .await?;
    // Anonymous: scripts get 401, a browser is sent to the form and back.
    let (head, _) = get(addr, "/").await?;
    assert_eq!(status(&head), 401, "{head}");
    let (head, _) = http(addr, "GET", "/sweeps/x?lr=1e-3", &[("Accept", "text/html")], "").await?;
    assert_eq!(status(&head), 303, "{head}");
    assert_eq!(header(&head, "location"), Some("/login?next=%2Fsweeps%2Fx%3Flr%3D1e-3"));
    assert_eq!(status(&get(addr, "/live").await?.0), 401, "the live stream is closed too");
    let (head, form) = get(addr, "/login?next=/x").await?;
    assert_eq!(status(&head), 200);
    assert!(form.contains("type=password"), "{form}");

    // A wrong token: 401, no cookie.
    let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
    let (head, page) = http(addr, "POST", "/login", &form_type, "token=viewer-token-0123456789abcdeX&next=%2F").await?;
    assert_eq!(status(&head), 401);
    assert!(header(&head, "set-cookie").is_none() && page.contains("not valid"));

    // The viewer token: a session cookie that scripts cannot read or send cross-site.
    let (head, _) = http(addr, "POST", "/login", &form_type, &format!("token={VIEWER}&next=%2F")).await?;
    assert_eq!(status(&head), 303, "{head}");
    let cookie = header(&head, "set-cookie").expect("a session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(VIEWER), "the cookie holds a session id, not the token");
    let session = cookie.split(';').next().expect("name=value").to_string();
    let (head, index) = http(addr, "GET", "/", &[("Cookie", &session)], "").await?;
    assert_eq!(status(&head), 200, "{head}");
    assert!(index.contains("Log out"));
    // An off-site `next` is not followed.
    let (head, _) =
        http(addr, "POST", "/login", &form_type, &format!("token={VIEWER}&next=%2F%2Fevil.example")).await?;
    assert_eq!(header(&head, "location"), Some("/"));

    // A bearer token works for scripts; the viewer token cannot steer over gRPC.
    assert_eq!(status(&http(addr, "GET", "/", &[("Authorization", &format!("Bearer {VIEWER}"))], "").await?.0), 200);
    let mut request = tonic::Request::new(pb::SubmitSweepRequest { sweep_toml: grid(1, 1), source: "x".into() });
    request.metadata_mut().insert("authorization", format!("Bearer {VIEWER}").parse()?);
    let refused = c.sweeps.submit_sweep(request).await.expect_err("the viewer token submits nothing");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Log-out ends the session.
    let (head, _) = http(addr, "POST", "/logout", &[("Cookie", &session)], "").await?;
    assert!(header(&head, "set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(status(&http(addr, "GET", "/", &[("Cookie", &session)], "").await?.0), 401);
    c.stop().await?;
    Ok(())
}

#[test]
fn an_exposed_dashboard_without_tokens_is_refused() {
    let open = Tokens::default();
    let err =
        lorasweep_coordinator::http::check_exposure("0.0.0.0:8080".parse().expect("addr"), &open).expect_err("refused");
    assert!(err.to_string().contains("0.0.0.0:8080") && err.to_string().contains("--admin-token-file"), "{err}");
    assert!(lorasweep_coordinator::http::check_exposure("127.0.0.1:8080".parse().expect("addr"), &open).is_ok());
    assert!(lorasweep_coordinator::http::check_exposure("[::1]:8080".parse().expect("addr"), &open).is_ok());
}
