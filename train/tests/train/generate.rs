//! `lorasweep generate`'s core: the adapter merged into the base weights gives candle-transformers'
//! inference model the trainer's logits, and KV-cached sampling picks the same tokens as
//! recomputing the whole sequence every step.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use lorasweep_train::adapter;
use lorasweep_train::generate::{
    GenerateOpts, adapter_spec, generate, inference_model, merged_model, merged_weights, sample,
};
use lorasweep_train::model::{Qwen2Model, read_config};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn merged_adapter_logits_match_the_trainers_forward() -> anyhow::Result<()> {
    let (dev, model_dir, ad_dir) = (Device::Cpu, fixture("tiny-qwen2"), fixture("parity-adapter"));
    let cfg = read_config(&model_dir)?;
    let spec = adapter_spec(&ad_dir)?;
    let ads = adapter::load(&ad_dir, &spec, &cfg, &dev)?;
    let ours = Qwen2Model::load(&model_dir, DType::F32, &dev)?;
    let ids = Tensor::new(&[[5u32, 77, 301, 12, 9, 444, 3, 250, 18]], &dev)?;
    let want = ours.logits(&ids, Some(&ads), None)?.get(0)?.get(8)?;
    let base = ours.logits(&ids, None, None)?.get(0)?.get(8)?;
    let mut merged = inference_model(&cfg, merged_weights(&model_dir, Some(&ads), &dev)?, DType::F32, &dev)?;
    let got = merged.forward(&ids, 0)?.flatten_all()?;
    let diff = (&want - &got)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let effect = (&want - &base)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-4, "merged vs adapter forward: max |Δlogit| {diff}");
    assert!(effect > 100.0 * diff, "the adapter must change the logits ({effect}) far more than the merge error");
    Ok(())
}

#[test]
fn kv_cached_greedy_sampling_matches_full_recomputation() -> anyhow::Result<()> {
    let (dev, model_dir, ad_dir) = (Device::Cpu, fixture("tiny-qwen2"), fixture("parity-adapter"));
    let cfg = read_config(&model_dir)?;
    let ads = adapter::load(&ad_dir, &adapter_spec(&ad_dir)?, &cfg, &dev)?;
    let mut model = inference_model(&cfg, merged_weights(&model_dir, Some(&ads), &dev)?, DType::F32, &dev)?;
    let prompt = [5u32, 77, 301, 12];
    let opts = GenerateOpts { max_new_tokens: 12, ..GenerateOpts::default() };
    // EOS u32::MAX never comes: always 12 tokens.
    let cached = sample(&mut model, &prompt, u32::MAX, &opts, &dev)?;
    let mut seq = prompt.to_vec();
    for _ in 0..12 {
        model.clear_kv_cache();
        let logits = model.forward(&Tensor::new(seq.as_slice(), &dev)?.unsqueeze(0)?, 0)?.flatten_all()?;
        seq.push(logits.argmax(0)?.to_scalar::<u32>()?);
    }
    assert_eq!(cached, seq[prompt.len()..]);

    // The whole path from directories: deterministic, and sampling with a seed is repeatable.
    let text = generate(&model_dir, Some(&ad_dir), "hello there", DType::F32, &dev, &GenerateOpts::default())?;
    let again = generate(&model_dir, Some(&ad_dir), "hello there", DType::F32, &dev, &GenerateOpts::default())?;
    assert_eq!(text, again);
    let hot = GenerateOpts { temperature: 1.0, top_p: Some(0.9), seed: 4, max_new_tokens: 16 };
    let a = generate(&model_dir, None, "hello there", DType::F32, &dev, &hot)?;
    let b = generate(&model_dir, None, "hello there", DType::F32, &dev, &hot)?;
    assert_eq!(a, b);
    Ok(())
}

/// A transformers-5 `config.json` carries RoPE's θ only as `rope_parameters.rope_theta`. The
/// trainer read it there; `generate` had its own reader that fell back to θ = 10⁴ instead.
/// Now both read the config one way, and give the same logits on such a directory.
#[test]
fn a_rope_parameters_only_config_gives_generate_the_trainers_logits() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir()?;
    let src = fixture("tiny-qwen2");
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f))?;
    }
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json"))?)?;
    let obj = config.as_object_mut().ok_or_else(|| anyhow::anyhow!("config.json is not an object"))?;
    obj.remove("rope_theta");
    obj.insert("rope_parameters".into(), serde_json::json!({"rope_theta": 1_000_000.0, "rope_type": "default"}));
    std::fs::write(dir.path().join("config.json"), serde_json::to_string_pretty(&config)?)?;
    assert_eq!(read_config(dir.path())?.rope_theta, 1e6);

    let ids = Tensor::new(&[[5u32, 77, 301, 12, 9, 444, 3, 250, 18, 60, 7, 99]], &dev)?;
    let last = |t: Tensor| -> anyhow::Result<Tensor> { Ok(t.flatten_all()?) };
    let trainer = Qwen2Model::load(dir.path(), DType::F32, &dev)?.logits(&ids, None, None)?.get(0)?.get(11)?;
    let generated = last(merged_model(dir.path(), None, DType::F32, &dev)?.forward(&ids, 0)?)?;
    let diff = (&trainer - &generated)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-4, "generate vs trainer on a rope_parameters-only config: max |Δlogit| {diff}");

    // The test tells the two θ apart: the old fallback (10⁴) moves these logits far more.
    let mut cfg = read_config(dir.path())?;
    cfg.rope_theta = 10_000.0;
    let wrong =
        last(inference_model(&cfg, merged_weights(dir.path(), None, &dev)?, DType::F32, &dev)?.forward(&ids, 0)?)?;
    let moved = (&trainer - &wrong)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(moved > 100.0 * diff.max(1e-6), "θ = 10⁴ must give other logits ({moved} vs {diff})");
    Ok(())
}
