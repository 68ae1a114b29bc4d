//! Exact resume on CPU: a run stopped at any point and resumed from its latest checkpoint
//! produces a loss curve bit-identical (f64 bits) to an uninterrupted run of the same job, with
//! dropout and shuffling on. Also: unusable checkpoints are skipped with a warning.

use std::cell::Cell;
use std::path::PathBuf;

use lorasweep_common::job::{DataSpec, LoraSpec, ModelSpec, TrainSpec};
use lorasweep_common::{JobSpec, LoraInit, LossPoint, Series};
use lorasweep_train::CandleTrainer;
use lorasweep_train::checkpoint::{Checkpoint, META_KEY};
use lorasweep_train::{Progress, TrainError, TrainOutcome};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).display().to_string()
}

/// Two epochs of the tiny fixture: 45 micro-batches of 2 blocks per epoch, 22 optimizer steps
/// of 2 micro-batches (micro-batch 44 trails and is never stepped), evals every 8 micro-batches.
fn job(checkpoint_every: u64) -> JobSpec {
    JobSpec {
        model: ModelSpec { path: fixture("tiny-qwen2"), dtype: "f32".into() },
        data: DataSpec { path: fixture("tiny-data"), max_length: 64, shuffle: true },
        lora: LoraSpec {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: ["q_proj", "v_proj", "up_proj"].iter().map(|s| s.to_string()).collect(),
        },
        train: TrainSpec {
            micro_batch: 2,
            grad_accum: 2,
            epochs: 2,
            eval_every: 8,
            checkpoint_every,
            divergence_threshold: 100.0,
            ..TrainSpec::default()
        },
        init: LoraInit::OrthoQrConst,
        lr: 5e-3,
        seed: 7,
    }
}

/// Total optimizer steps of [`job`].
const STEPS: u64 = 44;

/// Records points and checkpoints; stops once `stop_after_steps` train points were seen and
/// then `extra_micro` more micro-batches were started.
#[derive(Default)]
struct Recorder {
    points: Vec<LossPoint>,
    checkpoints: Vec<(u64, Vec<u8>)>,
    warnings: Vec<String>,
    resume: Vec<(u64, Vec<u8>)>,
    stop_after_steps: Option<u64>,
    extra_micro: u64,
    /// Ask for a stop at a step boundary (a worker's SIGTERM) once this many steps are done.
    stop_request_at: Option<u64>,
    polls_after_stop: Cell<u64>,
}

impl Recorder {
    fn steps(&self) -> u64 {
        self.points.iter().filter(|p| p.series == Series::Train).count() as u64
    }
}

impl Progress for Recorder {
    fn total_steps(&mut self, _: u64) {}
    fn point(&mut self, point: LossPoint) {
        self.points.push(point);
    }
    fn cancelled(&self) -> bool {
        let Some(k) = self.stop_after_steps else { return false };
        if self.steps() < k {
            return false;
        }
        // One poll per micro-batch: let `extra_micro` more start before stopping.
        let n = self.polls_after_stop.get();
        self.polls_after_stop.set(n + 1);
        n >= self.extra_micro
    }
    fn stop_requested(&self) -> bool {
        self.stop_request_at.is_some_and(|k| self.steps() >= k)
    }
    fn checkpoint(&mut self, step: u64, bytes: Vec<u8>) {
        self.checkpoints.push((step, bytes));
    }
    fn resume_candidate(&mut self) -> Option<(u64, Vec<u8>)> {
        if self.resume.is_empty() { None } else { Some(self.resume.remove(0)) }
    }
    fn warning(&mut self, message: String) {
        self.warnings.push(message);
    }
}

fn run(trainer: &mut CandleTrainer, job: &JobSpec, rec: &mut Recorder) -> Result<TrainOutcome, TrainError> {
    trainer.run_job(job, None, None, rec)
}

/// Points as comparable bit patterns.
fn bits(points: &[LossPoint]) -> Vec<(Series, u64, u64)> {
    points.iter().map(|p| (p.series, p.step, p.loss.to_bits())).collect()
}

#[test]
fn resumed_runs_match_the_uninterrupted_curve_bit_for_bit() -> anyhow::Result<()> {
    let mut trainer = CandleTrainer::new("cpu")?;
    // Reference: no checkpoints at all.
    let mut plain = Recorder::default();
    let want_out = run(&mut trainer, &job(0), &mut plain)?;
    let want = bits(&plain.points);
    assert!(plain.checkpoints.is_empty());
    assert_eq!(plain.steps(), STEPS);

    // Checkpointing every step changes nothing about the curve.
    let mut full = Recorder::default();
    let t0 = std::time::Instant::now();
    let out = run(&mut trainer, &job(1), &mut full)?;
    let with_ck = t0.elapsed().as_secs_f64();
    assert_eq!(bits(&full.points), want);
    assert_eq!(out.final_eval_loss.map(f64::to_bits), want_out.final_eval_loss.map(f64::to_bits));
    let steps: Vec<u64> = full.checkpoints.iter().map(|c| c.0).collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>());
    let size = full.checkpoints[0].1.len();
    println!("tiny checkpoint: {size} bytes; run with a checkpoint every step: {with_ck:.2}s");

    // Stop after k steps (+ some micro-batches into the next step), resume from the latest
    // checkpoint at or before the stop. k = 22 is the checkpoint before epoch 0's trailing
    // micro-batch; 23 the first step of epoch 1; 44 the last step (only the final eval is left).
    for (k, extra) in [(1, 0), (7, 1), (22, 1), (23, 3), (STEPS, 0)] {
        let mut first = Recorder { stop_after_steps: Some(k), extra_micro: extra, ..Recorder::default() };
        let err = run(&mut trainer, &job(1), &mut first).unwrap_err();
        assert!(matches!(err, TrainError::Cancelled), "k={k}: {err}");
        // The latest checkpoint: step k, or a later one completed in the extra micro-batches.
        let (ck_step, ck) = first.checkpoints.last().cloned().expect("a checkpoint was taken");
        assert_eq!(ck_step, first.steps(), "k={k}");
        assert!(ck_step >= k);

        // A fresh trainer, as after a restart.
        let mut again = CandleTrainer::new("cpu")?;
        let mut second = Recorder { resume: vec![(ck_step, ck)], ..Recorder::default() };
        let out = run(&mut again, &job(1), &mut second)?;
        assert!(second.warnings.is_empty(), "{:?}", second.warnings);
        let (a, b) = (bits(&first.points), bits(&second.points));
        assert_eq!(a[..], want[..a.len()], "k={k}: the stopped run's points");
        assert_eq!(b[..], want[want.len() - b.len()..], "k={k}: the resumed run's points");
        assert!(a.len() + b.len() >= want.len(), "k={k}: points missing between the runs");
        // The resumed run starts right after the checkpoint.
        let first_train = second.points.iter().find(|p| p.series == Series::Train).map(|p| p.step);
        assert_eq!(first_train, (ck_step < STEPS).then_some(ck_step + 1), "k={k}");
        assert_eq!(out.final_eval_loss.map(f64::to_bits), want_out.final_eval_loss.map(f64::to_bits), "k={k}");
        assert_eq!(out.tokens, want_out.tokens, "k={k}");
        assert_eq!(out.diverged, want_out.diverged);
    }
    Ok(())
}

/// A worker's SIGTERM: the trainer stops at the next step boundary with a checkpoint of that
/// step (not a multiple of `checkpoint_every`), and a run resumed from it matches the
/// uninterrupted curve bit for bit.
#[test]
fn a_stop_request_checkpoints_at_the_step_and_resumes_bit_for_bit() -> anyhow::Result<()> {
    let mut trainer = CandleTrainer::new("cpu")?;
    let mut plain = Recorder::default();
    let want_out = run(&mut trainer, &job(10), &mut plain)?;
    let want = bits(&plain.points);

    let mut first = Recorder { stop_request_at: Some(13), ..Recorder::default() };
    let err = run(&mut trainer, &job(10), &mut first).unwrap_err();
    assert!(matches!(err, TrainError::Cancelled), "{err}");
    let steps: Vec<u64> = first.checkpoints.iter().map(|c| c.0).collect();
    assert_eq!((steps.as_slice(), first.steps()), (&[10, 13][..], 13), "the periodic one, then the stop's");
    println!("stop requested after step 13: checkpoint at 13, the last periodic one at 10 (3 steps saved)");

    let (ck_step, ck) = first.checkpoints.last().cloned().expect("the stop's checkpoint");
    let mut second = Recorder { resume: vec![(ck_step, ck)], ..Recorder::default() };
    let out = run(&mut CandleTrainer::new("cpu")?, &job(10), &mut second)?;
    let (a, b) = (bits(&first.points), bits(&second.points));
    assert_eq!(a[..], want[..a.len()]);
    assert_eq!(b[..], want[want.len() - b.len()..]);
    assert_eq!(second.points.iter().find(|p| p.series == Series::Train).map(|p| p.step), Some(14));
    assert_eq!(out.final_eval_loss.map(f64::to_bits), want_out.final_eval_loss.map(f64::to_bits));
    Ok(())
}

#[test]
fn unusable_checkpoints_fall_back_with_warnings() -> anyhow::Result<()> {
    let mut trainer = CandleTrainer::new("cpu")?;
    let mut full = Recorder::default();
    run(&mut trainer, &job(3), &mut full)?;
    let want = bits(&full.points);
    let ck = |s: u64| full.checkpoints.iter().find(|c| c.0 == s).expect("checkpoint").1.clone();

    // Another seed's checkpoint (a different run) and a truncated file come first.
    let mut other = Recorder { stop_after_steps: Some(3), ..Recorder::default() };
    let mut other_job = job(3);
    other_job.seed = 8;
    let _ = run(&mut trainer, &other_job, &mut other);
    let foreign = other.checkpoints[0].1.clone();
    let mut truncated = ck(12);
    truncated.truncate(truncated.len() / 2);
    let mut rec =
        Recorder { resume: vec![(12, truncated), (9, foreign), (6, ck(6)), (3, ck(3))], ..Recorder::default() };
    run(&mut trainer, &job(3), &mut rec)?;
    assert_eq!(rec.warnings.len(), 2, "{:?}", rec.warnings);
    assert!(rec.warnings[0].contains("step 12"), "{}", rec.warnings[0]);
    assert!(rec.warnings[1].contains("different job"), "{}", rec.warnings[1]);
    let b = bits(&rec.points);
    assert_eq!(b[..], want[want.len() - b.len()..]);
    assert_eq!(rec.points.iter().find(|p| p.series == Series::Train).map(|p| p.step), Some(7));

    // Nothing usable at all: a warning per candidate and a run from step 0.
    let mut rec = Recorder { resume: vec![(5, b"not a checkpoint".to_vec())], ..Recorder::default() };
    run(&mut trainer, &job(3), &mut rec)?;
    assert_eq!(rec.warnings.len(), 1);
    assert_eq!(bits(&rec.points), want);
    Ok(())
}

#[test]
fn checkpoint_bytes_round_trip_and_name_their_contents() -> anyhow::Result<()> {
    let mut trainer = CandleTrainer::new("cpu")?;
    let mut rec = Recorder { stop_after_steps: Some(2), ..Recorder::default() };
    let _ = run(&mut trainer, &job(2), &mut rec);
    let bytes = &rec.checkpoints[0].1;
    let ck = Checkpoint::from_bytes(bytes)?;
    assert_eq!(ck.to_bytes()?, *bytes);
    assert_eq!((ck.state.opt_step, ck.state.adam_step, ck.state.epoch, ck.state.micro), (2, 2, 0, 4));
    assert_eq!(ck.state.global, 4);
    // 2 layers × 3 targets × (A, B) × (weight, exp_avg, exp_avg_sq).
    assert_eq!(ck.tensors.len(), 36);
    assert!(ck.tensors.contains_key("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight.exp_avg_sq"));
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)?;
    let header: serde_json::Value =
        serde_json::from_str(meta.metadata().as_ref().and_then(|m| m.get(META_KEY)).expect("header"))?;
    assert_eq!(header["version"], 1);
    assert_eq!(header["job"]["train"]["checkpoint_every"], 0);
    // Another version is refused by name.
    let mut v2 = header.clone();
    v2["version"] = 2.into();
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let meta2 = std::collections::HashMap::from([(META_KEY.to_string(), v2.to_string())]);
    let other = safetensors::serialize(views, Some(meta2))?;
    let err = Checkpoint::from_bytes(&other).unwrap_err().to_string();
    assert!(err.contains("version 2"), "{err}");
    Ok(())
}
