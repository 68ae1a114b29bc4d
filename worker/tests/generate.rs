//! `lorasweep generate`'s core: the adapter merged into the base weights gives candle-transformers'
//! inference model the trainer's logits, and KV-cached sampling picks the same tokens as
//! recomputing the whole sequence every step.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use lorasweep_worker::train::adapter;
use lorasweep_worker::train::generate::{
    GenerateOpts, adapter_spec, generate, inference_model, merged_weights, read_config, sample,
};
use lorasweep_worker::train::model::Qwen2Model;

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
