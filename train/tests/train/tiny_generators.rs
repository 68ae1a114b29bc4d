//! The tiny generators (`train::tiny`): the Rust data generator reproduces the committed
//! fixture rows that the Python reference generated, the Rust-trained tokenizer is the same kind
//! as the fixture's, and `write_model` / `write_data` produce a loadable checkpoint and data that
//! the pipeline packs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lorasweep_train::{
    data::{self, Split},
    tiny::{self, TinyModelConfig},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn goldens() -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(root().join("reference/goldens.json"))?)?)
}

fn fixture_rows() -> anyhow::Result<(Vec<data::Row>, Vec<data::Row>)> {
    let dir = root().join("fixtures/tiny-data");
    Ok((data::read_jsonl(&dir.join("train.jsonl"))?, data::read_jsonl(&dir.join("test.jsonl"))?))
}

#[test]
fn rust_generator_reproduces_the_python_fixture() -> anyhow::Result<()> {
    let g = goldens()?;
    let seed = g["data_seed"].as_u64().context("data_seed")?;
    let (train, test) = fixture_rows()?;
    let (gen_train, gen_test) = tiny::generate_rows(seed, train.len(), test.len());
    assert_eq!(gen_train, train);
    assert_eq!(gen_test, test);
    Ok(())
}

#[test]
fn rust_trained_tokenizer_matches_the_fixture_tokenizer() -> anyhow::Result<()> {
    let (train, test) = fixture_rows()?;
    let texts = train
        .iter()
        .chain(&test)
        .map(|r| data::format_example(&r.messages))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let fixture = tokenizers::Tokenizer::from_file(root().join("fixtures/tiny-qwen2/tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ours = tiny::train_tokenizer(&texts, fixture.get_vocab_size(true))?;
    assert_eq!(ours.get_vocab_size(true), fixture.get_vocab_size(true));
    for (i, special) in tiny::SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(ours.token_to_id(special), Some(i as u32));
        assert_eq!(fixture.token_to_id(special), Some(i as u32));
    }
    for text in texts.iter().take(40) {
        let a = ours.encode(text.as_str(), false).map_err(|e| anyhow::anyhow!("{e}"))?;
        let b = fixture.encode(text.as_str(), false).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(a.get_ids(), b.get_ids(), "{text:?}");
    }
    Ok(())
}

#[test]
fn make_tiny_model_writes_a_loadable_checkpoint() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = TinyModelConfig { seed: 3, ..TinyModelConfig::default() };
    let summary = tiny::write_model(dir.path(), &cfg)?;

    // config.json parses as an HF Qwen2 config (candle's struct is the strictest reader at hand).
    let config: candle_transformers::models::qwen2::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json"))?)?;
    assert_eq!(config.vocab_size, summary.vocab_size);
    assert_eq!((config.hidden_size, config.num_hidden_layers), (cfg.hidden, cfg.layers));
    assert!(config.tie_word_embeddings);
    assert_eq!(config.rope_theta, 1e6);

    // Every tensor present, f32, with the HF shape; tied embeddings → no lm_head.
    let bytes = std::fs::read(dir.path().join("model.safetensors"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let expected = tiny::qwen2_tensor_shapes(summary.vocab_size, &cfg);
    assert_eq!(st.len(), expected.len());
    assert!(st.tensor("lm_head.weight").is_err());
    let mut total = 0;
    for (name, shape, _) in &expected {
        let t = st.tensor(name).with_context(|| name.clone())?;
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        total += shape.iter().product::<usize>();
    }
    assert_eq!(total, summary.params);
    let q: Vec<f32> = st
        .tensor("model.layers.0.self_attn.q_proj.weight")?
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let std = (q.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / q.len() as f64).sqrt();
    assert!((0.018..0.022).contains(&std), "weight std {std}");

    // Deterministic per seed.
    let again = tempfile::tempdir()?;
    tiny::write_model(again.path(), &cfg)?;
    assert_eq!(std::fs::read(again.path().join("model.safetensors"))?, bytes);

    // The tokenizer round-trips text and declares <|im_end|> as EOS.
    let tok =
        tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(tok.get_vocab_size(true) <= cfg.vocab);
    let text = "User: What is the capital of Peru?\n\nAssistant: Lima, née ☃ 42.";
    let ids = tok.encode(text, false).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(ids.len() < text.len(), "BPE should merge");
    assert_eq!(tok.decode(ids.get_ids(), false).map_err(|e| anyhow::anyhow!("{e}"))?, text);
    assert_eq!(data::eos_token_id(dir.path(), &tok)?, summary.eos_id);
    assert_eq!(tok.id_to_token(summary.eos_id).as_deref(), Some(tiny::EOS_TOKEN));
    Ok(())
}

#[test]
fn make_tiny_data_packs_with_the_tiny_model() -> anyhow::Result<()> {
    let model = tempfile::tempdir()?;
    tiny::write_model(model.path(), &TinyModelConfig::default())?;
    let tok =
        tokenizers::Tokenizer::from_file(model.path().join("tokenizer.json")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let eos = data::eos_token_id(model.path(), &tok)?;

    let dir = tempfile::tempdir()?;
    tiny::write_data(dir.path(), 5, 300, 30)?;
    let rows = data::load_rows(dir.path(), Split::Train)?;
    assert_eq!(rows.len(), 300);
    assert!(rows.iter().any(|r| r.messages.iter().any(|m| m.role == "system")));
    let packed = data::load_packed(&dir.path().to_string_lossy(), &tok, eos, 64)?;
    assert!(packed.train.len() > 100, "{} train blocks", packed.train.len());
    assert!(!packed.eval.is_empty());
    assert!(packed.train.iter().flatten().filter(|&&t| t == eos).count() >= 250);
    Ok(())
}

#[test]
fn the_candle_model_loads_the_tiny_checkpoint_at_chance_loss() -> anyhow::Result<()> {
    use lorasweep_train::{model::Qwen2Model, run::eval_loss};

    let model_dir = tempfile::tempdir()?;
    let summary = tiny::write_model(model_dir.path(), &TinyModelConfig::default())?;
    let model = Qwen2Model::load(model_dir.path(), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let tok = tokenizers::Tokenizer::from_file(model_dir.path().join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let eos = data::eos_token_id(model_dir.path(), &tok)?;
    let data_dir = tempfile::tempdir()?;
    tiny::write_data(data_dir.path(), 1, 40, 20)?;
    let packed = data::load_packed(&data_dir.path().to_string_lossy(), &tok, eos, 32)?;
    // A random N(0, 0.02²) model predicts nearly uniformly: loss ≈ ln(vocab), below the jobs'
    // default divergence threshold of 6.0.
    let loss = eval_loss(&model, None, &packed.eval, 4)?;
    let chance = (summary.vocab_size as f64).ln();
    assert!((loss - chance).abs() < 0.1, "loss {loss}, ln(vocab) {chance}");
    assert!(loss < 6.0, "loss {loss}");
    Ok(())
}
