//! Random models at a named shape (`tiny`, `0.5b`, `1.5b`: `lorasweep_train::bench`),
//! written to disk as a worker would find them, for benches that load a model
//! (`lorasweep bench job-switch`).
//!
//! `tiny` goes through the tiny generator (f32, its own small tokenizer); `0.5b` and `1.5b`
//! become bf16 safetensors (as the hub ships Qwen2.5) with the real Qwen2.5 tokenizer, embedded
//! in the binary (6 MB) so that nothing is read from the repository at run time.

use std::{
    io::{BufWriter, Write},
    path::Path,
};

use lorasweep_train::{
    bench::shape,
    model::Qwen2Config,
    rng::SplitMix64,
    tiny::{self, TinyModelConfig},
};

/// The Qwen2.5 tokenizer (Apache-2.0, Qwen; see the fixture's README), written next to
/// generated 0.5b/1.5b weights: those shapes have Qwen2.5's vocabulary of 151936 rows.
const QWEN_TOKENIZER_JSON: &[u8] = include_bytes!("../../train/tests/fixtures/qwen2.5-tokenizer/tokenizer.json");
const QWEN_TOKENIZER_CONFIG: &[u8] =
    include_bytes!("../../train/tests/fixtures/qwen2.5-tokenizer/tokenizer_config.json");

/// Qwen2.5's `<|endoftext|>` and `<|im_end|>` ids (the fixture README).
const QWEN_BOS_ID: u32 = 151_643;
const QWEN_EOS_ID: u32 = 151_645;

/// Writes a random model at `shape_name` into `dir`: `tiny` with the tiny generator, the real
/// shapes as bf16 safetensors plus the embedded Qwen2.5 tokenizer.
pub(crate) fn write(dir: &Path, shape_name: &str) -> anyhow::Result<()> {
    let cfg = shape(shape_name)?;
    if shape_name == "tiny" {
        // The tiny shape's vocab (512) is too small for Qwen's tokenizer; the generator trains one.
        tiny::write_model(dir, &generator_config(&cfg))?;
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("tokenizer.json"), QWEN_TOKENIZER_JSON)?;
    std::fs::write(dir.join("tokenizer_config.json"), QWEN_TOKENIZER_CONFIG)?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&hf_config(&cfg))?)?;
    write_bf16_safetensors(&dir.join("model.safetensors"), &cfg)
}

/// `config.json` for `cfg`, as Qwen2.5's (bf16, tied embeddings).
fn hf_config(cfg: &Qwen2Config) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "sliding_window": cfg.max_position_embeddings,
        "max_window_layers": cfg.num_hidden_layers,
        "use_sliding_window": false,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "hidden_act": "silu",
        "bos_token_id": QWEN_BOS_ID,
        "eos_token_id": QWEN_EOS_ID,
        "torch_dtype": "bfloat16",
    })
}

/// The tiny generator's settings for a bench shape.
fn generator_config(cfg: &Qwen2Config) -> TinyModelConfig {
    TinyModelConfig {
        vocab: cfg.vocab_size,
        hidden: cfg.hidden_size,
        layers: cfg.num_hidden_layers,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        intermediate: cfg.intermediate_size,
        ..TinyModelConfig::default()
    }
}

/// Writes `cfg`'s tensors as one bf16 safetensors file, streaming: the 1.5b shape is 3.1 GB,
/// which the `safetensors` crate would want in memory at once. Values are U(±√3·0.02) from a
/// splitmix64 stream (norms 1, biases 0); a load-time bench needs the bytes, not a good model.
fn write_bf16_safetensors(path: &Path, cfg: &Qwen2Config) -> anyhow::Result<()> {
    let tensors = tiny::qwen2_tensor_shapes(cfg.vocab_size, &generator_config(cfg));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape, _) in &tensors {
        let bytes = 2 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))?;
    // The format pads the header with spaces so the data starts 8-byte aligned.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = BufWriter::with_capacity(1 << 22, std::fs::File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    let mut rng = SplitMix64::new(0x9E37_79B9_7F4A_7C15);
    let bound = 3f32.sqrt() * 0.02;
    let mut buf = Vec::with_capacity(1 << 21);
    for (_, shape, fill) in &tensors {
        let mut left: usize = shape.iter().product();
        while left > 0 {
            let n = left.min(1 << 20);
            buf.clear();
            for _ in 0..n {
                let v = match fill {
                    Some(v) => *v,
                    None => bound * (2.0 * (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 1.0),
                };
                // bf16 is the high half of the f32 bits (truncation is fine for random values).
                buf.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
            out.write_all(&buf)?;
            left -= n;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use lorasweep_train::local::{parse_device, parse_dtype};
    use lorasweep_train::model::Qwen2Model;

    use super::*;

    /// The streaming writer produces a file the trainer's loader accepts, with every tensor of
    /// the shape (a 1-layer 0.5b keeps the test small: the embedding is most of it).
    #[test]
    fn bf16_writer_output_loads() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cfg = shape("0.5b")?;
        cfg.num_hidden_layers = 1;
        cfg.vocab_size = 1024;
        let path = dir.path().join("model.safetensors");
        write_bf16_safetensors(&path, &cfg)?;
        std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&hf_config(&cfg))?)?;
        let model = Qwen2Model::load(dir.path(), parse_dtype("bf16")?, &parse_device("cpu")?)?;
        assert_eq!(model.cfg, cfg);
        let per_layer = 896 * 896 * 2 + 128 * 896 * 2 + 896 + 128 * 2 + 3 * 896 * 4864 + 2 * 896;
        let params = 1024 * 896 + per_layer + 896;
        assert_eq!(std::fs::metadata(&path)?.len() as usize, 2 * params + header_len(&path)?);
        Ok(())
    }

    fn header_len(path: &Path) -> anyhow::Result<usize> {
        let bytes = std::fs::read(path)?;
        Ok(8 + u64::from_le_bytes(bytes[..8].try_into()?) as usize)
    }
}
