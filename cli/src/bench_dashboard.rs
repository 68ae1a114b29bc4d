//! `lorasweep bench dashboard`: what the web dashboard costs, against an in-process coordinator
//! serving it (synchronous=FULL, a fresh data directory):
//! - the sweep page of the 140-job study grid (139 finished jobs with curves, one running),
//!   rendered from scratch: each request asks for a different view (lr × sort), so the render
//!   cache never answers;
//! - a job page whose train curve has `--curve-points` points (default 1M);
//! - `--followers` open pages (default 50) following the running sweep as the browser script
//!   does (the live stream, then the page's fragment on every message) while a worker reports
//!   points, against the same reporting with no page open: the difference in this process's CPU
//!   time is what the pages cost. Clients and server share the process, so the figure includes
//!   the followers' own HTTP work and is an upper bound on the coordinator's.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use lorasweep_proto::pb::{self, workers_client::WorkersClient};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::transport::Channel;

use crate::bench_coordinator::{InProcess, register};

/// Arguments of `lorasweep bench dashboard`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchDashboardArgs {
    /// Points of the long curve on the job page.
    #[arg(long, default_value_t = 1_000_000)]
    curve_points: u64,
    /// Open pages following the running sweep.
    #[arg(long, default_value_t = 50)]
    followers: usize,
    /// Seconds of each CPU window (with and without followers).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

/// `GET path`; returns the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP head")?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// This process's user + system CPU time.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut u = std::mem::zeroed::<libc_rusage::Rusage>();
        libc_rusage::getrusage(0, &mut u);
        u
    };
    let tv = |t: libc_rusage::Timeval| Duration::new(t.sec as u64, (t.usec * 1000) as u32);
    tv(usage.utime) + tv(usage.stime)
}

/// `getrusage(2)`, declared here: the one libc call this bench needs.
mod libc_rusage {
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(super) struct Timeval {
        pub(super) sec: i64,
        pub(super) usec: i64,
    }
    #[repr(C)]
    pub(super) struct Rusage {
        pub(super) utime: Timeval,
        pub(super) stime: Timeval,
        rest: [i64; 14],
    }
    #[allow(unsafe_code)]
    unsafe extern "C" {
        pub(super) fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    }
}

fn points(job_id: &str, attempt: u32, from: u64, n: u64, series: pb::Series) -> Vec<pb::ReportPointsRequest> {
    (from..from + n)
        .map(|step| pb::Point { series: series as i32, step, loss: 2.0 + 1.0 / step as f64 })
        .collect::<Vec<_>>()
        .chunks(8192)
        .map(|c| pb::ReportPointsRequest { job_id: job_id.into(), attempt, points: c.to_vec() })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the benchmark and prints its figures.
pub(crate) async fn run(args: BenchDashboardArgs) -> anyhow::Result<()> {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = http.local_addr()?;
    let (coordinator, _) = InProcess::start_serving(|_| {}, Some(http)).await?;
    let result = phases(&coordinator.url, addr, &args).await;
    coordinator.stop().await?;
    result
}

async fn phases(url: &str, addr: SocketAddr, args: &BenchDashboardArgs) -> anyhow::Result<()> {
    let mut sweeps = crate::client::connect(url).await?;
    let study = sweeps
        .submit_sweep(pb::SubmitSweepRequest { sweep_toml: String::new(), source: "study.toml".into() })
        .await?
        .into_inner()
        .sweep_id;
    let mut workers = WorkersClient::new(Channel::from_shared(url.to_string())?.connect().await?);
    let worker = register(&mut workers, "bench", "cpu").await?;
    let lease = |w: &mut WorkersClient<Channel>| {
        let (mut w, worker) = (w.clone(), worker.clone());
        async move {
            w.lease_job(pb::LeaseJobRequest { worker_id: worker }).await?.into_inner().lease.context("nothing to lease")
        }
    };
    // 139 finished jobs, each with 200 train and 10 eval points; one left running.
    for k in 0..139u32 {
        let l = lease(&mut workers).await?;
        let mut msgs = points(&l.job_id, l.attempt, 1, 200, pb::Series::Train);
        msgs.extend(points(&l.job_id, l.attempt, 1, 10, pb::Series::Eval));
        workers.report_points(tokio_stream::iter(msgs)).await?;
        workers
            .complete_job(pb::CompleteJobRequest {
                worker_id: worker.clone(),
                job_id: l.job_id.clone(),
                attempt: l.attempt,
                state: pb::JobState::Succeeded as i32,
                final_eval_loss: Some(2.0 + f64::from(k % 7) * 0.01),
                ..Default::default()
            })
            .await?;
    }
    let running = lease(&mut workers).await?;

    println!("dashboard of an in-process coordinator (synchronous=FULL) at http://{addr}/");
    let sorts = ["grid", "state", "init", "lr", "seed", "attempt", "step", "train", "eval", "worker"];
    let lrs = lorasweep_common::sweep::STUDY_LRS;
    let mut times = Vec::new();
    for i in 0..14 {
        let path = format!("/sweeps/{study}?lr={:?}&sort={}", lrs[i % lrs.len()], sorts[i % sorts.len()]);
        let t = Instant::now();
        let (code, body) = get(addr, &path).await?;
        times.push(t.elapsed());
        ensure!(code == 200 && body.contains("id=jobs"), "the sweep page answered {code}");
    }
    let t = median(times);
    let (_, fragment) = get(addr, &format!("/sweeps/{study}?fragment=1")).await?;
    let svg: usize = fragment.split("<svg").skip(1).map(|s| s.find("</svg>").unwrap_or(0)).sum();
    println!(
        "{:<52} {:>9} bytes ({svg} of them inline SVG)",
        "sweep page fragment (what a follower fetches)",
        fragment.len()
    );
    println!(
        "{:<52} {:>9.1} ms   target < 200 ms  {}",
        "sweep page, 140-job study grid (median of 14 renders)",
        t.as_secs_f64() * 1e3,
        if t < Duration::from_millis(200) { "OK" } else { "MISSED" }
    );

    // A job with a long curve.
    let sweep_toml = "name = \"long\"\n[grid]\ninits = [\"standard\"]\nlrs = [1e-3]\nseeds = [0]\n";
    sweeps.submit_sweep(pb::SubmitSweepRequest { sweep_toml: sweep_toml.into(), source: "long".into() }).await?;
    // The study's running job holds the only lease this worker needs; a second worker takes it.
    let mut other = workers.clone();
    let other_id = register(&mut other, "bench-2", "cpu").await?;
    let long = other
        .lease_job(pb::LeaseJobRequest { worker_id: other_id.clone() })
        .await?
        .into_inner()
        .lease
        .context("nothing to lease for the long curve")?;
    other
        .report_points(tokio_stream::iter(points(&long.job_id, long.attempt, 1, args.curve_points, pb::Series::Train)))
        .await?;
    let mut times = Vec::new();
    for sort in &sorts[..5] {
        let t = Instant::now();
        let (code, body) = get(addr, &format!("/jobs/{}?sort={sort}", long.job_id)).await?;
        times.push(t.elapsed());
        ensure!(code == 200 && body.contains(&format!("{} train", args.curve_points)), "the job page answered {code}");
    }
    let t = median(times);
    println!(
        "{:<52} {:>9.1} ms   target < 500 ms  {}",
        format!("job page, {}-point curve (median of 5 renders)", args.curve_points),
        t.as_secs_f64() * 1e3,
        if t < Duration::from_millis(500) { "OK" } else { "MISSED" }
    );

    // Followers: CPU with and without them while the running job reports 10 batches a second.
    let window = Duration::from_secs(args.seconds);
    let report = |mut w: WorkersClient<Channel>, lease: pb::Lease, worker: String, from: u64| async move {
        let started = Instant::now();
        let mut step = from;
        while started.elapsed() < window {
            w.heartbeat(pb::HeartbeatRequest {
                worker_id: worker.clone(),
                job_id: lease.job_id.clone(),
                attempt: lease.attempt,
                step,
                ..Default::default()
            })
            .await?;
            w.report_points(tokio_stream::iter(points(&lease.job_id, lease.attempt, step, 10, pb::Series::Train)))
                .await?;
            step += 10;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(step)
    };
    let c0 = cpu_time();
    let step = report(workers.clone(), running.clone(), worker.clone(), 1).await?;
    let alone = (cpu_time() - c0).as_secs_f64() / window.as_secs_f64();

    let stop = tokio_util::sync::CancellationToken::new();
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut followers = tokio::task::JoinSet::new();
    for _ in 0..args.followers {
        let (stop, fetched, page) = (stop.clone(), fetched.clone(), format!("/sweeps/{study}?fragment=1"));
        followers.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (read, mut write) = stream.into_split();
            write.write_all(b"GET /live HTTP/1.1\r\nHost: bench\r\n\r\n").await?;
            let mut lines = BufReader::new(read).lines();
            loop {
                tokio::select! {
                    line = lines.next_line() => match line? {
                        Some(l) if l.starts_with("data:") => {
                            let (code, _) = get(addr, &page).await?;
                            ensure!(code == 200, "a follower's fetch answered {code}");
                            fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => anyhow::bail!("the live stream ended"),
                    },
                    () = stop.cancelled() => return anyhow::Ok(()),
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c0 = cpu_time();
    report(workers.clone(), running.clone(), worker.clone(), step).await?;
    let with = (cpu_time() - c0).as_secs_f64() / window.as_secs_f64();
    stop.cancel();
    while let Some(done) = followers.join_next().await {
        done??;
    }
    let cost = (with - alone).max(0.0);
    println!(
        "{:<52} {:>9.1} %    ({:.1} % of a core with them, {:.1} % without; {} fragment fetches)   target < 5 %  {}",
        format!("{} open pages following the running sweep", args.followers),
        cost * 100.0,
        with * 100.0,
        alone * 100.0,
        fetched.load(std::sync::atomic::Ordering::Relaxed),
        if cost < 0.05 { "OK" } else { "MISSED" }
    );
    Ok(())
}
