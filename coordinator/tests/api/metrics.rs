//! The Prometheus endpoint: counts that follow what the coordinator did.

use std::time::Duration;

use lorasweep_coordinator::ManualClock;
use lorasweep_proto::pb;
use sha2::Digest;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{helpers::*, security};

/// `GET path` over HTTP/1.1; returns the status line and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP head in {raw:?}"))?;
    Ok((head.lines().next().unwrap_or_default().to_string(), body.to_string()))
}

/// The value of the sample line starting with `series ` in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_follow_leases_points_workers_expiry_and_refusals() -> anyhow::Result<()> {
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics_addr = metrics.local_addr()?;
    let mut c = spawn_configured(
        TempDir::new()?,
        ManualClock::new(1_700_000_000_000),
        3,
        Duration::from_millis(20),
        |_| {},
        Some(metrics),
    )
    .await?;
    c.submit(&grid(1, 3)).await?;
    let worker = c.register("w").await?;
    let first = c.lease(&worker).await?;
    c.report(&first.job_id, first.attempt, &train_points(5), 2).await?;
    c.complete(&worker, &first, 1.0).await?;
    let second = c.lease(&worker).await?;
    c.report(&second.job_id, second.attempt, &train_points(3), 3).await?;
    let bytes = vec![7u8; 1000];
    let sha: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let meta = pb::UploadArtifactMeta {
        worker_id: worker.clone(),
        job_id: second.job_id.clone(),
        attempt: second.attempt,
        kind: pb::ArtifactKind::Checkpoint as i32,
        step: 2,
        size: 1000,
        sha256: sha,
    };
    let upload = vec![
        pb::UploadArtifactRequest { part: Some(pb::upload_artifact_request::Part::Meta(meta)) },
        pb::UploadArtifactRequest { part: Some(pb::upload_artifact_request::Part::Chunk(bytes)) },
    ];
    c.artifacts.upload_artifact(tokio_stream::iter(upload)).await?;

    let (status, text) = get(metrics_addr, "/metrics").await?;
    assert!(status.contains("200"), "{status}");
    assert_eq!(sample(&text, "lorasweep_jobs{state=\"queued\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "lorasweep_jobs{state=\"running\"}"), Some(1.0));
    assert_eq!(sample(&text, "lorasweep_jobs{state=\"succeeded\"}"), Some(1.0));
    assert_eq!(sample(&text, "lorasweep_jobs{state=\"failed\"}"), Some(0.0));
    assert_eq!(sample(&text, "lorasweep_leases_granted_total"), Some(2.0));
    assert_eq!(sample(&text, "lorasweep_lease_latency_seconds_count"), Some(2.0));
    assert_eq!(sample(&text, "lorasweep_lease_latency_seconds_bucket{le=\"+Inf\"}"), Some(2.0));
    assert_eq!(sample(&text, "lorasweep_points_ingested_total"), Some(8.0));
    assert_eq!(sample(&text, "lorasweep_workers_alive"), Some(1.0));
    assert_eq!(sample(&text, "lorasweep_leases_expired_total"), Some(0.0));
    assert_eq!(sample(&text, "lorasweep_artifact_bytes"), Some(1000.0));
    assert_eq!(sample(&text, "lorasweep_artifacts"), Some(1.0));
    assert!(text.contains("# TYPE lorasweep_lease_latency_seconds histogram"), "{text}");

    // The second lease expires: the reaper requeues it and the counter shows it.
    c.clock.advance(TTL + Duration::from_secs(1));
    await_condition("the reaper counts the expired lease", || async {
        let (_, text) = get(metrics_addr, "/metrics").await?;
        Ok(sample(&text, "lorasweep_leases_expired_total") == Some(1.0))
    })
    .await?;
    let (_, text) = get(metrics_addr, "/metrics").await?;
    assert_eq!(sample(&text, "lorasweep_jobs{state=\"queued\"}"), Some(2.0));
    assert_eq!(sample(&text, "lorasweep_workers_alive"), Some(0.0), "not seen within the TTL");

    let (status, _) = get(metrics_addr, "/other").await?;
    assert!(status.contains("404"), "{status}");
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn auth_refusals_are_counted() -> anyhow::Result<()> {
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics_addr = metrics.local_addr()?;
    let c = spawn_configured(
        TempDir::new()?,
        ManualClock::new(1_700_000_000_000),
        3,
        Duration::from_millis(20),
        |config| config.tokens = security::tokens(),
        Some(metrics),
    )
    .await?;
    let mut s = c.sweeps.clone();
    let submit = pb::SubmitSweepRequest { sweep_toml: grid(1, 1), source: "t".into() };
    assert!(s.submit_sweep(security::authed(submit.clone(), None)).await.is_err());
    assert!(s.submit_sweep(security::authed(submit, Some(security::WORKER))).await.is_err());
    let (_, text) = get(metrics_addr, "/metrics").await?;
    assert_eq!(sample(&text, "lorasweep_auth_refused_total{code=\"unauthenticated\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "lorasweep_auth_refused_total{code=\"permission_denied\"}"), Some(1.0));
    c.stop().await?;
    Ok(())
}
