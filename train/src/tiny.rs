//! Tiny generated models and data for tests and the demo (`lorasweep make-tiny-model`,
//! `make-tiny-data`): no hub access is ever needed.
//!
//! - [`generate_rows`] is a line-by-line port of `train/tests/reference/tiny_data.py` (same
//!   splitmix64 stream and word lists), so the committed fixture data can be regenerated from
//!   either side; `train/tests/train/tiny_generators.rs` checks they agree.
//! - [`train_tokenizer`] builds a byte-level BPE shaped like Qwen2.5's (NFC, Qwen's split regex,
//!   ByteLevel) with the specials `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, as the reference
//!   script does with the Python `tokenizers` bindings.
//! - [`write_model`] writes an HF Qwen2 checkpoint: `config.json`, `model.safetensors` (f32,
//!   N(0, 0.02²) weights from a seeded ChaCha8 stream, tied embeddings so no `lm_head.weight`),
//!   `tokenizer.json` and `tokenizer_config.json` (eos `<|im_end|>`).

use std::{collections::HashMap, io::Write, path::Path};

use lorasweep_common::Projection;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::{
        TrainerWrapper,
        bpe::{BPE, BpeTrainerBuilder},
    },
    normalizers::unicode::NFC,
    pre_tokenizers::{
        byte_level::ByteLevel,
        sequence::Sequence,
        split::{Split, SplitPattern},
    },
};

use super::data::format_example;
use crate::TrainError;
use crate::safetensors_f32;

mod rows;
use rows::write_file;
pub use rows::{generate_rows, write_data};

/// Qwen2.5's pre-tokenizer split regex (from its `tokenizer.json`).
pub const QWEN_SPLIT_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The special tokens, in id order 0, 1, 2 (Qwen2.5 has the same three at 151643..151645).
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The EOS token the tiny models declare (as Qwen2.5-Instruct does).
pub const EOS_TOKEN: &str = "<|im_end|>";

/// Rows drawn per seed for the tokenizer corpus of [`write_model`]: enough that every template
/// word becomes a token.
const TOKENIZER_CORPUS_ROWS: usize = 1000;

// ------------------------------------------------------------------ tokenizer

/// Trains a Qwen2.5-shaped byte-level BPE of at most `vocab_size` entries (specials included,
/// ids 0..3) on `texts`, with min_frequency 2, like the reference script.
///
/// # Errors
/// [`TrainError::Model`] if the tokenizer cannot be built or trained.
pub fn train_tokenizer<S: AsRef<str> + Sync>(texts: &[S], vocab_size: usize) -> Result<Tokenizer, TrainError> {
    let err = |e: tokenizers::Error| TrainError::Model(format!("tokenizer: {e}"));
    let split = Split::new(SplitPattern::Regex(QWEN_SPLIT_REGEX.to_owned()), SplitDelimiterBehavior::Isolated, false)
        .map_err(err)?;
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer
        .with_normalizer(Some(NormalizerWrapper::NFC(NFC)))
        .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::new(false, false, false))));
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer.train(&mut trainer, texts.iter().map(|t| t.as_ref())).map_err(err)?;
    Ok(tokenizer)
}

// ------------------------------------------------------------------ model

/// The shape of a tiny Qwen2 (`lorasweep make-tiny-model` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct TinyModelConfig {
    /// Target tokenizer size; the model's `vocab_size` is at least the trained tokenizer's size.
    /// Default 320: a random model's loss is about ln(vocab), and ln 320 ≈ 5.77 stays under the
    /// jobs' default divergence threshold of 6.0 (ln 512 ≈ 6.24 would not).
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (GQA); must divide `heads`.
    pub kv_heads: usize,
    /// SwiGLU intermediate size.
    pub intermediate: usize,
    /// `max_position_embeddings` (and `sliding_window`, unused).
    pub max_positions: usize,
    /// Seeds the weights and the tokenizer corpus.
    pub seed: u64,
}

impl Default for TinyModelConfig {
    fn default() -> Self {
        Self {
            vocab: 320,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            max_positions: 2048,
            seed: 0,
        }
    }
}

/// What [`write_model`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyModelSummary {
    /// The model's `vocab_size` (embedding rows).
    pub vocab_size: usize,
    /// Parameters in `model.safetensors`.
    pub params: usize,
    /// The EOS (`<|im_end|>`) id.
    pub eos_id: u32,
}

/// The tensors of a Qwen2 checkpoint with tied embeddings, in HF names and `[out, in]` layout,
/// with the value each is initialised to (`None` = random N(0, 0.02²)).
pub fn qwen2_tensor_shapes(vocab: usize, cfg: &TinyModelConfig) -> Vec<(String, Vec<usize>, Option<f32>)> {
    let h = cfg.hidden;
    let kv = cfg.kv_heads * (h / cfg.heads.max(1));
    let mut t = vec![("model.embed_tokens.weight".to_owned(), vec![vocab, h], None)];
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        // This order (the attention's norm and projections, then the MLP's) is the order the
        // tensors draw their random values in: changing it changes every generated model.
        t.push((format!("{p}.input_layernorm.weight"), vec![h], Some(1.0)));
        for m in Projection::ALL {
            if m == Projection::Gate {
                t.push((format!("{p}.post_attention_layernorm.weight"), vec![h], Some(1.0)));
            }
            let (d_in, d_out) = m.dims(h, kv, cfg.intermediate);
            let name = format!("{p}.{}.{}", m.block(), m.name());
            t.push((format!("{name}.weight"), vec![d_out, d_in], None));
            if m.has_bias() {
                t.push((format!("{name}.bias"), vec![d_out], Some(0.0)));
            }
        }
    }
    t.push(("model.norm.weight".to_owned(), vec![h], Some(1.0)));
    t
}

fn validate(cfg: &TinyModelConfig) -> Result<(), TrainError> {
    let bad = |m: String| Err(TrainError::Invalid(m));
    if [cfg.vocab, cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads, cfg.intermediate, cfg.max_positions].contains(&0) {
        return bad("every size must be positive".into());
    }
    if cfg.vocab < 259 {
        return bad(format!("vocab {} < 259 (256 bytes + 3 special tokens)", cfg.vocab));
    }
    if !cfg.hidden.is_multiple_of(cfg.heads) || !(cfg.hidden / cfg.heads).is_multiple_of(2) {
        return bad(format!("hidden {} must split into {} heads of even size (RoPE)", cfg.hidden, cfg.heads));
    }
    if !cfg.heads.is_multiple_of(cfg.kv_heads) {
        return bad(format!("kv_heads {} must divide heads {}", cfg.kv_heads, cfg.heads));
    }
    Ok(())
}

/// Writes a tiny random Qwen2 checkpoint into `dir` (created if needed): `config.json`,
/// `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`. Deterministic per `cfg`.
///
/// # Errors
/// [`TrainError::Invalid`] for an impossible shape; [`TrainError::Model`] if the tokenizer or
/// the safetensors file cannot be built; [`TrainError::Io`] for write failures.
pub fn write_model(dir: &Path, cfg: &TinyModelConfig) -> Result<TinyModelSummary, TrainError> {
    validate(cfg)?;
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;

    let (corpus_rows, _) = generate_rows(cfg.seed, TOKENIZER_CORPUS_ROWS, 0);
    let corpus = corpus_rows
        .iter()
        .map(|r| format_example(&r.messages).map_err(TrainError::Data))
        .collect::<Result<Vec<_>, _>>()?;
    let tokenizer = train_tokenizer(&corpus, cfg.vocab)?;
    let tok_path = dir.join("tokenizer.json");
    tokenizer.save(&tok_path, true).map_err(|e| TrainError::Model(format!("{}: {e}", tok_path.display())))?;
    let eos_id = tokenizer
        .token_to_id(EOS_TOKEN)
        .ok_or_else(|| TrainError::Model(format!("{EOS_TOKEN} missing from the trained tokenizer")))?;
    let tok_cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": null,
        "eos_token": EOS_TOKEN,
        "pad_token": SPECIAL_TOKENS[0],
        "unk_token": null,
        "model_max_length": cfg.max_positions,
        "clean_up_tokenization_spaces": false,
    });
    write_json(&dir.join("tokenizer_config.json"), &tok_cfg)?;

    let vocab_size = cfg.vocab.max(tokenizer.get_vocab_size(true));
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "max_position_embeddings": cfg.max_positions,
        "sliding_window": cfg.max_positions,
        "max_window_layers": cfg.layers,
        "use_sliding_window": false,
        "tie_word_embeddings": true,
        "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": tokenizer.token_to_id(SPECIAL_TOKENS[0]),
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    write_json(&dir.join("config.json"), &config)?;

    let tensors = random_weights(vocab_size, cfg);
    let params = tensors.iter().map(|(_, _, v)| v.len()).sum();
    let st_path = dir.join("model.safetensors");
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let bytes = safetensors_f32::serialize_named(&tensors, metadata).map_err(TrainError::Model)?;
    std::fs::write(&st_path, bytes).map_err(|e| TrainError::io(&st_path, e))?;
    Ok(TinyModelSummary { vocab_size, params, eos_id })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), TrainError> {
    let mut text =
        serde_json::to_vec_pretty(value).map_err(|e| TrainError::Model(format!("{}: {e}", path.display())))?;
    text.write_all(b"\n").map_err(|e| TrainError::io(path, e))?;
    write_file(path, &text)
}

/// The checkpoint's values: N(0, 0.02²) by Box–Muller from ChaCha8(`seed`), drawn tensor by
/// tensor in [`qwen2_tensor_shapes`] order; norms 1, biases 0 (transformers' init).
fn random_weights(vocab: usize, cfg: &TinyModelConfig) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    qwen2_tensor_shapes(vocab, cfg)
        .into_iter()
        .map(|(name, shape, fill)| {
            let n = shape.iter().product();
            let values = match fill {
                Some(v) => vec![v; n],
                None => (0..n)
                    .map(|_| {
                        let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
                        let u2 = rng.random::<f64>();
                        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                        (0.02 * z) as f32
                    })
                    .collect(),
            };
            (name, shape, values)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_impossible_shapes() {
        let bad = TinyModelConfig { heads: 3, ..TinyModelConfig::default() };
        assert!(matches!(validate(&bad), Err(TrainError::Invalid(_))));
        let bad = TinyModelConfig { kv_heads: 3, heads: 4, ..TinyModelConfig::default() };
        assert!(matches!(validate(&bad), Err(TrainError::Invalid(_))));
        assert!(validate(&TinyModelConfig::default()).is_ok());
    }
}
