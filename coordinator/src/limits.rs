//! Size limits of what the coordinator accepts, in one place. A call over a limit is refused
//! with INVALID_ARGUMENT (a field too long) or RESOURCE_EXHAUSTED (a message or stream too big),
//! the message naming the limit, before anything of it is written.
//!
//! Limits defined elsewhere, listed here so this file is the inventory:
//! - ids: 128 bytes (`grpc::require_id`); worker name/device/trainer: 256 bytes (`grpc::workers`);
//! - a sweep file: 1 MiB (`grpc::sweeps`); its grid: `lorasweep_common::MAX_JOBS` jobs; its
//!   name and paths: `lorasweep_common::sweep::{MAX_NAME_LEN, MAX_PATH_LEN}` bytes (other strings
//!   of a sweep file are checked against fixed lists);
//! - tokens: 16 to 1024 bytes (`auth`);
//! - artifacts: 8 GiB each, sent in chunks of at most 1 MiB (`grpc::artifacts`); a job warning:
//!   [`MAX_ERROR_LEN`];
//! - job logs: [`MAX_LOG_RECORDS_PER_CALL`] records of [`MAX_LOG_MESSAGE_LEN`] bytes per
//!   ShipLogs, and `store::logs::MAX_LOG_BYTES_PER_JOB` stored per job;
//! - answers that grow with the data are paged or streamed (`grpc::paging`), each message at
//!   most `grpc::paging::PAGE_BYTES`.

use tonic::{Code, Status};

/// Largest gRPC message the coordinator decodes. Sweep files are ≤ 1 MiB and point messages are
/// split by workers into far smaller pieces; 4 MiB (tonic's default, made explicit) bounds the
/// memory one call can pin.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Most points one ReportPoints stream may carry. Workers open a stream per flush; the largest
/// study run has ~10k train steps and a few hundred evals, so a million is far above honest use
/// and bounds how long one stream can occupy the writer.
pub const MAX_POINTS_PER_STREAM: u64 = 1_000_000;

/// Longest `error` a FailJob may carry: enough for a backtrace, not for a log file.
pub const MAX_ERROR_LEN: usize = 64 << 10;

/// Most records one ShipLogs may carry (workers ship every second or so, far fewer).
pub const MAX_LOG_RECORDS_PER_CALL: usize = 1000;

/// Longest log message a worker may ship (workers cut longer ones before sending).
pub const MAX_LOG_MESSAGE_LEN: usize = 4096;

/// Longest `source` of a SubmitSweep (a file path shown in error messages).
pub const MAX_SOURCE_LEN: usize = 4096;

/// tonic's codec refuses an oversized message with OUT_OF_RANGE ("decoded message length too
/// large"); the contract is RESOURCE_EXHAUSTED naming our limit. No handler of ours answers
/// OUT_OF_RANGE, so every such answer is the codec's and is renamed here.
pub(crate) fn rename_decode_limit<B>(response: &mut http::Response<B>) {
    let headers = response.headers_mut();
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return;
    }
    let renamed = Status::new(
        Code::ResourceExhausted,
        format!("request message too large; allowed: at most {MAX_MESSAGE_BYTES} bytes per message"),
    );
    headers.remove("grpc-message");
    headers.remove("grpc-status");
    // Only fails on a message that is not a valid header value, which ours always is.
    let _ = renamed.add_header(headers);
}
