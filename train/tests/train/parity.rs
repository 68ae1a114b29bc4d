//! Parity of the candle trainer with transformers + PEFT (f32, CPU) on the committed tiny
//! fixture: logits, base eval loss, LoRA gradients of one micro-batch, and a whole training
//! curve from a fixed adapter. Goldens: `tests/reference/goldens.json`, written by
//! `tests/reference/make_goldens.py` (see `tests/reference/README.md`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use lorasweep_common::job::{DataSpec, LoraSpec, ModelSpec, TrainSpec};
use lorasweep_common::{JobSpec, LoraInit, LossPoint, Series};
use lorasweep_train::Progress;
use lorasweep_train::adapter;
use lorasweep_train::data::PackedData;
use lorasweep_train::lora::peft_prefix;
use lorasweep_train::model::Qwen2Model;
use lorasweep_train::run::{eval_loss, train_loop};
use serde_json::Value;

/// Loss tolerance (relative), as the issue asks for f32.
const LOSS_RTOL: f64 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn goldens() -> anyhow::Result<Value> {
    let path = root().join("tests/reference/goldens.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

fn blocks(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .expect("list of blocks")
        .iter()
        .map(|b| b.as_array().expect("block").iter().map(|x| x.as_u64().expect("id") as u32).collect())
        .collect()
}

fn matrix(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("rows")
        .iter()
        .flat_map(|r| r.as_array().expect("row").iter().map(|x| x.as_f64().expect("float")))
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn model() -> anyhow::Result<Qwen2Model> {
    Ok(Qwen2Model::load(&root().join("tests/fixtures/tiny-qwen2"), DType::F32, &Device::Cpu)?)
}

fn spec(g: &Value) -> LoraSpec {
    let s = &g["settings"];
    LoraSpec {
        r: s["r"].as_u64().expect("r") as usize,
        alpha: s["alpha"].as_f64().expect("alpha"),
        dropout: s["dropout"].as_f64().expect("dropout"),
        targets: s["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .map(|t| t.as_str().expect("name").to_string())
            .collect(),
    }
}

fn data(g: &Value) -> PackedData {
    PackedData { train: blocks(&g["packing"]["train"]), eval: blocks(&g["packing"]["eval"]) }
}

/// Worst `max |ours − theirs| / max |theirs|` over the named tensors.
fn worst_tensor_error(ours: &HashMap<String, Vec<f64>>, theirs: &Value) -> anyhow::Result<f64> {
    let theirs = theirs.as_object().context("tensor map")?;
    assert_eq!(ours.len(), theirs.len(), "tensor count");
    let mut worst: f64 = 0.0;
    for (name, t) in theirs {
        let want = matrix(t);
        let got = ours.get(name).with_context(|| format!("missing {name}"))?;
        assert_eq!(got.len(), want.len(), "{name}");
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(err / scale);
    }
    Ok(worst)
}

#[test]
fn base_logits_and_eval_loss_match_transformers() -> anyhow::Result<()> {
    let g = goldens()?;
    let m = model()?;
    let d = data(&g);
    let gl = &g["base_logits"];
    let block = gl["block"].as_u64().context("block")? as usize;
    let ids = Tensor::new(d.eval[block].as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let logits = m.logits(&ids, None, None)?.get(0)?;
    let mut worst: f64 = 0.0;
    for (k, pos) in gl["positions"].as_array().context("positions")?.iter().enumerate() {
        let row: Vec<f32> = logits.get(pos.as_u64().context("pos")? as usize)?.to_vec1()?;
        let want: Vec<f64> =
            gl["rows"][k].as_array().context("row")?.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect();
        for (a, b) in row.iter().zip(&want) {
            worst = worst.max((*a as f64 - b).abs());
        }
    }
    assert!(worst < 1e-5, "max |Δlogit| {worst:e}");

    for (k, want) in g["base_block_losses"].as_array().context("block losses")?.iter().enumerate() {
        let got = eval_loss(&m, None, &d.eval[k..k + 1], 1)?;
        assert!(rel(got, want.as_f64().context("loss")?) < LOSS_RTOL, "block {k}: {got} vs {want}");
    }
    let want = g["base_eval_loss"].as_f64().context("base_eval_loss")?;
    let got = eval_loss(&m, None, &d.eval, g["settings"]["eval_batch"].as_u64().context("eval_batch")? as usize)?;
    eprintln!("base eval loss: ours {got:.7}, transformers {want:.7}, rel {:.2e}", rel(got, want));
    assert!(rel(got, want) < LOSS_RTOL);
    Ok(())
}

#[test]
fn first_micro_batch_lora_gradients_match_peft() -> anyhow::Result<()> {
    let g = goldens()?;
    let m = model()?;
    let d = data(&g);
    let spec = spec(&g);
    let ads = adapter::load(&root().join("tests/fixtures/parity-adapter"), &spec, &m.cfg, &Device::Cpu)?;
    let fm = &g["first_micro_batch"];
    let idx: Vec<usize> =
        fm["blocks"].as_array().context("blocks")?.iter().map(|x| x.as_u64().unwrap_or(0) as usize).collect();
    let flat: Vec<u32> = idx.iter().flat_map(|&k| d.train[k].iter().copied()).collect();
    let ids = Tensor::from_vec(flat, (idx.len(), d.train[0].len()), &Device::Cpu)?;
    let (loss, _) = m.loss(&ids, Some(&ads), None)?;
    let got = loss.to_scalar::<f32>()? as f64;
    let want = fm["loss"].as_f64().context("loss")?;
    assert!(rel(got, want) < LOSS_RTOL, "{got} vs {want}");
    let grads = loss.backward()?;
    let mut ours = HashMap::new();
    for ad in &ads.list {
        let p = peft_prefix(ad.layer, ad.module);
        for (part, var) in [("lora_A", &ad.a), ("lora_B", &ad.b)] {
            let gr = grads.get(var).with_context(|| format!("no grad for {p}.{part}"))?;
            let v: Vec<f32> = gr.flatten_all()?.to_vec1()?;
            ours.insert(format!("{p}.{part}.weight"), v.into_iter().map(f64::from).collect::<Vec<_>>());
        }
    }
    let worst = worst_tensor_error(&ours, &fm["grads"])?;
    eprintln!("first micro-batch: loss rel {:.2e}, worst grad error (rel. to tensor max) {worst:.2e}", rel(got, want));
    assert!(worst < 1e-4, "gradient error {worst:e}");
    Ok(())
}

#[derive(Default)]
struct Recorder(Vec<LossPoint>);

impl Progress for Recorder {
    fn total_steps(&mut self, _steps: u64) {}
    fn point(&mut self, point: LossPoint) {
        self.0.push(point);
    }
    fn cancelled(&self) -> bool {
        false
    }
}

#[test]
fn training_curve_and_final_adapter_match_peft() -> anyhow::Result<()> {
    let g = goldens()?;
    let s = &g["settings"];
    let m = model()?;
    let d = data(&g);
    let lora = spec(&g);
    let ads = adapter::load(&root().join("tests/fixtures/parity-adapter"), &lora, &m.cfg, &Device::Cpu)?;
    let u = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("settings.{k}"));
    let f = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("settings.{k}"));
    let job = JobSpec {
        model: ModelSpec { path: "tiny-qwen2".into(), dtype: "f32".into() },
        data: DataSpec { path: "tiny-data".into(), max_length: u("max_length") as usize, shuffle: false },
        lora,
        train: TrainSpec {
            micro_batch: u("micro_batch") as usize,
            grad_accum: u("grad_accum") as usize,
            epochs: u("epochs") as usize,
            max_steps: None,
            eval_every: u("eval_every"),
            weight_decay: f("weight_decay"),
            warmup_ratio: f("warmup_ratio"),
            max_grad_norm: f("max_grad_norm"),
            checkpoint_every: 0,
            // The tiny random model sits at ~ln(512) = 6.24, above the study's threshold of 6.
            divergence_threshold: 100.0,
            early_stop_on_divergence: false,
        },
        init: LoraInit::Standard,
        lr: f("lr"),
        seed: 0,
    };
    let mut rec = Recorder::default();
    let out = train_loop(&m, &d, &ads, &job, &mut rec)?;
    let curve = &g["curve"];
    for (series, key) in [(Series::Train, "train"), (Series::Eval, "eval")] {
        let ours: Vec<(u64, f64)> = rec.0.iter().filter(|p| p.series == series).map(|p| (p.step, p.loss)).collect();
        let want: Vec<(u64, f64)> = curve[key]
            .as_array()
            .context("curve")?
            .iter()
            .map(|p| (p[0].as_u64().unwrap_or(0), p[1].as_f64().unwrap_or(f64::NAN)))
            .collect();
        assert_eq!(
            ours.iter().map(|p| p.0).collect::<Vec<_>>(),
            want.iter().map(|p| p.0).collect::<Vec<_>>(),
            "{key} steps"
        );
        let worst = ours.iter().zip(&want).map(|(a, b)| rel(a.1, b.1)).fold(0f64, f64::max);
        eprintln!("{key} curve: {} points, worst relative loss error {worst:.2e}", ours.len());
        assert!(worst < LOSS_RTOL, "{key}: {ours:?} vs {want:?}");
    }
    let final_want =
        curve["eval"].as_array().and_then(|e| e.last()).and_then(|p| p[1].as_f64()).context("final eval")?;
    assert!(rel(out.final_eval_loss.context("final eval")?, final_want) < LOSS_RTOL);

    let mut ours = HashMap::new();
    for ad in &ads.list {
        let p = peft_prefix(ad.layer, ad.module);
        ours.insert(
            format!("{p}.lora_A.weight"),
            ad.a.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect(),
        );
        ours.insert(
            format!("{p}.lora_B.weight"),
            ad.b.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect(),
        );
    }
    let worst = worst_tensor_error(&ours, &g["final_adapter"])?;
    eprintln!("final adapter: worst error (rel. to tensor max) {worst:.2e}");
    assert!(worst < 1e-5, "final adapter error {worst:e}");
    Ok(())
}

#[test]
fn train_local_from_files_reproduces_the_golden_curve_and_saves_the_adapter() -> anyhow::Result<()> {
    use lorasweep_train::{CandleTrainer, LocalOpts, train_local};
    let g = goldens()?;
    let s = &g["settings"];
    let u = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("settings.{k}"));
    let out_dir = tempfile::tempdir()?;
    let job = JobSpec {
        model: ModelSpec { path: root().join("tests/fixtures/tiny-qwen2").display().to_string(), dtype: "f32".into() },
        data: DataSpec {
            path: root().join("tests/fixtures/tiny-data").display().to_string(),
            max_length: u("max_length") as usize,
            shuffle: false,
        },
        lora: spec(&g),
        train: TrainSpec {
            micro_batch: u("micro_batch") as usize,
            grad_accum: u("grad_accum") as usize,
            eval_every: u("eval_every"),
            divergence_threshold: 100.0,
            ..TrainSpec::default()
        },
        init: LoraInit::Standard,
        lr: s["lr"].as_f64().context("lr")?,
        seed: 0,
    };
    let opts = LocalOpts {
        device: "cpu".into(),
        init_from_adapter: Some(root().join("tests/fixtures/parity-adapter")),
        save_adapter: Some(out_dir.path().join("adapter")),
    };
    let mut rec = Recorder::default();
    let out = train_local(&job, &opts, &mut rec)?;
    let want = g["curve"]["eval"].as_array().and_then(|e| e.last()).and_then(|p| p[1].as_f64()).context("final")?;
    assert!(rel(out.final_eval_loss.context("final")?, want) < LOSS_RTOL);
    assert_eq!(rec.0.iter().filter(|p| p.series == Series::Train).count(), 22);

    // The saved adapter is the golden final adapter.
    let saved = candle_core::safetensors::load(out_dir.path().join("adapter/adapter_model.safetensors"), &Device::Cpu)?;
    let ours: HashMap<String, Vec<f64>> = saved
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect())))
        .collect::<anyhow::Result<_>>()?;
    assert!(worst_tensor_error(&ours, &g["final_adapter"])? < 1e-5);

    // A second job on the same trainer reuses the resident model and data and is unaffected by
    // the first: a standard init with max_steps 0 evaluates the base model exactly (B = 0).
    let mut trainer = CandleTrainer::new("cpu")?;
    let mut job0 = job.clone();
    job0.train.max_steps = Some(2);
    trainer.run_job(&job0, None, None, &mut Recorder::default())?;
    job0.train.max_steps = Some(0);
    let out0 = trainer.run_job(&job0, None, None, &mut Recorder::default())?;
    let base = g["base_eval_loss"].as_f64().context("base")?;
    assert!(rel(out0.final_eval_loss.context("eval")?, base) < LOSS_RTOL);
    Ok(())
}

#[test]
fn a_wrong_model_dir_names_the_missing_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let err = Qwen2Model::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::copy(root().join("tests/fixtures/tiny-qwen2/config.json"), dir.path().join("config.json"))?;
    let err = Qwen2Model::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    Ok(())
}

/// The study's step-0 check on the real model (ml-spec §1.6: base eval loss ≈ 2.381 on the
/// no_robots test split). Needs the real checkpoint and data, so it only runs when asked:
/// `LORASWEEP_REAL_MODEL=<dir or hub id in the HF cache> LORASWEEP_REAL_DATA=<dir or hub id>
/// [LORASWEEP_DEVICE=cuda:0] [LORASWEEP_DTYPE=bf16] cargo test -p lorasweep-worker --test parity
/// -- --ignored real_model` (about 140 blocks × 1024 tokens of 1.5B forward: minutes on a GPU,
/// far too slow on 2 CPU cores).
#[test]
#[ignore = "needs the real Qwen2.5-1.5B-Instruct checkpoint and no_robots; see the doc comment"]
fn real_model_step0_eval_loss_matches_the_study() -> anyhow::Result<()> {
    use lorasweep_train::CandleTrainer;
    let (Ok(model), Ok(data)) = (std::env::var("LORASWEEP_REAL_MODEL"), std::env::var("LORASWEEP_REAL_DATA")) else {
        anyhow::bail!("set LORASWEEP_REAL_MODEL and LORASWEEP_REAL_DATA");
    };
    let device = std::env::var("LORASWEEP_DEVICE").unwrap_or_else(|_| "cpu".into());
    let dtype = std::env::var("LORASWEEP_DTYPE").unwrap_or_else(|_| "bf16".into());
    let job = JobSpec {
        model: ModelSpec { path: model, dtype },
        data: DataSpec { path: data, ..DataSpec::default() },
        lora: LoraSpec::default(),
        train: TrainSpec { max_steps: Some(0), ..TrainSpec::default() },
        init: LoraInit::Standard, // B = 0: the adapter does not change the base model
        lr: 1e-3,
        seed: 42,
    };
    let out = CandleTrainer::new(&device)?.run_job(&job, None, None, &mut Recorder::default())?;
    let loss = out.final_eval_loss.context("eval")?;
    eprintln!("step-0 eval loss {loss:.4} (study ≈ 2.381 with a 4-bit base)");
    assert!((loss - 2.381).abs() < 0.03, "{loss}");
    Ok(())
}
