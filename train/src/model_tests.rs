//! Tests of the whole training model and loop on tiny random Qwen2 shapes: finite-difference
//! LoRA gradients in f64, no frozen-weight gradients, logits against candle-transformers'
//! inference model, and the loop's cadence, cancellation and divergence handling.

use candle_core::{DType, Device, Tensor, Var};
use lorasweep_common::job::{DataSpec, LoraSpec, ModelSpec, TrainSpec};
use lorasweep_common::{JobSpec, LoraInit, LossPoint, Series};

use super::bench::random_weights;
use super::data::PackedData;
use lorasweep_common::Projection;

use super::lora::{Adapter, Adapters};
use super::model::{Qwen2Config, Qwen2Model};
use super::run::train_loop;
use crate::{TrainError, trainer::Progress};

fn tiny_cfg() -> Qwen2Config {
    Qwen2Config {
        vocab_size: 32,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        tie_word_embeddings: true,
        max_position_embeddings: 64,
    }
}

fn all_targets(r: usize) -> LoraSpec {
    LoraSpec {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        targets: Projection::NAMES.iter().map(|s| s.to_string()).collect(),
    }
}

fn ids(b: usize, t: usize, vocab: u32, dev: &Device) -> Tensor {
    let v: Vec<u32> = (0..b * t).map(|k| ((k * 7 + k / 3) as u32) % vocab).collect();
    Tensor::from_vec(v, (b, t), dev).expect("shape matches")
}

#[test]
fn lora_grads_of_the_whole_model_match_finite_differences_in_f64() -> anyhow::Result<()> {
    let cfg = tiny_cfg();
    let dev = Device::Cpu;
    let model = Qwen2Model::from_tensors(&cfg, random_weights(&cfg, 3)?, DType::F64, &dev)?;
    let spec = all_targets(2);
    let f32_ads = Adapters::init(&spec, LoraInit::OrthoQrConst, 1, 2, &|m| cfg.proj_dims(m), &dev)?;
    // The same adapters as f64 Vars, so the finite differences are not drowned by f32 rounding.
    let list = f32_ads
        .list
        .iter()
        .map(|a| -> anyhow::Result<Adapter> {
            Ok(Adapter {
                layer: a.layer,
                module: a.module,
                a: Var::from_tensor(&a.a.to_dtype(DType::F64)?)?,
                b: Var::from_tensor(&a.b.to_dtype(DType::F64)?)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ads = Adapters::from_list(&spec, 2, list)?;
    let x = ids(2, 6, 32, &dev);
    let loss = || -> anyhow::Result<f64> { Ok(model.loss(&x, Some(&ads), None)?.0.to_scalar::<f64>()?) };
    let grads = model.loss(&x, Some(&ads), None)?.0.backward()?;
    // Step chosen where truncation (O(h²)) and f64 round-off of the loss sum (~1e-14/h) are
    // both far below the tolerance; at h = 1e-6 round-off alone reaches ~1e-5 of max|g|.
    let h = 1e-4;
    let mut worst: f64 = 0.0;
    let mut checked = 0;
    for var in ads.vars() {
        let g: Vec<f64> = grads.get(&var).ok_or_else(|| anyhow::anyhow!("missing grad"))?.flatten_all()?.to_vec1()?;
        let base: Vec<f64> = var.flatten_all()?.to_vec1()?;
        let shape = var.shape().clone();
        let gmax = g.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(gmax > 0.0, "a LoRA tensor got an all-zero gradient");
        for i in (0..base.len()).step_by(7) {
            let mut p = base.clone();
            p[i] += h;
            var.set(&Tensor::from_vec(p.clone(), &shape, &dev)?)?;
            let lp = loss()?;
            p[i] -= 2.0 * h;
            var.set(&Tensor::from_vec(p, &shape, &dev)?)?;
            let lm = loss()?;
            var.set(&Tensor::from_vec(base.clone(), &shape, &dev)?)?;
            let fd = (lp - lm) / (2.0 * h);
            worst = worst.max((fd - g[i]).abs() / gmax);
            checked += 1;
        }
    }
    assert!(checked > 100);
    eprintln!("finite differences: {checked} LoRA entries, worst error {worst:.2e} (relative to max |g| per tensor)");
    assert!(worst < 1e-6, "worst relative gradient error {worst:e}");
    Ok(())
}

#[test]
fn only_adapters_receive_gradients() -> anyhow::Result<()> {
    let cfg = tiny_cfg();
    let dev = Device::Cpu;
    let model = Qwen2Model::from_tensors(&cfg, random_weights(&cfg, 4)?, DType::F32, &dev)?;
    let spec = all_targets(4);
    let ads = Adapters::init(&spec, LoraInit::OrthoQrMatch, 1, 2, &|m| cfg.proj_dims(m), &dev)?;
    // 1 × 11 tokens: 10 label rows, so no activation is shaped like a weight matrix.
    let grads = model.loss(&ids(1, 11, 32, &dev), Some(&ads), None)?.0.backward()?;
    for v in ads.vars() {
        assert!(grads.get(&v).is_some());
    }
    let mut weight_shapes: Vec<Vec<usize>> = Projection::ALL
        .into_iter()
        .map(|m| {
            let (i, o) = cfg.proj_dims(m);
            vec![o, i]
        })
        .collect();
    weight_shapes.push(vec![cfg.vocab_size, cfg.hidden_size]);
    for id in grads.get_ids() {
        let t = grads.get_id(*id).expect("listed id");
        assert!(!weight_shapes.contains(&t.dims().to_vec()), "frozen-weight-shaped gradient {:?}", t.dims());
    }
    Ok(())
}

#[test]
fn logits_match_candle_transformers_inference_model() -> anyhow::Result<()> {
    let cfg = tiny_cfg();
    let dev = Device::Cpu;
    let ts = random_weights(&cfg, 5)?;
    let ours = Qwen2Model::from_tensors(&cfg, ts.clone(), DType::F32, &dev)?;
    // The inference model `lorasweep generate` uses: candle-transformers' qwen2 on the same weights.
    let mut reference = crate::generate::inference_model(&cfg, ts, DType::F32, &dev)?;
    let x = ids(1, 9, 32, &dev);
    let want = reference.forward(&x, 0)?.flatten_all()?;
    let got = ours.logits(&x, None, None)?.get(0)?.get(8)?;
    let diff = (want.clone() - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
    eprintln!("vs candle-transformers qwen2: max |Δlogit| {diff:.2e} (max |logit| {scale:.3})");
    assert!(diff <= 1e-5 * scale.max(1.0), "max |Δlogit| {diff:e} (max |logit| {scale})");
    Ok(())
}

/// Records every point; cancels after `cancel_after` points when set.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) points: Vec<LossPoint>,
    pub(crate) total: Option<u64>,
    pub(crate) cancel_after: Option<usize>,
}

impl Progress for Recorder {
    fn total_steps(&mut self, steps: u64) {
        self.total = Some(steps);
    }
    fn point(&mut self, point: LossPoint) {
        self.points.push(point);
    }
    fn cancelled(&self) -> bool {
        self.cancel_after.is_some_and(|n| self.points.len() >= n)
    }
}

impl Recorder {
    pub(crate) fn series(&self, s: Series) -> Vec<(u64, f64)> {
        self.points.iter().filter(|p| p.series == s).map(|p| (p.step, p.loss)).collect()
    }
}

/// Periodic sequences the adapters can learn, split into train/eval blocks.
fn periodic_data(n_train: usize, n_eval: usize, t: usize) -> PackedData {
    let block = |k: usize| (0..t).map(|j| ((j * 5 + k) % 17) as u32).collect::<Vec<u32>>();
    PackedData { train: (0..n_train).map(block).collect(), eval: (0..n_eval).map(|k| block(k + 3)).collect() }
}

fn tiny_job(lr: f64) -> JobSpec {
    JobSpec {
        model: ModelSpec { path: "mem".into(), dtype: "f32".into() },
        data: DataSpec { path: "mem".into(), max_length: 16, shuffle: true },
        lora: LoraSpec { dropout: 0.05, ..LoraSpec::default() },
        train: TrainSpec {
            micro_batch: 2,
            grad_accum: 2,
            eval_every: 4,
            warmup_ratio: 0.1,
            divergence_threshold: 50.0,
            ..TrainSpec::default()
        },
        init: LoraInit::Standard,
        lr,
        seed: 42,
    }
}

fn setup(job: &JobSpec) -> anyhow::Result<(Qwen2Model, Adapters)> {
    let cfg = tiny_cfg();
    let dev = Device::Cpu;
    let model = Qwen2Model::from_tensors(&cfg, random_weights(&cfg, 6)?, DType::F32, &dev)?;
    let ads = Adapters::init(&job.lora, job.init, job.seed, 2, &|m| cfg.proj_dims(m), &dev)?;
    Ok((model, ads))
}

#[test]
fn loop_learns_and_follows_the_study_cadence() -> anyhow::Result<()> {
    let job = tiny_job(1e-2);
    let (model, ads) = setup(&job)?;
    let data = periodic_data(19, 3, 16); // 10 micro-batches: 5 steps, none trailing
    let mut rec = Recorder::default();
    let out = train_loop(&model, &data, &ads, &job, &mut rec)?;
    let train = rec.series(Series::Train);
    let eval = rec.series(Series::Eval);
    assert_eq!(rec.total, Some(5));
    assert_eq!(train.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(eval.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 4, 8, 10]);
    assert_eq!(out.final_eval_loss, Some(eval[3].1));
    assert!(eval[3].1 < eval[0].1 - 0.05, "eval did not improve: {eval:?}");
    assert_eq!(out.tokens, 19 * 16);
    assert!(!out.diverged);
    // Deterministic: same job, same curve (dropout and shuffle are seeded).
    let (model2, ads2) = setup(&job)?;
    let mut rec2 = Recorder::default();
    train_loop(&model2, &data, &ads2, &job, &mut rec2)?;
    assert_eq!(rec.points, rec2.points);
    Ok(())
}

#[test]
fn max_steps_zero_evaluates_once_and_leaves_adapters_untouched() -> anyhow::Result<()> {
    let mut job = tiny_job(1e-2);
    job.train.max_steps = Some(0);
    let (model, ads) = setup(&job)?;
    let before: Vec<f32> = ads.list[0].a.flatten_all()?.to_vec1()?;
    let mut rec = Recorder::default();
    let out = train_loop(&model, &periodic_data(8, 2, 16), &ads, &job, &mut rec)?;
    assert_eq!(rec.points.len(), 1);
    assert_eq!(rec.points[0].step, 0);
    assert_eq!(out.tokens, 0);
    assert_eq!(before, ads.list[0].a.flatten_all()?.to_vec1::<f32>()?);
    Ok(())
}

#[test]
fn zero_sizes_are_refused() -> anyhow::Result<()> {
    let (model, ads) = setup(&tiny_job(1e-2))?;
    for edit in [|j: &mut JobSpec| j.train.micro_batch = 0, |j: &mut JobSpec| j.train.grad_accum = 0] {
        let mut job = tiny_job(1e-2);
        edit(&mut job);
        let err = train_loop(&model, &periodic_data(4, 2, 16), &ads, &job, &mut Recorder::default()).unwrap_err();
        assert!(matches!(err, TrainError::Invalid(_)), "{err}");
    }
    Ok(())
}

#[test]
fn cancellation_stops_the_loop() -> anyhow::Result<()> {
    let job = tiny_job(1e-2);
    let (model, ads) = setup(&job)?;
    let mut rec = Recorder { cancel_after: Some(2), ..Recorder::default() };
    let err = train_loop(&model, &periodic_data(19, 2, 16), &ads, &job, &mut rec).unwrap_err();
    assert!(matches!(err, TrainError::Cancelled));
    assert_eq!(rec.points.len(), 2);
    Ok(())
}

#[test]
fn divergence_is_flagged_and_can_stop_early() -> anyhow::Result<()> {
    let mut job = tiny_job(1e-2);
    job.train.divergence_threshold = 0.5; // any real loss on a 32-token vocab exceeds it
    job.train.early_stop_on_divergence = true;
    let (model, ads) = setup(&job)?;
    let mut rec = Recorder::default();
    let out = train_loop(&model, &periodic_data(19, 2, 16), &ads, &job, &mut rec)?;
    assert!(out.diverged);
    assert!(rec.series(Series::Train).is_empty(), "should stop right after the first eval");
    Ok(())
}

#[test]
fn bf16_base_tracks_f32_and_keeps_f32_adapter_gradients() -> anyhow::Result<()> {
    let cfg = tiny_cfg();
    let dev = Device::Cpu;
    let ts = random_weights(&cfg, 7)?;
    let m32 = Qwen2Model::from_tensors(&cfg, ts.clone(), DType::F32, &dev)?;
    let m16 = Qwen2Model::from_tensors(&cfg, ts, DType::BF16, &dev)?;
    let spec = all_targets(4);
    let ads = Adapters::init(&spec, LoraInit::OrthoQrMatch, 1, 2, &|m| cfg.proj_dims(m), &dev)?;
    let x = ids(2, 12, 32, &dev);
    let l32 = m32.loss(&x, Some(&ads), None)?.0;
    let (l16, _) = m16.loss(&x, Some(&ads), None)?;
    assert_eq!(l16.dtype(), DType::F32);
    let (a, b) = (l32.to_scalar::<f32>()?, l16.to_scalar::<f32>()?);
    assert!((a - b).abs() / a < 1e-2, "f32 {a} vs bf16 {b}");
    let logits = m16.logits(&x, Some(&ads), None)?;
    assert_eq!(logits.dtype(), DType::BF16);
    let g32 = l32.backward()?;
    let g16 = l16.backward()?;
    for v in ads.vars() {
        let (p, q) = (g32.get(&v).expect("f32 grad"), g16.get(&v).expect("bf16 grad"));
        assert_eq!(q.dtype(), DType::F32);
        let err = (p - q)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = p.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err <= 0.05 * scale, "bf16 gradient off by {err} (scale {scale})");
    }
    Ok(())
}

#[test]
fn loads_sharded_checkpoints_and_an_untied_head() -> anyhow::Result<()> {
    let cfg = tiny_cfg();
    let dev = Device::Cpu;
    let mut ts = random_weights(&cfg, 8)?;
    let head = Tensor::randn(0f32, 0.02, (cfg.vocab_size, cfg.hidden_size), &dev)?;
    ts.insert("lm_head.weight".into(), head.clone());
    let dir = tempfile::tempdir()?;
    let (mut s1, mut s2) = (std::collections::HashMap::new(), std::collections::HashMap::new());
    let mut map = serde_json::Map::new();
    for (k, v) in &ts {
        let (shard, file) = if k.contains("layers.1.") || k.starts_with("lm_head") {
            (&mut s2, "model-00002-of-00002.safetensors")
        } else {
            (&mut s1, "model-00001-of-00002.safetensors")
        };
        shard.insert(k.clone(), v.clone());
        map.insert(k.clone(), file.into());
    }
    candle_core::safetensors::save(&s1, dir.path().join("model-00001-of-00002.safetensors"))?;
    candle_core::safetensors::save(&s2, dir.path().join("model-00002-of-00002.safetensors"))?;
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::to_string(&serde_json::json!({"metadata": {}, "weight_map": map}))?,
    )?;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&serde_json::json!({
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
            "rms_norm_eps": cfg.rms_norm_eps, "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
            "tie_word_embeddings": false, "max_position_embeddings": 64
        }))?,
    )?;
    let loaded = Qwen2Model::load(dir.path(), DType::F32, &dev)?;
    assert_eq!(loaded.cfg.rope_theta, cfg.rope_theta, "rope_theta from rope_parameters");
    let x = ids(1, 7, 32, &dev);
    let logits = loaded.logits(&x, None, None)?;
    let want = loaded.hidden(&x, None, None)?.broadcast_matmul(&head.t()?)?;
    assert!((logits - want)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
    let mem = Qwen2Model::from_tensors(&cfg, ts, DType::F32, &dev)?;
    let d = (mem.logits(&x, None, None)? - loaded.logits(&x, None, None)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(d, 0.0);

    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors"))?;
    let err = Qwen2Model::load(dir.path(), DType::F32, &dev).unwrap_err().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    Ok(())
}

#[test]
fn eval_view_records_no_graph_but_gives_the_same_loss() -> anyhow::Result<()> {
    let cfg = tiny_cfg();
    let dev = Device::Cpu;
    let model = Qwen2Model::from_tensors(&cfg, random_weights(&cfg, 9)?, DType::F32, &dev)?;
    let ads = Adapters::init(&all_targets(4), LoraInit::OrthoQrConst, 1, 2, &|m| cfg.proj_dims(m), &dev)?;
    let x = ids(2, 9, 32, &dev);
    let (train_loss, _) = model.loss(&x, Some(&ads), None)?;
    let (eval_loss, _) = model.loss(&x, Some(&ads.for_eval()), None)?;
    assert_eq!(train_loss.to_scalar::<f32>()?, eval_loss.to_scalar::<f32>()?);
    assert!(train_loss.backward()?.get(&ads.vars()[0]).is_some());
    assert!(eval_loss.backward()?.get(&ads.vars()[0]).is_none());
    Ok(())
}
