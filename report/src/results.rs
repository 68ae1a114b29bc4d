//! The study's two result tables (ml-spec §1.7) computed from a sweep's jobs: final eval loss
//! per lr × init as mean ± std over seeds, and the same relative to Standard in percent; then
//! the best lr per init and the cells that diverged, failed or are still incomplete.
//!
//! Pure functions over [`JobResult`]s, so the tables can be tested without a coordinator.
//! Conventions, chosen to match how the study aggregates (pandas/numpy over seeds):
//! - a cell's mean is over the jobs that have a final eval loss (succeeded, and diverged jobs
//!   that reached an eval — the study's exploded cells are means of exploded losses);
//! - std is the sample standard deviation (n − 1); 0 for a single value;
//! - failed, cancelled, queued and running jobs contribute no value; the cell is marked
//!   incomplete (`*` in text formats) until every seed has a value.

use lorasweep_common::{JobState, LoraInit};
use serde::Serialize;

/// The part of a job the tables need.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub init: LoraInit,
    pub lr: f64,
    pub seed: u64,
    pub state: JobState,
    pub final_eval_loss: Option<f64>,
}

/// One (lr, init) cell of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    pub init: LoraInit,
    pub lr: f64,
    /// Mean final eval loss over the seeds that have one.
    pub mean: Option<f64>,
    /// Sample std over those seeds.
    pub std: Option<f64>,
    /// Seeds with a value.
    pub n: usize,
    /// Jobs in the cell (seeds in the grid).
    pub jobs: usize,
    pub diverged: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Queued or running.
    pub pending: usize,
    /// The mean relative to Standard's at the same lr, in percent.
    pub vs_standard_pct: Option<f64>,
}

impl Cell {
    /// Every seed has a value.
    pub fn complete(&self) -> bool {
        self.n == self.jobs
    }
}

/// Both tables and the summaries under them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    /// Columns, in the study's order, restricted to the inits present.
    pub inits: Vec<LoraInit>,
    /// Rows, ascending.
    pub lrs: Vec<f64>,
    /// Row-major: `cells[row * inits.len() + col]`.
    pub cells: Vec<Cell>,
    /// Per init, the lr with the lowest complete mean (None if no complete cell).
    pub best_lr: Vec<(LoraInit, Option<f64>)>,
}

impl Results {
    /// Computes the tables from a sweep's jobs.
    pub fn compute(jobs: &[JobResult]) -> Self {
        let inits: Vec<LoraInit> = LoraInit::ALL.into_iter().filter(|i| jobs.iter().any(|j| j.init == *i)).collect();
        let mut lrs: Vec<f64> = Vec::new();
        for j in jobs {
            if !lrs.iter().any(|l| same_lr(*l, j.lr)) {
                lrs.push(j.lr);
            }
        }
        lrs.sort_by(f64::total_cmp);

        let mut cells = Vec::with_capacity(lrs.len() * inits.len());
        for &lr in &lrs {
            for &init in &inits {
                cells.push(cell(init, lr, jobs.iter().filter(|j| j.init == init && same_lr(j.lr, lr))));
            }
        }
        let width = inits.len();
        if let Some(col) = inits.iter().position(|i| *i == LoraInit::Standard) {
            for row in 0..lrs.len() {
                let base = cells[row * width + col].mean;
                for c in 0..width {
                    let cell = &mut cells[row * width + c];
                    cell.vs_standard_pct = match (cell.mean, base) {
                        (Some(m), Some(b)) if b != 0.0 => Some((m - b) / b * 100.0),
                        _ => None,
                    };
                }
            }
        }
        let best_lr = inits
            .iter()
            .enumerate()
            .map(|(col, &init)| {
                let best = (0..lrs.len())
                    .filter_map(|row| {
                        let c = &cells[row * width + col];
                        c.mean.filter(|m| m.is_finite() && c.complete()).map(|m| (lrs[row], m))
                    })
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(lr, _)| lr);
                (init, best)
            })
            .collect();
        Self { inits, lrs, cells, best_lr }
    }

    /// The cell at (row, col).
    pub fn at(&self, row: usize, col: usize) -> &Cell {
        &self.cells[row * self.inits.len() + col]
    }
}

/// Learning rates come from TOML floats; compare them with a relative tolerance so `1e-3` and
/// `0.001` land in one row.
pub fn same_lr(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

fn cell<'a>(init: LoraInit, lr: f64, jobs: impl Iterator<Item = &'a JobResult>) -> Cell {
    let mut values = Vec::new();
    let (mut n_jobs, mut diverged, mut failed, mut cancelled, mut pending) = (0, 0, 0, 0, 0);
    for j in jobs {
        n_jobs += 1;
        match j.state {
            JobState::Succeeded => {}
            JobState::Diverged => diverged += 1,
            JobState::Failed => failed += 1,
            JobState::Cancelled => cancelled += 1,
            JobState::Queued | JobState::Running => pending += 1,
        }
        if matches!(j.state, JobState::Succeeded | JobState::Diverged)
            && let Some(v) = j.final_eval_loss
        {
            values.push(v);
        }
    }
    let n = values.len();
    let mean = (n > 0).then(|| values.iter().sum::<f64>() / n as f64);
    let std = mean.map(|m| {
        if n < 2 { 0.0 } else { (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() }
    });
    Cell { init, lr, mean, std, n, jobs: n_jobs, diverged, failed, cancelled, pending, vs_standard_pct: None }
}

/// Formats an lr as the study writes it: `1e-4`, `2e-3`, `1e-2`.
pub fn fmt_lr(lr: f64) -> String {
    let s = format!("{lr:e}");
    match s.split_once('e') {
        Some((m, e)) => format!("{m}e{e}"),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(init: LoraInit, lr: f64, seed: u64, state: JobState, loss: Option<f64>) -> JobResult {
        JobResult { init, lr, seed, state, final_eval_loss: loss }
    }

    #[test]
    fn mean_std_and_relative_to_standard() {
        let jobs = vec![
            job(LoraInit::Reversed, 1e-3, 42, JobState::Succeeded, Some(2.26)),
            job(LoraInit::Reversed, 1e-3, 43, JobState::Succeeded, Some(2.28)),
            job(LoraInit::Standard, 1e-3, 42, JobState::Succeeded, Some(2.2)),
            job(LoraInit::Standard, 1e-3, 43, JobState::Succeeded, Some(2.24)),
        ];
        let r = Results::compute(&jobs);
        assert_eq!(r.inits, vec![LoraInit::Standard, LoraInit::Reversed], "study's column order");
        let std_cell = r.at(0, 0);
        assert!((std_cell.mean.unwrap() - 2.22).abs() < 1e-12);
        // Sample std of {2.2, 2.24} = 0.04 / sqrt(2).
        assert!((std_cell.std.unwrap() - 0.04 / 2f64.sqrt()).abs() < 1e-12);
        let rev = r.at(0, 1);
        assert!((rev.vs_standard_pct.unwrap() - (2.27 - 2.22) / 2.22 * 100.0).abs() < 1e-9);
        assert_eq!(r.at(0, 0).vs_standard_pct, Some(0.0));
    }

    #[test]
    fn rows_merge_equal_lrs_and_sort() {
        let jobs = vec![
            job(LoraInit::Standard, 0.001, 1, JobState::Succeeded, Some(1.0)),
            job(LoraInit::Standard, 1e-3, 2, JobState::Succeeded, Some(3.0)),
            job(LoraInit::Standard, 1e-4, 1, JobState::Succeeded, Some(2.0)),
        ];
        let r = Results::compute(&jobs);
        assert_eq!(r.lrs, vec![1e-4, 1e-3]);
        assert_eq!(r.at(1, 0).n, 2);
        assert_eq!(r.at(1, 0).mean, Some(2.0));
    }

    #[test]
    fn incomplete_failed_and_diverged_cells_are_counted_and_best_lr_skips_them() {
        let jobs = vec![
            job(LoraInit::Standard, 1e-4, 42, JobState::Succeeded, Some(2.30)),
            job(LoraInit::Standard, 1e-4, 43, JobState::Succeeded, Some(2.32)),
            // Lower, but incomplete: one seed still running.
            job(LoraInit::Standard, 1e-3, 42, JobState::Succeeded, Some(2.10)),
            job(LoraInit::Standard, 1e-3, 43, JobState::Running, None),
            // Diverged values count in the mean, as in the study's exploded cells.
            job(LoraInit::Standard, 1e-2, 42, JobState::Diverged, Some(9.0)),
            job(LoraInit::Standard, 1e-2, 43, JobState::Failed, None),
        ];
        let r = Results::compute(&jobs);
        let c = r.at(1, 0);
        assert_eq!((c.n, c.jobs, c.pending, c.complete()), (1, 2, 1, false));
        let c = r.at(2, 0);
        assert_eq!((c.n, c.diverged, c.failed), (1, 1, 1));
        assert_eq!(c.mean, Some(9.0));
        assert_eq!(r.best_lr, vec![(LoraInit::Standard, Some(1e-4))]);
    }

    #[test]
    fn lr_formatting_matches_the_study() {
        assert_eq!(fmt_lr(1e-4), "1e-4");
        assert_eq!(fmt_lr(2e-3), "2e-3");
        assert_eq!(fmt_lr(0.005), "5e-3");
        assert_eq!(fmt_lr(0.01), "1e-2");
    }
}
