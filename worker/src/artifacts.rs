//! Moving a job's checkpoints and final adapter between the trainer thread and the
//! coordinator's `Artifacts` service.
//!
//! - Uploads: the trainer thread hands serialised artifacts to [`run_uploader`] through a
//!   bounded channel ([`UPLOAD_CHANNEL`]); the trainer blocks only when uploads fall behind by
//!   more than that. Each upload is chunked ([`CHUNK_BYTES`]) and carries its size and SHA-256.
//! - Resume: [`TrainerArtifacts::next_candidate`] (called on the trainer thread) lists the job's
//!   checkpoints once, then downloads them newest first, checking the SHA-256; a corrupt or
//!   missing one is reported as a job warning and the next older one is tried.
//! - [`download_verified`]: the one download path, checked against the stored size and SHA-256;
//!   the daemon's resume and `lorasweep adapter` both use it.
//! - [`ArtifactTransfer`]: the daemon's upload and download paths outside the daemon, for
//!   `lorasweep bench checkpoint` and tests.
//!
//! Names: [`AttemptArtifacts`] is one attempt's calls to the store (async), [`TrainerArtifacts`]
//! is the trainer thread's blocking handle on them, [`ArtifactTransfer`] is the public wrapper.

use std::{sync::Arc, time::Duration};

use lorasweep_proto::pb;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Status;

use crate::{
    WorkerError,
    connect::{Authed, Remote},
    control::{JobControl, StopReason},
    rpc::{self, Patience},
};

/// The generated `Artifacts` client on the daemon's authenticated channel.
pub(crate) type ArtifactsGrpc = pb::artifacts_client::ArtifactsClient<Authed>;

/// Bytes per upload message (the coordinator accepts at most 1 MiB).
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// Artifacts waiting for upload before the trainer blocks: one being sent, one queued.
pub(crate) const UPLOAD_CHANNEL: usize = 1;

/// How long one upload is retried while the coordinator is unreachable before it is given up
/// (a later checkpoint supersedes it anyway).
const UPLOAD_PATIENCE: Duration = Duration::from_secs(60);

/// How long a warning is tried before it is only logged.
const WARNING_PATIENCE: Duration = Duration::from_secs(10);

/// One artifact to upload.
#[derive(Debug)]
pub(crate) struct PendingUpload {
    pub(crate) kind: pb::ArtifactKind,
    pub(crate) step: u64,
    pub(crate) bytes: Vec<u8>,
    /// Points the trainer had sent when it handed this over; uploaded only after the reporter
    /// is done with that many ([`crate::control::PointLedger`]).
    pub(crate) after_points: u64,
}

/// One job attempt's calls to the artifact store.
#[derive(Debug, Clone)]
pub(crate) struct AttemptArtifacts {
    pub(crate) client: ArtifactsGrpc,
    pub(crate) worker_id: String,
    pub(crate) job_id: String,
    pub(crate) attempt: u32,
    pub(crate) max_backoff: Duration,
}

/// Lowercase hex SHA-256, as the artifact store records it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl AttemptArtifacts {
    /// Uploads one artifact (one attempt of the call).
    async fn upload_once(&self, u: &PendingUpload) -> Result<(), Status> {
        let meta = pb::UploadArtifactMeta {
            worker_id: self.worker_id.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            kind: u.kind as i32,
            step: u.step,
            size: u.bytes.len() as u64,
            sha256: sha256_hex(&u.bytes),
        };
        let first = pb::UploadArtifactRequest { part: Some(pb::upload_artifact_request::Part::Meta(meta)) };
        let chunks = u
            .bytes
            .chunks(CHUNK_BYTES)
            .map(|c| pb::UploadArtifactRequest { part: Some(pb::upload_artifact_request::Part::Chunk(c.to_vec())) })
            .collect::<Vec<_>>();
        let stream = tokio_stream::iter(std::iter::once(first).chain(chunks));
        self.client.clone().upload_artifact(stream).await.map(|_| ())
    }

    /// Uploads one artifact, retrying while the coordinator is unreachable.
    pub(crate) async fn upload(&self, u: &PendingUpload) -> Result<(), Status> {
        rpc::retry("UploadArtifact", Patience::within(self.max_backoff, UPLOAD_PATIENCE), || self.upload_once(u)).await
    }

    /// The job's checkpoint steps, newest first.
    pub(crate) async fn checkpoint_steps(&self) -> Result<Vec<u64>, Status> {
        let req = pb::ListArtifactsRequest { job_id: self.job_id.clone(), kind: pb::ArtifactKind::Checkpoint as i32 };
        let resp = rpc::retry("ListArtifacts", Patience::within(self.max_backoff, UPLOAD_PATIENCE), || {
            let mut client = self.client.clone();
            let req = req.clone();
            async move { client.list_artifacts(req).await }
        })
        .await?;
        Ok(resp.into_inner().artifacts.iter().map(|a| a.step).collect())
    }

    /// Downloads one of the job's artifacts through [`download_verified`].
    ///
    /// # Errors
    /// As [`download_verified`].
    pub(crate) async fn download(&self, kind: pb::ArtifactKind, step: u64) -> Result<Vec<u8>, DownloadError> {
        download_verified(&mut self.client.clone(), &self.job_id, kind, step).await
    }

    /// Records a warning in the job's events (best effort; always logged).
    pub(crate) async fn warn(&self, message: String) {
        tracing::warn!(job_id = %self.job_id, attempt = self.attempt, "{message}");
        let req = pb::ReportJobWarningRequest {
            worker_id: self.worker_id.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            message,
        };
        let sent = rpc::retry("ReportJobWarning", Patience::within(self.max_backoff, WARNING_PATIENCE), || {
            let mut client = self.client.clone();
            let req = req.clone();
            async move { client.report_job_warning(req).await }
        })
        .await;
        if let Err(status) = sent {
            tracing::warn!(code = ?status.code(), error = %status.message(), "warning not recorded");
        }
    }

    /// `ReportResumed`, retried like a warning; a failure only costs the event.
    pub(crate) async fn resumed(&self, step: u64) {
        tracing::info!(job_id = %self.job_id, attempt = self.attempt, step, "resumed from checkpoint");
        let req = pb::ReportResumedRequest {
            worker_id: self.worker_id.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            step,
        };
        let sent = rpc::retry("ReportResumed", Patience::within(self.max_backoff, WARNING_PATIENCE), || {
            let mut client = self.client.clone();
            let req = req.clone();
            async move { client.report_resumed(req).await }
        })
        .await;
        if let Err(status) = sent {
            tracing::warn!(code = ?status.code(), error = %status.message(), "resume not recorded");
        }
    }
}

/// Uploads what arrives on `rx` until the channel closes (the trainer finished). Returns false if
/// an upload was given up. A refusal saying the lease is gone stops the attempt.
pub(crate) async fn run_uploader(
    target: AttemptArtifacts,
    mut rx: mpsc::Receiver<PendingUpload>,
    control: Arc<JobControl>,
) -> bool {
    let mut all = true;
    while let Some(u) = rx.recv().await {
        if control.is_dropped() {
            continue; // drain, so the trainer never blocks on a dropped job
        }
        tokio::select! {
            () = control.dropped() => continue,
            () = control.points.wait_done(u.after_points) => {}
        }
        let t0 = std::time::Instant::now();
        match target.upload(&u).await {
            Ok(()) => tracing::info!(
                job_id = %target.job_id, kind = ?u.kind, step = u.step, bytes = u.bytes.len(),
                seconds = t0.elapsed().as_secs_f64(), "artifact uploaded"
            ),
            Err(status) if rpc::is_lease_lost(&status) => {
                tracing::warn!(job_id = %target.job_id, error = %status.message(), "upload refused: lease lost");
                control.stop(StopReason::LeaseLost);
            }
            Err(status) => {
                all = false;
                tracing::warn!(job_id = %target.job_id, kind = ?u.kind, step = u.step, code = ?status.code(),
                    error = %status.message(), "upload given up");
            }
        }
    }
    all
}

/// The trainer thread's side: uploads through the channel, resume candidates and warnings by
/// blocking on the runtime (the trainer thread is a `spawn_blocking` thread, never async).
#[derive(Debug)]
pub(crate) struct TrainerArtifacts {
    pub(crate) target: AttemptArtifacts,
    pub(crate) uploads: mpsc::Sender<PendingUpload>,
    pub(crate) runtime: tokio::runtime::Handle,
    /// The attempt's state: uploads wait on its point ledger.
    pub(crate) control: Arc<JobControl>,
    /// Checkpoint steps not yet tried, newest first; `None` until listed.
    pub(crate) pending: Option<Vec<u64>>,
}

impl TrainerArtifacts {
    /// Queues an upload; blocks while the uploader is behind.
    pub(crate) fn send(&self, kind: pb::ArtifactKind, step: u64, bytes: Vec<u8>) {
        // An error means the uploader is gone because the job was dropped: nothing to do.
        let after_points = self.control.points.sent();
        let _ = self.uploads.blocking_send(PendingUpload { kind, step, bytes, after_points });
    }

    /// The next checkpoint to try, newest first, skipping (with a job warning) any that cannot
    /// be downloaded intact.
    pub(crate) fn next_candidate(&mut self) -> Option<(u64, Vec<u8>)> {
        let target = self.target.clone();
        if self.pending.is_none() {
            let listed = self.runtime.block_on(target.checkpoint_steps());
            self.pending = Some(match listed {
                Ok(steps) => steps,
                Err(status) => {
                    self.warning(format!("could not list checkpoints ({}); starting at step 0", status.message()));
                    Vec::new()
                }
            });
        }
        while let Some(step) = self.pending.as_mut().and_then(|p| (!p.is_empty()).then(|| p.remove(0))) {
            match self.runtime.block_on(target.download(pb::ArtifactKind::Checkpoint, step)) {
                Ok(bytes) => return Some((step, bytes)),
                Err(e) => self.warning(format!("checkpoint at step {step} not usable ({e}); trying an older one")),
            }
        }
        None
    }

    /// Records a warning in the job's events.
    pub(crate) fn warning(&self, message: String) {
        self.runtime.block_on(self.target.warn(message));
    }

    /// Records in the job's attempt and events that it resumed from the checkpoint at `step`.
    pub(crate) fn resumed(&self, step: u64) {
        self.runtime.block_on(self.target.resumed(step));
    }
}

/// Why an [`ArtifactTransfer`] transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The coordinator refused the call or could not be reached (after the daemon's retries).
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] Status),
    /// A download failed or its bytes do not match the stored size and SHA-256.
    #[error(transparent)]
    Download(#[from] DownloadError),
}

/// Why [`download_verified`] returned no bytes.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The call failed or the stream broke off.
    #[error("download failed: {}: {}", .0.code(), .0.message())]
    Rpc(#[from] Status),
    /// The stream carried no meta message (a coordinator bug).
    #[error("download failed: the coordinator sent no size and digest")]
    NoMeta,
    /// The bytes are not the ones stored.
    #[error(
        "sha256 mismatch: got {got_bytes} bytes hashing to {got_sha256}, stored {stored_bytes} bytes hashing to {stored_sha256}"
    )]
    Corrupt {
        /// Bytes received.
        got_bytes: u64,
        /// Their SHA-256.
        got_sha256: String,
        /// Bytes the store recorded.
        stored_bytes: u64,
        /// The SHA-256 the store recorded.
        stored_sha256: String,
    },
}

/// Downloads the artifact `(job_id, kind, step)` and checks its size and SHA-256 against what
/// the store recorded at upload. The one download path: the daemon resumes through it and
/// `lorasweep adapter` fetches adapters through it.
///
/// # Errors
/// [`DownloadError`] naming the failed call or the mismatch.
pub async fn download_verified(
    client: &mut pb::artifacts_client::ArtifactsClient<Authed>,
    job_id: &str,
    kind: pb::ArtifactKind,
    step: u64,
) -> Result<Vec<u8>, DownloadError> {
    let req = pb::DownloadArtifactRequest { job_id: job_id.to_string(), kind: kind as i32, step };
    let mut stream = client.download_artifact(req).await?.into_inner();
    let (mut meta, mut bytes) = (None, Vec::new());
    while let Some(msg) = stream.message().await? {
        match msg.part {
            Some(pb::download_artifact_response::Part::Meta(m)) => {
                bytes.reserve(m.size as usize);
                meta = Some(m);
            }
            Some(pb::download_artifact_response::Part::Chunk(c)) => bytes.extend_from_slice(&c),
            None => {}
        }
    }
    let meta = meta.ok_or(DownloadError::NoMeta)?;
    let got = sha256_hex(&bytes);
    if bytes.len() as u64 != meta.size || got != meta.sha256 {
        return Err(DownloadError::Corrupt {
            got_bytes: bytes.len() as u64,
            got_sha256: got,
            stored_bytes: meta.size,
            stored_sha256: meta.sha256,
        });
    }
    Ok(bytes)
}

/// One job attempt's artifacts, moved exactly as the daemon moves them (chunks of
/// [`CHUNK_BYTES`] with size and SHA-256, the same retries; downloads checked against the stored
/// digest), for callers outside the daemon: `lorasweep bench checkpoint` and tests.
#[derive(Debug, Clone)]
pub struct ArtifactTransfer {
    target: AttemptArtifacts,
}

impl ArtifactTransfer {
    /// A client for the attempt `(job_id, attempt)` leased by `worker_id`, on a lazily
    /// connected channel without a per-call timeout (as the daemon's artifact channel).
    ///
    /// # Errors
    /// [`WorkerError::Endpoint`] for an unusable URL or TLS setup.
    pub fn new(remote: &Remote, worker_id: &str, job_id: &str, attempt: u32) -> Result<Self, WorkerError> {
        let client = ArtifactsGrpc::new(remote.authed(remote.endpoint()?.connect_lazy()));
        let target = AttemptArtifacts {
            client,
            worker_id: worker_id.to_string(),
            job_id: job_id.to_string(),
            attempt,
            max_backoff: Duration::from_secs(1),
        };
        Ok(Self { target })
    }

    /// Uploads `bytes` as the attempt's artifact `(kind, step)`.
    ///
    /// # Errors
    /// [`TransferError::Rpc`] when the coordinator refuses it (lease lost, bad digest) or stays
    /// unreachable.
    pub async fn upload(&self, kind: pb::ArtifactKind, step: u64, bytes: Vec<u8>) -> Result<(), TransferError> {
        Ok(self.target.upload(&PendingUpload { kind, step, bytes, after_points: 0 }).await?)
    }

    /// The job's checkpoint steps, newest first.
    ///
    /// # Errors
    /// [`TransferError::Rpc`].
    pub async fn checkpoint_steps(&self) -> Result<Vec<u64>, TransferError> {
        Ok(self.target.checkpoint_steps().await?)
    }

    /// Downloads the job's artifact `(kind, step)`, checked against its stored size and SHA-256.
    ///
    /// # Errors
    /// [`TransferError::Download`] naming the failed call or the mismatch.
    pub async fn download(&self, kind: pb::ArtifactKind, step: u64) -> Result<Vec<u8>, TransferError> {
        Ok(self.target.download(kind, step).await?)
    }
}
