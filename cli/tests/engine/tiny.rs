//! The candle sweeps of the engine tests: the tiny fixture model and data (three epochs, 66
//! optimizer steps a job), and the fault-free reference they are compared with.

use lorasweep_common::{JobSpec, LossPoint};
use lorasweep_train::{CandleTrainer, Progress};

/// A sweep file on the tiny fixture at `model`/`data`; `grid` is its `[grid]` body.
pub(crate) fn sweep_toml(name: &str, model: &str, data: &str, checkpoint_every: u64, grid: &str) -> String {
    format!(
        "name = {name:?}\n[model]\npath = {model:?}\ndtype = \"f32\"\n[data]\npath = {data:?}\nmax_length = 64\nshuffle = true\n\
         [lora]\nr = 4\nalpha = 8.0\ndropout = 0.1\ntargets = [\"q_proj\", \"v_proj\"]\n\
         [train]\nmicro_batch = 2\ngrad_accum = 2\nepochs = 3\neval_every = 8\ncheckpoint_every = {checkpoint_every}\n\
         divergence_threshold = 100.0\n[grid]\n{grid}\n"
    )
}

/// Collects a run's points.
#[derive(Default)]
struct Points(Vec<LossPoint>);

impl Progress for Points {
    fn total_steps(&mut self, _: u64) {}
    fn point(&mut self, p: LossPoint) {
        self.0.push(p);
    }
    fn cancelled(&self) -> bool {
        false
    }
}

/// The fault-free run of `spec` in this process: its points and final eval loss.
pub(crate) fn reference(trainer: &mut CandleTrainer, spec: &JobSpec) -> anyhow::Result<(Vec<LossPoint>, Option<f64>)> {
    let mut points = Points::default();
    let outcome = trainer.run_job(spec, None, None, &mut points)?;
    Ok((points.0, outcome.final_eval_loss))
}
