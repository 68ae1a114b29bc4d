//! Conversions between domain types and the generated wire types of `lorasweep_proto::pb`: the
//! one boundary where protobuf's open enums (any `i32`) become closed Rust enums, so a bad value
//! is refused here with a message naming the field.

use lorasweep_proto::pb;

use crate::{Error, JobState, LossPoint, Series};

impl From<JobState> for pb::JobState {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Diverged => pb::JobState::Diverged,
            JobState::Cancelled => pb::JobState::Cancelled,
        }
    }
}

impl JobState {
    /// Decodes a wire `JobState` held in field `field`. `None` for UNSPECIFIED, which requests
    /// use to mean "any state".
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `field` for a value that is no `JobState`.
    pub fn from_wire(value: i32, field: &str) -> Result<Option<JobState>, Error> {
        let state = pb::JobState::try_from(value)
            .map_err(|_| Error::invalid(field, format!("{value} is no JobState; allowed: 0 (unspecified) to 6")))?;
        Ok(match state {
            pb::JobState::Unspecified => None,
            pb::JobState::Queued => Some(JobState::Queued),
            pb::JobState::Running => Some(JobState::Running),
            pb::JobState::Succeeded => Some(JobState::Succeeded),
            pb::JobState::Failed => Some(JobState::Failed),
            pb::JobState::Diverged => Some(JobState::Diverged),
            pb::JobState::Cancelled => Some(JobState::Cancelled),
        })
    }

    /// The wire value (`pb::JobState as i32`).
    pub fn to_wire(self) -> i32 {
        pb::JobState::from(self) as i32
    }
}

impl From<Series> for pb::Series {
    fn from(series: Series) -> Self {
        match series {
            Series::Train => pb::Series::Train,
            Series::Eval => pb::Series::Eval,
        }
    }
}

impl Series {
    /// Decodes a wire `Series`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for UNSPECIFIED or a value that is no `Series`.
    pub fn from_wire(value: i32) -> Result<Series, Error> {
        match pb::Series::try_from(value) {
            Ok(pb::Series::Train) => Ok(Series::Train),
            Ok(pb::Series::Eval) => Ok(Series::Eval),
            _ => Err(Error::invalid(
                "point.series",
                format!("{value} is not allowed; allowed: 1 (SERIES_TRAIN), 2 (SERIES_EVAL)"),
            )),
        }
    }

    /// Parses the database/CLI name (`train`, `eval`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for any other name.
    pub fn from_name(name: &str) -> Result<Series, Error> {
        match name {
            "train" => Ok(Series::Train),
            "eval" => Ok(Series::Eval),
            other => Err(Error::invalid("series", format!("unknown series {other:?}; allowed: train, eval"))),
        }
    }
}

impl From<LossPoint> for pb::Point {
    fn from(point: LossPoint) -> Self {
        pb::Point { series: pb::Series::from(point.series) as i32, step: point.step, loss: point.loss }
    }
}

impl TryFrom<pb::Point> for LossPoint {
    type Error = Error;

    fn try_from(point: pb::Point) -> Result<Self, Error> {
        Ok(LossPoint { series: Series::from_wire(point.series)?, step: point.step, loss: point.loss })
    }
}

/// Appends a piece of a streamed `GetCurve` answer to the curve assembled so far: the pieces
/// come in step order, so concatenating their arrays gives the whole curves.
pub fn append_curve(whole: &mut pb::GetCurveResponse, piece: pb::GetCurveResponse) {
    whole.train_steps.extend(piece.train_steps);
    whole.train_losses.extend(piece.train_losses);
    whole.eval_steps.extend(piece.eval_steps);
    whole.eval_losses.extend(piece.eval_losses);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_the_wire() {
        for state in JobState::ALL {
            assert_eq!(JobState::from_wire(state.to_wire(), "state").expect("valid"), Some(state));
        }
        assert_eq!(JobState::from_wire(0, "state").expect("unspecified is valid"), None);
        let err = JobState::from_wire(42, "state").expect_err("bad value").to_string();
        assert!(err.contains("state") && err.contains("42"), "{err}");
    }

    #[test]
    fn points_round_trip_and_unspecified_series_is_refused() {
        let point = LossPoint { series: Series::Eval, step: 40, loss: f64::INFINITY };
        let wire = pb::Point::from(point);
        assert_eq!(wire.series, pb::Series::Eval as i32);
        assert_eq!(LossPoint::try_from(wire).expect("valid"), point);
        for bad in [0, 3, -1] {
            let err =
                LossPoint::try_from(pb::Point { series: bad, step: 1, loss: 1.0 }).expect_err("bad series").to_string();
            assert!(err.contains("series"), "{err}");
        }
        assert_eq!(Series::from_name("train").expect("valid"), Series::Train);
        assert!(Series::from_name("test").is_err());
    }
}
