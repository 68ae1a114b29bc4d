//! A job's lifecycle state as a domain enum, with the lowercase names used in the database,
//! on the command line and in logs.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Where a job stands. `Queued → Running → {Succeeded, Diverged}`; `Running → Queued` on a failed
/// or expired attempt with attempts left, else `Failed`; any active state `→ Cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Leased to a worker under a live lease.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Out of attempts, or failed with a non-retryable error.
    Failed,
    /// The loss blew up; the curve is kept and the job is never retried.
    Diverged,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Diverged,
        JobState::Cancelled,
    ];

    /// The lowercase name (`queued|running|succeeded|failed|diverged|cancelled`).
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Diverged => "diverged",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True while the job may still change by itself (queued or running): a sweep with no
    /// active job is finished.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }

    /// The allowed names, comma-separated, for error messages.
    pub fn allowed() -> String {
        Self::ALL.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for JobState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.name() == s)
            .ok_or_else(|| Error::invalid("state", format!("unknown state {s:?}; allowed: {}", Self::allowed())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_refused() {
        for state in JobState::ALL {
            assert_eq!(state.name().parse::<JobState>().expect("own name parses"), state);
        }
        let err = "done".parse::<JobState>().expect_err("unknown name").to_string();
        assert!(err.contains("done") && err.contains("cancelled"), "{err}");
        assert!(JobState::Running.is_active() && !JobState::Diverged.is_active());
    }
}
