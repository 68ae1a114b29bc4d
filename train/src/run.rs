//! The training loop of one job (ml-spec §1.4–§1.5, mirroring `compare_lora_init.py::train_with_init`).
//!
//! Per epoch, over micro-batches `i = 0..ceil(n_blocks / micro_batch)` of the (shuffled) blocks:
//! 1. if `i % eval_every == 0`: eval (before micro-batch i's forward, so eval 0 is the initial adapter);
//! 2. forward with dropout, `(loss / grad_accum).backward()`, gradients summed over the group;
//! 3. if `(i + 1) % grad_accum == 0`: clip to `max_grad_norm` (global L2), AdamW step at
//!    `lr · factor(s)` (s = optimizer steps so far, so the first step uses lr 0), report the
//!    step's train loss. Trailing micro-batches that do not complete a group are never stepped;
//!    their gradients are discarded at the end of the epoch.
//!
//! After the last epoch (or at `max_steps`) one more eval runs — skipped, reusing the last
//! value, when no update happened since the last eval.
//!
//! Loss points ([`Progress::point`]): `train` at step = optimizer step (1-based), loss = mean of
//! that step's unscaled micro-batch losses; `eval` at step = global micro-batch index
//! (`epoch · n_micro + i`; the end-of-run eval at the index after the last micro-batch run).
//! Eval loss is the token mean of the causal-LM cross-entropy over all eval blocks, in batches of
//! `micro_batch`, dropout off.

use std::time::Instant;

use candle_core::{Device, Tensor};
use lorasweep_common::{JobSpec, LossPoint, Series};

use super::checkpoint::{Checkpoint, LoopState};
use super::data::{PackedData, epoch_order};
use super::lora::{Adapters, DropoutKey};
use super::model::Qwen2Model;
use super::optim::{AdamW, AdamWConfig, GradAccum, clip_grad_norm};
use super::schedule::LinearSchedule;
use crate::{
    TrainError,
    trainer::{Progress, TrainOutcome},
};

/// Stacks the given blocks into a `[b, t]` u32 tensor.
fn batch(blocks: &[Vec<u32>], idx: &[usize], dev: &Device) -> Result<Tensor, TrainError> {
    let t = blocks[idx[0]].len();
    let flat: Vec<u32> = idx.iter().flat_map(|&k| blocks[k].iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (idx.len(), t), dev)?)
}

/// Token-mean eval loss over `blocks` in batches of `batch_size` (dropout off).
///
/// # Errors
/// [`TrainError::Data`] when there are no eval blocks; tensor errors.
pub fn eval_loss(
    model: &Qwen2Model,
    ads: Option<&Adapters>,
    blocks: &[Vec<u32>],
    batch_size: usize,
) -> Result<f64, TrainError> {
    if blocks.is_empty() {
        return Err(TrainError::Data("the eval split packs into 0 blocks".into()));
    }
    // No gradients in eval: a detached view keeps candle from recording the graph (and from
    // holding every activation until the loss is dropped).
    let eval_ads = ads.map(Adapters::for_eval);
    let (mut sum, mut count) = (0f64, 0usize);
    let idx: Vec<usize> = (0..blocks.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let ids = batch(blocks, chunk, model.device())?;
        let (loss, n) = model.loss(&ids, eval_ads.as_ref(), None)?;
        // HF: Σ (batch mean × #label tokens) / Σ #label tokens.
        sum += loss.to_scalar::<f32>()? as f64 * n as f64;
        count += n;
    }
    Ok(sum / count as f64)
}

/// Whether a loss marks the run diverged.
fn diverges(loss: f64, threshold: f64) -> bool {
    !loss.is_finite() || loss > threshold
}

/// Runs the job's loop on a loaded model and packed data, updating `ads` in place.
///
/// # Errors
/// [`TrainError::Cancelled`] when `progress.cancelled()`; [`TrainError::Invalid`] for zero
/// batch sizes; tensor errors.
pub fn train_loop(
    model: &Qwen2Model,
    data: &PackedData,
    ads: &Adapters,
    job: &JobSpec,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome, TrainError> {
    train_loop_from(model, data, ads, job, None, progress)
}

/// [`train_loop`], optionally continuing from a checkpoint of the same job (already
/// [`Checkpoint::check`]ed against `job` and `ads`): the adapters and AdamW state are restored
/// and the loop continues at the checkpoint's micro-batch, emitting only the points after it.
/// With `train.checkpoint_every = N > 0`, a checkpoint is handed to [`Progress::checkpoint`]
/// after every N-th optimizer step.
///
/// On CPU the continued run is bit-identical to an uninterrupted one: the shuffle order and the
/// dropout masks are functions of (seed, epoch) and (seed, micro-batch, layer, module), and the
/// state restored is all the state there is. On a GPU the dropout masks come from the device
/// RNG, which is re-seeded from (seed, micro-batch) before every forward, so the same holds on
/// the same device.
///
/// # Errors
/// As [`train_loop`].
pub fn train_loop_from(
    model: &Qwen2Model,
    data: &PackedData,
    ads: &Adapters,
    job: &JobSpec,
    resume: Option<&Checkpoint>,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome, TrainError> {
    let t = &job.train;
    if t.micro_batch == 0 || t.grad_accum == 0 || t.eval_every == 0 {
        return Err(TrainError::Invalid("micro_batch, grad_accum and eval_every must be positive".into()));
    }
    let start = Instant::now();
    let n_micro = data.train.len().div_ceil(t.micro_batch) as u64;
    let sched = LinearSchedule::new(job.lr, n_micro, t.epochs as u64, t.grad_accum as u64, t.warmup_ratio);
    let max_steps = t.max_steps.unwrap_or(u64::MAX);
    progress.total_steps(sched.total.min(max_steps));
    let vars = ads.vars();
    let mut opt = AdamW::new(vars.clone(), AdamWConfig { weight_decay: t.weight_decay, ..AdamWConfig::default() })?;
    let mut accum = GradAccum::new(&vars)?;
    let mut group_losses: Vec<f64> = Vec::with_capacity(t.grad_accum);
    let (mut opt_step, mut tokens, mut diverged) = (0u64, 0u64, false);
    let mut diverged_at = None;
    // The first loss over the threshold, with the step it was seen at.
    let mut watch = |loss: f64, step: u64, diverged: &mut bool| {
        if diverges(loss, t.divergence_threshold) {
            if !*diverged {
                diverged_at = Some((step, loss));
            }
            *diverged = true;
        }
    };
    // (opt_step at which it ran, loss) of the latest eval.
    let mut last_eval: Option<(u64, f64)> = None;
    let mut global = 0u64;
    // Position of the first micro-batch to run: (epoch, index in the epoch).
    let (mut first_epoch, mut first_micro) = (0usize, 0usize);
    if let Some(ck) = resume {
        ck.restore(ads, &mut opt)?;
        let s = &ck.state;
        (opt_step, tokens, diverged, global) = (s.opt_step, s.tokens, s.diverged, s.global);
        last_eval = ck.last_eval();
        (first_epoch, first_micro) = (s.epoch, s.micro);
        tracing::info!(step = opt_step, epoch = s.epoch, micro = s.micro, "resuming from checkpoint");
    }
    let eval = |at: u64, progress: &mut dyn Progress| -> Result<f64, TrainError> {
        let loss = eval_loss(model, Some(ads), &data.eval, t.micro_batch)?;
        tracing::debug!(step = at, loss, "eval");
        progress.point(LossPoint { series: Series::Eval, step: at, loss });
        Ok(loss)
    };
    'epochs: for epoch in first_epoch..t.epochs {
        let order = epoch_order(data.train.len(), job.seed, epoch, job.data.shuffle);
        let skip = if epoch == first_epoch { first_micro } else { 0 };
        for (i, idx) in order.chunks(t.micro_batch).enumerate().skip(skip) {
            if progress.cancelled() {
                return Err(TrainError::Cancelled);
            }
            let fresh = last_eval.is_some_and(|(s, _)| s == opt_step);
            if (i as u64).is_multiple_of(t.eval_every) && !(i == 0 && epoch > 0 && fresh) {
                let loss = eval(global, progress)?;
                last_eval = Some((opt_step, loss));
                watch(loss, opt_step, &mut diverged);
            }
            if opt_step >= max_steps || (diverged && t.early_stop_on_divergence) {
                break 'epochs;
            }
            let ids = batch(&data.train, idx, model.device())?;
            let dropout = (ads.dropout > 0.0).then_some(DropoutKey { seed: job.seed, micro_step: global });
            if dropout.is_some() && !model.device().is_cpu() {
                // GPU dropout masks come from the device RNG (see `Adapters::dropout_mask`);
                // seeding it per micro-batch makes them a function of (seed, micro-batch), so a
                // resumed run draws the masks an uninterrupted one would.
                let key = super::rng::splitmix64(job.seed ^ super::rng::splitmix64(global));
                model.device().set_seed(key)?;
            }
            let (loss, _) = model.loss(&ids, Some(ads), dropout)?;
            let loss_val = loss.to_scalar::<f32>()? as f64;
            let grads = (loss / t.grad_accum as f64)?.backward()?;
            accum.add(&vars, &grads)?;
            drop(grads);
            group_losses.push(loss_val);
            tokens += ids.elem_count() as u64;
            progress.tokens(ids.elem_count() as u64);
            global += 1;
            if (i + 1) % t.grad_accum == 0 {
                let mut g = std::mem::take(&mut accum.sums);
                let norm = clip_grad_norm(&mut g, t.max_grad_norm)?;
                let lr = sched.lr(opt_step);
                opt.step(&g, lr)?;
                accum = GradAccum::new(&vars)?;
                opt_step += 1;
                let mean = group_losses.iter().sum::<f64>() / group_losses.len() as f64;
                group_losses.clear();
                tracing::debug!(step = opt_step, loss = mean, lr, grad_norm = norm, "train");
                progress.point(LossPoint { series: Series::Train, step: opt_step, loss: mean });
                watch(mean, opt_step, &mut diverged);
                // Asked once per step: the answer may change between two reads.
                let stop = progress.stop_requested();
                let periodic = t.checkpoint_every > 0 && opt_step.is_multiple_of(t.checkpoint_every);
                if periodic || stop {
                    // The next micro-batch is i + 1 of this epoch, or the next epoch's first.
                    let (epoch_next, micro_next) =
                        if i + 1 == n_micro as usize { (epoch + 1, 0) } else { (epoch, i + 1) };
                    let state = LoopState {
                        opt_step,
                        adam_step: opt.step,
                        epoch: epoch_next,
                        micro: micro_next,
                        global,
                        tokens,
                        last_eval: last_eval.map(|(s, l)| (s, l.to_bits())),
                        diverged,
                    };
                    let t0 = Instant::now();
                    let bytes = Checkpoint::capture(job, state, ads, &opt)?.to_bytes()?;
                    tracing::debug!(
                        step = opt_step,
                        bytes = bytes.len(),
                        seconds = t0.elapsed().as_secs_f64(),
                        "checkpoint"
                    );
                    progress.checkpoint(opt_step, bytes);
                }
                if stop {
                    tracing::info!(step = opt_step, "stopping at a step boundary after a checkpoint (shutdown)");
                    return Err(TrainError::Cancelled);
                }
            }
        }
        // Trailing micro-batches of the epoch are never stepped.
        accum.clear()?;
        group_losses.clear();
    }
    if progress.cancelled() {
        return Err(TrainError::Cancelled);
    }
    let final_eval_loss = match last_eval {
        Some((s, loss)) if s == opt_step => loss,
        _ => eval(global, progress)?,
    };
    watch(final_eval_loss, opt_step, &mut diverged);
    Ok(TrainOutcome {
        final_eval_loss: Some(final_eval_loss),
        diverged,
        diverged_at,
        tokens,
        seconds: start.elapsed().as_secs_f64(),
    })
}
