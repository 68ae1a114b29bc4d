//! The `Artifacts` service: chunked uploads verified by size and SHA-256, fenced by the lease;
//! listing and chunked downloads; retention of the newest checkpoints; job warnings as events.

use std::time::Duration;

use lorasweep_proto::pb;
use sha2::{Digest, Sha256};

use crate::helpers::{TTL, TestCoordinator, await_condition, grid, spawn_coordinator, state};

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic bytes of length `n` (not all equal, so a shifted chunk changes the digest).
fn payload(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ salt).collect()
}

struct Upload<'a> {
    worker: &'a str,
    lease: &'a pb::Lease,
    kind: pb::ArtifactKind,
    step: u64,
}

/// Uploads `bytes` in `chunk`-byte messages, declaring `size` and `sha`.
async fn upload_as(
    c: &mut TestCoordinator,
    u: &Upload<'_>,
    bytes: &[u8],
    chunk: usize,
    size: u64,
    sha: String,
) -> Result<pb::Artifact, tonic::Status> {
    let meta = pb::UploadArtifactMeta {
        worker_id: u.worker.into(),
        job_id: u.lease.job_id.clone(),
        attempt: u.lease.attempt,
        kind: u.kind as i32,
        step: u.step,
        size,
        sha256: sha,
    };
    let mut msgs = vec![pb::UploadArtifactRequest { part: Some(pb::upload_artifact_request::Part::Meta(meta)) }];
    msgs.extend(
        bytes
            .chunks(chunk)
            .map(|c| pb::UploadArtifactRequest { part: Some(pb::upload_artifact_request::Part::Chunk(c.to_vec())) }),
    );
    let resp = c.artifacts.upload_artifact(tokio_stream::iter(msgs)).await?.into_inner();
    Ok(resp.artifact.expect("the stored artifact"))
}

async fn upload(c: &mut TestCoordinator, u: &Upload<'_>, bytes: &[u8]) -> Result<pb::Artifact, tonic::Status> {
    upload_as(c, u, bytes, 1 << 20, bytes.len() as u64, hex(bytes)).await
}

async fn list(c: &mut TestCoordinator, job_id: &str, kind: pb::ArtifactKind) -> anyhow::Result<Vec<(u64, i32, u32)>> {
    let resp =
        c.artifacts.list_artifacts(pb::ListArtifactsRequest { job_id: job_id.into(), kind: kind as i32 }).await?;
    Ok(resp.into_inner().artifacts.iter().map(|a| (a.step, a.kind, a.attempt)).collect())
}

/// Downloads an artifact: its meta, the bytes, and the number of chunk messages.
async fn download(
    c: &mut TestCoordinator,
    job_id: &str,
    kind: pb::ArtifactKind,
    step: u64,
) -> Result<(pb::Artifact, Vec<u8>, usize), tonic::Status> {
    let req = pb::DownloadArtifactRequest { job_id: job_id.into(), kind: kind as i32, step };
    let mut stream = c.artifacts.download_artifact(req).await?.into_inner();
    let (mut meta, mut bytes, mut chunks) = (None, Vec::new(), 0);
    while let Some(msg) = stream.message().await? {
        match msg.part {
            Some(pb::download_artifact_response::Part::Meta(m)) => meta = Some(m),
            Some(pb::download_artifact_response::Part::Chunk(b)) => {
                assert!(b.len() <= 1 << 20);
                chunks += 1;
                bytes.extend(b);
            }
            None => {}
        }
    }
    Ok((meta.expect("meta first"), bytes, chunks))
}

/// Every file under the coordinator's artifact directory.
fn files(c: &TestCoordinator) -> Vec<String> {
    let mut out = Vec::new();
    let root = c.dir.path().join("artifacts");
    for job in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(job.path()).into_iter().flatten().flatten() {
            out.push(f.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn upload_list_and_download_round_trip_in_chunks() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    let ck = payload(2_500_000, 1);
    let u = Upload { worker: &worker, lease: &lease, kind: pb::ArtifactKind::Checkpoint, step: 4 };
    let stored = upload(&mut c, &u, &ck).await?;
    assert_eq!((stored.step, stored.size, stored.sha256.clone(), stored.attempt), (4, ck.len() as u64, hex(&ck), 1));
    let adapter = payload(1000, 2);
    upload(&mut c, &Upload { kind: pb::ArtifactKind::Adapter, step: 4, ..u }, &adapter).await?;

    use pb::ArtifactKind::{Adapter, Checkpoint, Unspecified};
    assert_eq!(
        list(&mut c, &lease.job_id, Unspecified).await?,
        vec![(4, Adapter as i32, 1), (4, Checkpoint as i32, 1)]
    );
    assert_eq!(list(&mut c, &lease.job_id, Checkpoint).await?, vec![(4, Checkpoint as i32, 1)]);
    let (meta, bytes, chunks) = download(&mut c, &lease.job_id, Checkpoint, 4).await?;
    assert_eq!(bytes, ck);
    assert_eq!(chunks, 3);
    assert_eq!(meta.sha256, hex(&ck));
    assert_eq!(download(&mut c, &lease.job_id, Adapter, 4).await?.1, adapter);
    // Files live under <data-dir>/artifacts/<job>/, complete (no .part left).
    let names = files(&c);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".bin")), "{names:?}");

    let missing = download(&mut c, &lease.job_id, Checkpoint, 5).await.expect_err("no step 5");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let unknown = list(&mut c, "no-such-job", Unspecified).await.expect_err("unknown job");
    assert!(unknown.to_string().contains("no job"), "{unknown}");
    Ok(())
}

#[tokio::test]
async fn corrupt_or_malformed_uploads_store_nothing() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    let u = Upload { worker: &worker, lease: &lease, kind: pb::ArtifactKind::Checkpoint, step: 2 };
    let bytes = payload(300_000, 3);
    let mut flipped = bytes.clone();
    flipped[123_456] ^= 1;

    // A flipped bit, a short upload, a long upload, an oversized chunk, a bad digest string.
    let cases: Vec<(Vec<u8>, usize, u64, String, &str)> = vec![
        (flipped, 1 << 16, bytes.len() as u64, hex(&bytes), "does not match"),
        (bytes[..1000].to_vec(), 1 << 16, bytes.len() as u64, hex(&bytes), "does not match"),
        (bytes.clone(), 1 << 16, 1000, hex(&bytes), "more bytes"),
        (payload(2 << 20, 4), 2 << 20, 2 << 20, hex(&payload(2 << 20, 4)), "chunk"),
        (bytes.clone(), 1 << 16, bytes.len() as u64, "abc".into(), "64 hex"),
    ];
    for (data, chunk, size, sha, want) in cases {
        let err = upload_as(&mut c, &u, &data, chunk, size, sha).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains(want), "{want}: {err}");
    }
    let err = upload(&mut c, &Upload { kind: pb::ArtifactKind::Unspecified, ..u }, &bytes).await.expect_err("kind");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A stream without meta first.
    let chunk_only = vec![pb::UploadArtifactRequest { part: Some(pb::upload_artifact_request::Part::Chunk(vec![1])) }];
    let err = c.artifacts.upload_artifact(tokio_stream::iter(chunk_only)).await.expect_err("no meta");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    assert!(list(&mut c, &lease.job_id, pb::ArtifactKind::Unspecified).await?.is_empty());
    assert_eq!(files(&c), Vec::<String>::new());
    // The same bytes, declared correctly, are accepted.
    upload(&mut c, &u, &bytes).await?;
    assert_eq!(files(&c).len(), 1);
    c.assert_integrity().await?;
    Ok(())
}

#[tokio::test]
async fn stale_attempts_cannot_upload_and_the_new_attempt_sees_old_checkpoints() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(1, 1)).await?;
    let old_worker = c.register("dies").await?;
    let old = c.lease(&old_worker).await?;
    let first = payload(5000, 5);
    upload(&mut c, &Upload { worker: &old_worker, lease: &old, kind: pb::ArtifactKind::Checkpoint, step: 3 }, &first)
        .await?;

    c.clock.advance(TTL + Duration::from_secs(1));
    let job_id = old.job_id.clone();
    await_condition("the reaper requeues the job", || {
        let (mut s, sweep_id, job_id) = (c.sweeps.clone(), sweep_id.clone(), job_id.clone());
        async move {
            let jobs =
                s.list_jobs(pb::ListJobsRequest { sweep_id, state: 0, ..Default::default() }).await?.into_inner().jobs;
            Ok(jobs.iter().any(|j| j.id == job_id && state(j) == pb::JobState::Queued))
        }
    })
    .await?;
    let new_worker = c.register("lives").await?;
    let new = c.lease(&new_worker).await?;
    assert_eq!(new.attempt, 2);

    // The dead attempt's late upload is fenced off and leaves no file.
    let late = payload(5000, 6);
    let u_old = Upload { worker: &old_worker, lease: &old, kind: pb::ArtifactKind::Checkpoint, step: 6 };
    let err = upload(&mut c, &u_old, &late).await.expect_err("stale attempt");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    // Another worker cannot upload for the new attempt either.
    let err = upload(&mut c, &Upload { worker: &old_worker, ..u_old }, &late).await.expect_err("other worker");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert_eq!(files(&c).len(), 1);

    // The new attempt finds the old checkpoint and continues uploading.
    let ck = list(&mut c, &new.job_id, pb::ArtifactKind::Checkpoint).await?;
    assert_eq!(ck, vec![(3, pb::ArtifactKind::Checkpoint as i32, 1)]);
    assert_eq!(download(&mut c, &new.job_id, pb::ArtifactKind::Checkpoint, 3).await?.1, first);
    let u_new = Upload { worker: &new_worker, lease: &new, kind: pb::ArtifactKind::Checkpoint, step: 6 };
    upload(&mut c, &u_new, &late).await?;
    Ok(())
}

#[tokio::test]
async fn only_the_newest_checkpoints_are_kept_and_a_step_can_be_replaced() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    for step in 1..=5u64 {
        let u = Upload { worker: &worker, lease: &lease, kind: pb::ArtifactKind::Checkpoint, step };
        upload(&mut c, &u, &payload(100, step as u8)).await?;
    }
    let steps: Vec<u64> =
        list(&mut c, &lease.job_id, pb::ArtifactKind::Checkpoint).await?.iter().map(|a| a.0).collect();
    assert_eq!(steps, vec![5, 4, 3]);
    assert_eq!(files(&c).len(), 3);
    // Step 5 again (a resumed attempt re-reaching it): replaced, old file gone.
    let again = payload(200, 99);
    let u = Upload { worker: &worker, lease: &lease, kind: pb::ArtifactKind::Checkpoint, step: 5 };
    upload(&mut c, &u, &again).await?;
    assert_eq!(files(&c).len(), 3);
    assert_eq!(download(&mut c, &lease.job_id, pb::ArtifactKind::Checkpoint, 5).await?.1, again);
    Ok(())
}

#[tokio::test]
async fn job_warnings_become_events_and_are_fenced() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    let warn = |attempt| pb::ReportJobWarningRequest {
        worker_id: worker.clone(),
        job_id: lease.job_id.clone(),
        attempt,
        message: "checkpoint at step 4 not usable (sha256 mismatch); resuming from step 2".into(),
    };
    c.artifacts.report_job_warning(warn(lease.attempt)).await?;
    let err = c.artifacts.report_job_warning(warn(lease.attempt + 1)).await.expect_err("stale");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let events = c.events(&lease.job_id).await?;
    let warnings: Vec<&(String, String)> = events.iter().filter(|(k, _)| k == "warning").collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert!(warnings[0].1.contains("sha256 mismatch") && warnings[0].1.contains("attempt 1"), "{:?}", warnings[0]);
    Ok(())
}
