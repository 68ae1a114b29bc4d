//! The `Artifacts` service: job checkpoints and final adapters as files under
//! `<data-dir>/artifacts/<job id>/`, one row each in the database.
//!
//! An upload is written to a `.part` file while its SHA-256 is computed, checked against the
//! declared size and digest, synced, renamed to a name no other upload uses, and only then
//! recorded (fenced by the lease). Any failure before the record removes the file, so nothing
//! half-written or unverified is ever listed. Files a newer upload replaced (or that fell out of
//! the kept checkpoints) are deleted after the record commits.

use std::path::{Path, PathBuf};

use lorasweep_proto::pb::{self, artifacts_server::Artifacts};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{require_attempt, require_id};
use crate::{
    error::{Error, Result},
    limits::MAX_ERROR_LEN,
    store::{
        Store,
        artifacts::{ArtifactRow, NewArtifact},
    },
};

/// Largest chunk accepted in an upload and sent in a download: well under the 4 MiB message
/// limit, and large enough that a 100 MB checkpoint is a hundred messages.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// Largest artifact accepted. A 7B-shape r=64 all-target checkpoint (adapters plus two AdamW
/// moments, f32) is ~2 GB; more than 8 GiB is a mistake, not a checkpoint.
pub(crate) const MAX_ARTIFACT_BYTES: u64 = 8 << 30;

/// Download chunks buffered ahead of a slow receiver.
const DOWNLOAD_BUFFER: usize = 4;

/// The subdirectory of the data directory holding artifacts.
pub(crate) const ARTIFACTS_DIR: &str = "artifacts";

/// Implements `Artifacts` over the [`Store`] and the artifact directory.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactsService {
    pub(crate) store: Store,
    /// `<data-dir>/artifacts`.
    pub(crate) dir: PathBuf,
}

/// The stored name of a wire kind (UNSPECIFIED refused).
fn kind_name(kind: i32) -> Result<&'static str> {
    match pb::ArtifactKind::try_from(kind) {
        Ok(pb::ArtifactKind::Checkpoint) => Ok("checkpoint"),
        Ok(pb::ArtifactKind::Adapter) => Ok("adapter"),
        _ => Err(Error::InvalidArgument(format!("kind {kind} is not an artifact kind; allowed: CHECKPOINT, ADAPTER"))),
    }
}

fn kind_wire(name: &str) -> pb::ArtifactKind {
    match name {
        "checkpoint" => pb::ArtifactKind::Checkpoint,
        "adapter" => pb::ArtifactKind::Adapter,
        _ => pb::ArtifactKind::Unspecified,
    }
}

fn to_pb(row: &ArtifactRow) -> pb::Artifact {
    pb::Artifact {
        job_id: row.job_id.clone(),
        kind: kind_wire(&row.kind) as i32,
        step: row.step as u64,
        size: row.size as u64,
        sha256: row.sha256.clone(),
        attempt: row.attempt as u32,
        created_at_ms: row.created_at,
    }
}

/// Lowercase hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A job id that is safe as a directory name (ids are UUIDs; anything else is refused).
fn job_dir_name(job_id: &str) -> Result<&str> {
    if job_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        Ok(job_id)
    } else {
        Err(Error::InvalidArgument(format!("job_id {job_id:?} has characters other than letters, digits, - and _")))
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::DataDir { path: path.to_path_buf(), source }
}

impl ArtifactsService {
    /// Receives the bytes after `meta` into `part`, returning `(size, sha256 hex)`.
    async fn receive(
        stream: &mut Streaming<pb::UploadArtifactRequest>,
        part: &Path,
        declared: u64,
    ) -> std::result::Result<(u64, String), Status> {
        let mut file = tokio::fs::File::create(part).await.map_err(|e| Status::from(io_error(part, e)))?;
        let (mut size, mut hash) = (0u64, Sha256::new());
        while let Some(msg) = stream.message().await? {
            let chunk = match msg.part {
                Some(pb::upload_artifact_request::Part::Chunk(c)) => c,
                Some(pb::upload_artifact_request::Part::Meta(_)) => {
                    return Err(Status::invalid_argument("meta may only be the first message of an upload"));
                }
                None => continue,
            };
            if chunk.len() > CHUNK_BYTES {
                return Err(Status::invalid_argument(format!(
                    "a chunk of {} bytes; allowed: at most {CHUNK_BYTES}",
                    chunk.len()
                )));
            }
            size += chunk.len() as u64;
            if size > declared {
                return Err(Status::invalid_argument(format!("more bytes than the declared size {declared}")));
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| Status::from(io_error(part, e)))?;
        }
        file.sync_all().await.map_err(|e| Status::from(io_error(part, e)))?;
        Ok((size, hex(&hash.finalize())))
    }
}

#[tonic::async_trait]
impl Artifacts for ArtifactsService {
    #[tracing::instrument(skip_all, fields(job_id, attempt, kind, step), err)]
    async fn upload_artifact(
        &self,
        request: Request<Streaming<pb::UploadArtifactRequest>>,
    ) -> std::result::Result<Response<pb::UploadArtifactResponse>, Status> {
        let mut stream = request.into_inner();
        let meta = match stream.message().await? {
            Some(pb::UploadArtifactRequest { part: Some(pb::upload_artifact_request::Part::Meta(m)) }) => m,
            _ => return Err(Status::invalid_argument("the first message of an upload must carry meta")),
        };
        let worker_id = require_id(&meta.worker_id, "worker_id")?;
        let job_id = require_id(&meta.job_id, "job_id")?;
        let attempt = require_attempt(meta.attempt)?;
        let kind = kind_name(meta.kind)?;
        let span = tracing::Span::current();
        span.record("job_id", job_id.as_str())
            .record("attempt", attempt)
            .record("kind", kind)
            .record("step", meta.step);
        if meta.size > MAX_ARTIFACT_BYTES || meta.step > i64::MAX as u64 {
            return Err(Status::invalid_argument(format!(
                "size {} / step {}: allowed at most {MAX_ARTIFACT_BYTES} bytes and step ≤ {}",
                meta.size,
                meta.step,
                i64::MAX
            )));
        }
        let sha = meta.sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!("sha256 {:?} is not 64 hex digits", meta.sha256)));
        }
        // Refuse a stale attempt before receiving any bytes.
        self.store.check_live(&worker_id, &job_id, attempt).await?;
        let dir = self.dir.join(job_dir_name(&job_id)?);
        tokio::fs::create_dir_all(&dir).await.map_err(|e| Status::from(io_error(&dir, e)))?;
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let file = format!("{kind}-{:012}-a{attempt}-{}.bin", meta.step, &unique[..8]);
        let part = dir.join(format!("{file}.part"));
        let received = Self::receive(&mut stream, &part, meta.size).await;
        let (size, got) = match received {
            Ok(r) => r,
            Err(status) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(status);
            }
        };
        if size != meta.size || got != sha {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Status::invalid_argument(format!(
                "upload does not match its meta: {size} bytes with sha256 {got}, declared {} bytes with sha256 {sha}; \
                 nothing stored",
                meta.size
            )));
        }
        let path = dir.join(&file);
        tokio::fs::rename(&part, &path).await.map_err(|e| Status::from(io_error(&path, e)))?;
        let new = NewArtifact { worker_id, job_id, attempt, kind, step: meta.step, size, sha256: sha, file };
        let (row, orphans) = match self.store.insert_artifact(new).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e.into());
            }
        };
        for old in orphans {
            let _ = tokio::fs::remove_file(dir.join(old)).await;
        }
        tracing::info!(size, "artifact stored");
        Ok(Response::new(pb::UploadArtifactResponse { artifact: Some(to_pb(&row)) }))
    }

    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> std::result::Result<Response<pb::ListArtifactsResponse>, Status> {
        let req = request.into_inner();
        let job_id = require_id(&req.job_id, "job_id")?;
        let kind = if req.kind == pb::ArtifactKind::Unspecified as i32 { None } else { Some(kind_name(req.kind)?) };
        let rows = self.store.list_artifacts(&job_id, kind).await?;
        Ok(Response::new(pb::ListArtifactsResponse { artifacts: rows.iter().map(to_pb).collect() }))
    }

    type DownloadArtifactStream = ReceiverStream<std::result::Result<pb::DownloadArtifactResponse, Status>>;

    async fn download_artifact(
        &self,
        request: Request<pb::DownloadArtifactRequest>,
    ) -> std::result::Result<Response<Self::DownloadArtifactStream>, Status> {
        let req = request.into_inner();
        let job_id = require_id(&req.job_id, "job_id")?;
        let kind = kind_name(req.kind)?;
        let rows = self.store.list_artifacts(&job_id, Some(kind)).await?;
        let row = rows
            .into_iter()
            .find(|r| r.step as u64 == req.step)
            .ok_or_else(|| Status::not_found(format!("job {job_id} has no {kind} at step {}", req.step)))?;
        let path = self.dir.join(job_dir_name(&job_id)?).join(&row.file);
        // Opened before answering, so a missing file is an error of the call, not of the stream.
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| Status::from(io_error(&path, e)))?;
        let (tx, rx) = tokio::sync::mpsc::channel(DOWNLOAD_BUFFER);
        tokio::spawn(async move {
            let meta =
                pb::DownloadArtifactResponse { part: Some(pb::download_artifact_response::Part::Meta(to_pb(&row))) };
            if tx.send(Ok(meta)).await.is_err() {
                return;
            }
            loop {
                let mut buf = vec![0u8; CHUNK_BYTES];
                let mut filled = 0;
                // Fill whole chunks (a read may return less than asked).
                while filled < CHUNK_BYTES {
                    match file.read(&mut buf[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(io_error(&path, e)))).await;
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                buf.truncate(filled);
                let msg = pb::DownloadArtifactResponse { part: Some(pb::download_artifact_response::Part::Chunk(buf)) };
                if tx.send(Ok(msg)).await.is_err() || filled < CHUNK_BYTES {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_job_warning(
        &self,
        request: Request<pb::ReportJobWarningRequest>,
    ) -> std::result::Result<Response<pb::ReportJobWarningResponse>, Status> {
        let req = request.into_inner();
        let worker_id = require_id(&req.worker_id, "worker_id")?;
        let job_id = require_id(&req.job_id, "job_id")?;
        let attempt = require_attempt(req.attempt)?;
        if req.message.len() > MAX_ERROR_LEN {
            return Err(Status::invalid_argument(format!(
                "message is {} bytes; allowed: at most {MAX_ERROR_LEN}",
                req.message.len()
            )));
        }
        tracing::warn!(%job_id, attempt, message = %req.message, "job warning");
        self.store.job_warning(worker_id, job_id, attempt, req.message).await?;
        Ok(Response::new(pb::ReportJobWarningResponse {}))
    }

    #[tracing::instrument(skip_all, fields(job_id = %request.get_ref().job_id, attempt = request.get_ref().attempt, step = request.get_ref().step), err)]
    async fn report_resumed(
        &self,
        request: Request<pb::ReportResumedRequest>,
    ) -> std::result::Result<Response<pb::ReportResumedResponse>, Status> {
        let req = request.into_inner();
        let worker_id = require_id(&req.worker_id, "worker_id")?;
        let job_id = require_id(&req.job_id, "job_id")?;
        let attempt = require_attempt(req.attempt)?;
        if req.step > i64::MAX as u64 {
            return Err(Status::invalid_argument("step too large; allowed: ≤ i64::MAX"));
        }
        self.store.resumed(worker_id, job_id, attempt, req.step).await?;
        Ok(Response::new(pb::ReportResumedResponse {}))
    }
}
