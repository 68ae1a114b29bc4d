//! The dashboard in a real browser: headless Chromium driven over WebDriver by chromedriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them). A coordinator with the
//! dashboard runs in this process; a simulated worker finishes most of a sweep over gRPC and
//! keeps one job running. The test reads the tables the browser rendered and compares them with
//! `lorasweep results --format json`, reports a point and waits for the page to change without
//! a reload, and takes a screenshot that must not be blank (kept as
//! `target/dashboard-sweep.png`; the README's picture is one of these).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use lorasweep_proto::pb::{self, sweeps_client::SweepsClient, workers_client::WorkersClient};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Kills chromedriver (and so its browser) when the test ends, passed or failed.
struct Driver {
    child: Child,
    addr: SocketAddr,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = webdriver(self.addr, "DELETE", &format!("/session/{s}"), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver call (JSON over HTTP/1.1 on loopback); returns its `value`.
fn webdriver(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver keeps the connection open whatever the request says, so the answer is read
    // by its Content-Length.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 65536];
    let (head, body) = loop {
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "chromedriver closed the connection mid-answer");
        raw.extend_from_slice(&chunk[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8(raw[..end].to_vec())?;
        let len: usize = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
            .and_then(|(_, v)| v.trim().parse().ok())
            .context("no Content-Length from chromedriver")?;
        while raw.len() < end + 4 + len {
            let n = stream.read(&mut chunk)?;
            ensure!(n > 0, "chromedriver closed the connection mid-answer");
            raw.extend_from_slice(&chunk[..n]);
        }
        break (head, String::from_utf8(raw[end + 4..end + 4 + len].to_vec())?);
    };
    let body = body.as_str();
    let v: Value = serde_json::from_str(body).with_context(|| format!("chromedriver said {body:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{method} {path}: {}", v["value"]["message"].as_str().unwrap_or(body));
    }
    Ok(v["value"].clone())
}

impl Driver {
    fn start() -> anyhow::Result<Self> {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            ensure!(
                std::path::Path::new(path).exists(),
                "{path} is missing: this test needs a headless browser (Debian: apt-get install chromium \
                 chromium-driver; .ci/run installs them) — package {package}"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut driver = Driver { child, addr, session: None };
        let deadline = Instant::now() + Duration::from_secs(20);
        while webdriver(addr, "GET", "/status", None).is_err() {
            ensure!(Instant::now() < deadline, "chromedriver did not answer on {addr} within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": CHROMIUM,
            // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,2000", "--no-first-run", "--disable-extensions"]
        }}}});
        let session = webdriver(addr, "POST", "/session", Some(caps)).context("starting a browser session")?;
        driver.session = Some(session["sessionId"].as_str().context("no sessionId")?.to_string());
        Ok(driver)
    }

    fn call(&self, method: &str, what: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let s = self.session.as_deref().context("no session")?;
        webdriver(self.addr, method, &format!("/session/{s}{what}"), body)
    }

    fn script(&self, script: &str) -> anyhow::Result<Value> {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }
}

/// The loss table the browser shows, as (init, lr, mean, std, n) read from the rendered cells.
const READ_TABLE: &str = "return Array.from(document.querySelectorAll('#loss td')).map(function(td){\
    return [td.dataset.init, Number(td.dataset.lr), td.dataset.mean === '' ? null : Number(td.dataset.mean),\
    td.dataset.std === '' ? null : Number(td.dataset.std), Number(td.dataset.n), td.textContent];});";

#[test]
#[ignore = "needs chromium and chromium-driver: cargo test --workspace --test engine -- --ignored (.ci/run runs it)"]
fn the_sweep_page_in_a_real_browser_matches_results_and_updates_live() -> anyhow::Result<()> {
    let _serial = crate::docker::serial();
    let driver = Driver::start()?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let (grpc_url, http_addr) = rt.block_on(async {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (g, h) = (grpc.local_addr()?, http.local_addr()?);
        let config = lorasweep_coordinator::Config::new(dir.path());
        let listeners =
            lorasweep_coordinator::Listeners { http: Some(http), ..lorasweep_coordinator::Listeners::grpc(grpc) };
        tokio::spawn(lorasweep_coordinator::serve_on(listeners, config, stop.clone()));
        anyhow::Ok((format!("http://{g}"), h))
    })?;

    // A 3-init × 3-lr × 2-seed sweep; every job but one finishes with a loss that depends on
    // its cell, the last stays running.
    let (sweep_id, running) = rt.block_on(async {
        let mut sweeps = SweepsClient::connect(grpc_url.clone()).await?;
        let toml = "name = \"browser demo\"\n[grid]\ninits = [\"standard\", \"reversed\", \"ortho-eye\"]\n\
                    lrs = [1e-4, 1e-3, 1e-2]\nseeds = [42, 43]\n";
        let sweep_id = sweeps
            .submit_sweep(pb::SubmitSweepRequest { sweep_toml: toml.into(), source: "browser.toml".into() })
            .await?
            .into_inner()
            .sweep_id;
        let mut workers = WorkersClient::connect(grpc_url.clone()).await?;
        let worker_id = workers
            .register_worker(pb::RegisterWorkerRequest {
                name: "browser-worker".into(),
                device: "cpu".into(),
                trainer: "synthetic".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .worker_id;
        let mut n = 0u32;
        loop {
            let Some(lease) =
                workers.lease_job(pb::LeaseJobRequest { worker_id: worker_id.clone() }).await?.into_inner().lease
            else {
                bail!("the sweep ran out of jobs before one was left running");
            };
            n += 1;
            let points: Vec<pb::Point> = (1..=40)
                .map(|s| pb::Point {
                    series: pb::Series::Train as i32,
                    step: s,
                    loss: 3.0 - f64::from(n) * 0.01 - s as f64 * 0.01,
                })
                .chain((1..=4).map(|k| pb::Point {
                    series: pb::Series::Eval as i32,
                    step: k * 10,
                    loss: 2.9 - k as f64 * 0.05,
                }))
                .collect();
            workers
                .report_points(tokio_stream::iter(vec![pb::ReportPointsRequest {
                    job_id: lease.job_id.clone(),
                    attempt: lease.attempt,
                    points,
                }]))
                .await?;
            if n == 18 {
                return anyhow::Ok((sweep_id, (workers, worker_id, lease)));
            }
            workers
                .complete_job(pb::CompleteJobRequest {
                    worker_id: worker_id.clone(),
                    job_id: lease.job_id.clone(),
                    attempt: lease.attempt,
                    state: pb::JobState::Succeeded as i32,
                    final_eval_loss: Some(2.0 + f64::from(n) * 0.013),
                    tokens: 1000,
                    seconds: 1.0,
                    ..Default::default()
                })
                .await?;
        }
    })?;

    let page = format!("http://{http_addr}/sweeps/{sweep_id}");
    driver.call("POST", "/url", Some(json!({ "url": page })))?;
    let title = driver.call("GET", "/title", None)?;
    ensure!(title.as_str().is_some_and(|t| t.contains("browser demo")), "page title {title}");

    // The figures (separate SVGs) loaded.
    let images = driver
        .script("return Array.from(document.images).map(function(i){return i.complete && i.naturalWidth > 0;});")?;
    let images = images.as_array().context("no image list")?;
    ensure!(images.len() == 3 && images.iter().all(|i| i.as_bool() == Some(true)), "figures loaded: {images:?}");

    // The rendered tables equal `lorasweep results --format json`.
    let out = Command::new(env!("CARGO_BIN_EXE_lorasweep"))
        .args(["--coordinator", &grpc_url, "results", &sweep_id, "--format", "json"])
        .output()?;
    ensure!(out.status.success(), "lorasweep results failed: {}", String::from_utf8_lossy(&out.stderr));
    let results: Value = serde_json::from_slice(&out.stdout)?;
    let cells = results["cells"].as_array().context("results json has no cells")?;
    let shown = driver.script(READ_TABLE)?;
    let shown = shown.as_array().context("the table script returned no list")?;
    ensure!(shown.len() == cells.len() && cells.len() == 9, "{} cells shown, {} in results", shown.len(), cells.len());
    for cell in cells {
        let (init, lr) = (cell["init"].as_str().context("init")?, cell["lr"].as_f64().context("lr")?);
        let row = shown
            .iter()
            .find(|r| r[0].as_str() == Some(init) && (r[1].as_f64().unwrap_or(0.0) - lr).abs() < 1e-15)
            .with_context(|| format!("the page has no cell for {init} at {lr}"))?;
        for (k, key) in [(2, "mean"), (3, "std")] {
            let (a, b) = (row[k].as_f64(), cell[key].as_f64());
            ensure!(
                a.zip(b).is_some_and(|(a, b)| a == b) || (a.is_none() && b.is_none()),
                "{init} {lr} {key}: page {a:?}, results {b:?}"
            );
        }
        ensure!(row[4].as_u64() == cell["n"].as_u64(), "{init} {lr} n differs");
        if let Some(m) = cell["mean"].as_f64() {
            ensure!(row[5].as_str().is_some_and(|t| t.starts_with(&format!("{m:.4}"))), "text {:?} for {m}", row[5]);
        }
    }

    // A new point for the running job shows without a reload.
    let (mut workers, _worker_id, lease) = running;
    let before = driver.script(&format!(
        "window.__marker = 1; return document.querySelector('tr[data-job=\"{}\"]').textContent;",
        lease.job_id
    ))?;
    rt.block_on(workers.report_points(tokio_stream::iter(vec![pb::ReportPointsRequest {
        job_id: lease.job_id.clone(),
        attempt: lease.attempt,
        points: vec![pb::Point { series: pb::Series::Train as i32, step: 41, loss: 1.2345 }],
    }])))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = driver.script(&format!(
            "return [window.__marker === 1, document.body.getAttribute('data-updates'), \
             document.querySelector('tr[data-job=\"{}\"]').textContent];",
            lease.job_id
        ))?;
        if now[2].as_str().is_some_and(|t| t.contains("1.2345") && t.contains("41")) {
            ensure!(now[0].as_bool() == Some(true), "the page was reloaded (the marker is gone)");
            ensure!(now[1].as_str().is_some_and(|u| u != "0"), "no live update was counted");
            ensure!(before.as_str().is_some_and(|b| !b.contains("1.2345")), "the point was there before");
            break;
        }
        ensure!(Instant::now() < deadline, "the page did not show the new point within 15 s: {now}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A screenshot that is not blank.
    let shot = driver.call("GET", "/screenshot", None)?;
    let png = base64::engine::general_purpose::STANDARD.decode(shot.as_str().context("no screenshot")?)?;
    let decoder = png::Decoder::new(std::io::Cursor::new(&png));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let pixels = &buf[..info.buffer_size()];
    let step = info.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    for px in pixels.chunks(step) {
        colours.insert(px.to_vec());
    }
    ensure!(info.width >= 800 && info.height >= 600, "screenshot {}x{}", info.width, info.height);
    ensure!(colours.len() > 50, "the screenshot looks blank: {} distinct colours", colours.len());
    let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-sweep.png");
    std::fs::write(&keep, &png)?;
    eprintln!("screenshot: {} ({}x{}, {} colours)", keep.display(), info.width, info.height, colours.len());
    Ok(())
}
