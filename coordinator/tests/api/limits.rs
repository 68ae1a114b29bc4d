//! Size limits: each over-limit call is refused with INVALID_ARGUMENT or RESOURCE_EXHAUSTED
//! naming the limit, and stores nothing.

use std::time::Duration;

use lorasweep_coordinator::{ManualClock, limits};
use lorasweep_proto::pb;
use tempfile::TempDir;
use tonic::Code;

use crate::helpers::*;

fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needles: &[&str]) {
    let status = result.expect_err("over-limit call was accepted");
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(status.message().contains(needle), "message does not mention {needle:?}: {}", status.message());
    }
}

fn submit(toml: String, source: &str) -> pb::SubmitSweepRequest {
    pb::SubmitSweepRequest { sweep_toml: toml, source: source.into() }
}

#[tokio::test]
async fn over_limit_calls_name_the_limit_and_store_nothing() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    let before = c.counts().await?;
    let (s, w) = (&mut c.sweeps.clone(), &mut c.workers.clone());

    // A message over the transport limit: the codec refuses it before any handler runs.
    let huge = format!("name = \"x\"\n# {}\n", "y".repeat(limits::MAX_MESSAGE_BYTES));
    refused(
        s.submit_sweep(submit(huge, "huge.toml")).await,
        Code::ResourceExhausted,
        &[&limits::MAX_MESSAGE_BYTES.to_string(), "message"],
    );
    // Under the transport limit but over the sweep-file limit.
    let big = format!("name = \"x\"\n# {}\n", "y".repeat(1 << 20));
    refused(s.submit_sweep(submit(big, "big.toml")).await, Code::InvalidArgument, &["big.toml", "1048576"]);
    // A grid of 50 × 50 × 5 = 12500 jobs.
    let lrs: Vec<String> = (1..=50).map(|i| format!("{i}e-5")).collect();
    let seeds: Vec<String> = (0..50).map(|s| s.to_string()).collect();
    let wide = format!("[grid]\nlrs = [{}]\nseeds = [{}]\n", lrs.join(","), seeds.join(","));
    refused(s.submit_sweep(submit(wide, "wide.toml")).await, Code::InvalidArgument, &["grid", "12500", "10000"]);
    let long_name = format!("name = \"{}\"\n", "n".repeat(300));
    refused(s.submit_sweep(submit(long_name, "n.toml")).await, Code::InvalidArgument, &["`name`", "300", "256"]);
    let long_path = format!("[model]\npath = \"/{}\"\n", "p".repeat(5000));
    refused(s.submit_sweep(submit(long_path, "p.toml")).await, Code::InvalidArgument, &["model.path", "4096"]);
    let long_data = format!("[data]\npath = \"/{}\"\n", "d".repeat(5000));
    refused(s.submit_sweep(submit(long_data, "d.toml")).await, Code::InvalidArgument, &["data.path", "4096"]);
    refused(
        s.submit_sweep(submit(grid(1, 1), &"s".repeat(5000))).await,
        Code::InvalidArgument,
        &["source", &limits::MAX_SOURCE_LEN.to_string()],
    );
    refused(
        w.register_worker(pb::RegisterWorkerRequest { name: "w".repeat(300), ..Default::default() }).await,
        Code::InvalidArgument,
        &["name", "256"],
    );
    refused(
        w.register_worker(pb::RegisterWorkerRequest {
            name: "w".into(),
            device: "d".repeat(257),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["device", "256"],
    );
    refused(
        w.fail_job(pb::FailJobRequest {
            worker_id: worker.clone(),
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            error: "e".repeat(limits::MAX_ERROR_LEN + 1),
            retryable: true,
            released: false,
        })
        .await,
        Code::InvalidArgument,
        &["error", &limits::MAX_ERROR_LEN.to_string()],
    );
    refused(
        s.get_curve(pb::GetCurveRequest { job_id: "j".repeat(129) }).await,
        Code::InvalidArgument,
        &["job_id", "128"],
    );
    // A point message over the transport limit: ~16 bytes a point.
    let many = train_points(400_000);
    refused(
        w.report_points(tokio_stream::iter(vec![pb::ReportPointsRequest {
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            points: many,
        }]))
        .await,
        Code::ResourceExhausted,
        &[&limits::MAX_MESSAGE_BYTES.to_string()],
    );
    assert_eq!(c.counts().await?, before, "no over-limit call changed the database");
    c.assert_integrity().await?;
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_point_stream_over_its_limit_stores_nothing_of_the_crossing_message() -> anyhow::Result<()> {
    let mut c = spawn_configured(
        TempDir::new()?,
        ManualClock::new(1_700_000_000_000),
        3,
        Duration::from_millis(20),
        |config| config.max_points_per_stream = 10,
        None,
    )
    .await?;
    let sweep = c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    // 6 + 6 points: the second message would make 12 > 10.
    let status = c.report(&lease.job_id, lease.attempt, &train_points(12), 6).await.expect_err("12 > 10 accepted");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("at most 10 points per stream"), "{status:?}");
    let curve = read_curve(&mut c.sweeps, &lease.job_id.clone()).await?;
    assert_eq!(curve.train_steps, (1..=6).collect::<Vec<u64>>(), "only the first message was stored");
    // Exactly at the limit is fine, and the job is untouched by the refusal.
    assert_eq!(c.report(&lease.job_id, lease.attempt, &train_points(10), 5).await?, 10);
    assert_eq!(state(&c.job(&sweep, &lease.job_id).await?), pb::JobState::Running);
    c.stop().await?;
    Ok(())
}
