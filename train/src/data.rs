//! The study's data pipeline (ml-spec §1.3, §6): no_robots rows → "Role: content" text →
//! token ids + EOS → blocks of `max_length`, packed per 1000-example chunk.
//!
//! Mirrors `compare_lora_init.py::format_no_robots` / `prepare_dataset`, checked token for token
//! against `train/tests/reference/make_goldens.py` (`train/tests/train/data_pipeline.rs`). Sources:
//! - a directory in the hub layout (`data/train-*.parquet`, `data/test-*.parquet`),
//! - a directory with `train.jsonl` / `test.jsonl`,
//! - a hub id (`HuggingFaceH4/no_robots`) resolved through the local Hugging Face hub cache, as
//!   filled by `hf download --repo-type dataset HuggingFaceH4/no_robots` (the arrow cache of
//!   `datasets.load_dataset` is not read). Nothing is ever downloaded.

use std::path::Path;

use rand::{SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::TrainError;

mod source;
pub use source::{hub_cache_dir, load_rows, read_jsonl, read_parquet, resolve_cached_dataset, resolve_data_dir};

/// Examples per packing chunk: HF `datasets.map(batched=True)`'s default batch size, inside
/// which the study concatenates and cuts blocks, dropping each chunk's remainder (ml-spec §1.3).
pub const PACK_CHUNK: usize = 1000;

/// Mixed into the shuffle seed so the shuffle stream differs from other streams of the same seed.
const SHUFFLE_TAG: u64 = 0x5348_5546_464c_4521; // "SHUFFLE!"

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// One no_robots row (ml-spec §6). Only `messages` is used for training.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The first user message.
    #[serde(default)]
    pub prompt: String,
    /// A hex hash identifying the prompt.
    #[serde(default)]
    pub prompt_id: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Task category (Generation, Open QA, ...).
    #[serde(default)]
    pub category: String,
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `train`: the training blocks.
    Train,
    /// `test`: the eval blocks.
    Test,
}

impl Split {
    /// The split's file-name stem in the hub layout.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// The packed token blocks of both splits; every block is exactly `max_length` ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedData {
    /// Training blocks, in dataset order (shuffle with [`epoch_order`]).
    pub train: Vec<Vec<u32>>,
    /// Eval blocks, in dataset order (eval is never shuffled).
    pub eval: Vec<Vec<u32>>,
}

fn data_err(msg: impl Into<String>) -> TrainError {
    TrainError::Data(msg.into())
}

/// Loads both splits from `data_path`, formats, tokenizes and packs them as the study does.
///
/// # Errors
/// [`TrainError::Data`] for an unresolvable path, a missing split, a row that does not parse or
/// has an unknown role, a tokenizer failure; [`TrainError::Invalid`] for `max_length == 0`;
/// [`TrainError::Io`] for unreadable files.
pub fn load_packed(
    data_path: &str,
    tokenizer: &tokenizers::Tokenizer,
    eos_id: u32,
    max_length: usize,
) -> Result<PackedData, TrainError> {
    if max_length == 0 {
        return Err(TrainError::Invalid("max_length must be positive".into()));
    }
    let dir = resolve_data_dir(data_path)?;
    let split_blocks = |split: Split| -> Result<Vec<Vec<u32>>, TrainError> {
        let rows = load_rows(&dir, split)?;
        let examples = tokenize_rows(&rows, tokenizer, eos_id).map_err(|e| match e {
            TrainError::Data(m) => data_err(format!("{} {} split: {m}", dir.display(), split.name())),
            other => other,
        })?;
        let blocks = pack(&examples, max_length, PACK_CHUNK);
        tracing::info!(
            split = split.name(),
            rows = rows.len(),
            tokens = examples.iter().map(Vec::len).sum::<usize>(),
            blocks = blocks.len(),
            "packed"
        );
        Ok(blocks)
    };
    let train = split_blocks(Split::Train)?;
    let eval = split_blocks(Split::Test)?;
    if train.is_empty() {
        return Err(data_err(format!("{}: the train split packs into 0 blocks of {max_length} tokens", dir.display())));
    }
    Ok(PackedData { train, eval })
}

/// The order in which to visit `n_blocks` training blocks in `epoch`: the identity when
/// `shuffle` is false, else a Fisher–Yates permutation from a ChaCha8 stream keyed by
/// `(seed, epoch)`, so every epoch of a run gets a fresh permutation and reruns repeat it.
pub fn epoch_order(n_blocks: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_blocks).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ SHUFFLE_TAG);
        rng.set_stream(epoch as u64);
        order.shuffle(&mut rng);
    }
    order
}

/// The EOS id appended after every example: `tokenizer_config.json`'s `eos_token` (a string or
/// `{"content": ...}`) looked up in the tokenizer, else `config.json`'s `eos_token_id` (an int or
/// a list, first entry).
///
/// # Errors
/// [`TrainError::Model`] when neither file names an EOS token, the token is not in the
/// tokenizer, or a file does not parse.
pub fn eos_token_id(model_dir: &Path, tokenizer: &tokenizers::Tokenizer) -> Result<u32, TrainError> {
    let tok_cfg = model_dir.join("tokenizer_config.json");
    if tok_cfg.is_file() {
        let value = read_json(&tok_cfg)?;
        let token = match value.get("eos_token") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
            _ => None,
        };
        if let Some(token) = token {
            return tokenizer.token_to_id(&token).ok_or_else(|| {
                TrainError::Model(format!(
                    "{}: eos_token {token:?} is not in the tokenizer's vocabulary",
                    tok_cfg.display()
                ))
            });
        }
    }
    let cfg = model_dir.join("config.json");
    if cfg.is_file() {
        let value = read_json(&cfg)?;
        let id = match value.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::Array(a)) => a.first().and_then(serde_json::Value::as_u64),
            _ => None,
        };
        if let Some(id) = id {
            return u32::try_from(id)
                .map_err(|_| TrainError::Model(format!("{}: eos_token_id {id} out of range", cfg.display())));
        }
    }
    Err(TrainError::Model(format!(
        "{}: no eos_token in tokenizer_config.json and no eos_token_id in config.json",
        model_dir.display()
    )))
}

fn read_json(path: &Path) -> Result<serde_json::Value, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Model(format!("{}: {e}", path.display())))
}

/// The study's text for one conversation: `"\n\n".join(f"{role.capitalize()}: {content}")`,
/// then Python's `str.strip()`.
///
/// # Errors
/// A message naming an unknown role (only `system`, `user`, `assistant` exist in no_robots).
pub fn format_example(messages: &[Message]) -> Result<String, String> {
    let mut parts = Vec::with_capacity(messages.len());
    for m in messages {
        let role = match m.role.as_str() {
            "system" => "System",
            "user" => "User",
            "assistant" => "Assistant",
            other => {
                return Err(format!("unknown role {other:?} (expected system, user or assistant)"));
            }
        };
        parts.push(format!("{role}: {}", m.content));
    }
    Ok(parts.join("\n\n").trim_matches(is_python_space).to_owned())
}

/// Python's `str.isspace`: Unicode White_Space plus the four ASCII information separators
/// U+001C..U+001F, which Python strips and Rust's `trim` keeps.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Formats and tokenizes every row (no special tokens, no truncation) and appends `eos_id`.
///
/// # Errors
/// [`TrainError::Data`] naming the row (0-based) with an unknown role or a tokenizer failure.
pub fn tokenize_rows(
    rows: &[Row],
    tokenizer: &tokenizers::Tokenizer,
    eos_id: u32,
) -> Result<Vec<Vec<u32>>, TrainError> {
    // HF calls the tokenizer with truncation=False and no padding; honour that even if the
    // tokenizer.json configures either.
    let owned;
    let tokenizer = if tokenizer.get_truncation().is_some() || tokenizer.get_padding().is_some() {
        let mut t = tokenizer.clone();
        t.with_truncation(None).map_err(|e| data_err(format!("tokenizer: {e}")))?;
        t.with_padding(None);
        owned = t;
        &owned
    } else {
        tokenizer
    };
    let mut texts = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        texts.push(format_example(&row.messages).map_err(|m| data_err(format!("row {i}: {m}")))?);
    }
    let encodings = tokenizer.encode_batch(texts, false).map_err(|e| data_err(format!("tokenizer: {e}")))?;
    Ok(encodings
        .into_iter()
        .map(|enc| {
            let mut ids = enc.get_ids().to_vec();
            ids.push(eos_id);
            ids
        })
        .collect())
}

/// HF `group_texts` under `datasets.map(batched=True, batch_size=chunk)`: within each run of
/// `chunk` examples, concatenate, cut into blocks of `max_length`, drop the remainder.
///
/// # Panics
/// If `max_length` or `chunk` is 0.
pub fn pack(examples: &[Vec<u32>], max_length: usize, chunk: usize) -> Vec<Vec<u32>> {
    assert!(max_length > 0 && chunk > 0, "max_length and chunk must be positive");
    let mut blocks = Vec::new();
    for group in examples.chunks(chunk) {
        let concat: Vec<u32> = group.iter().flatten().copied().collect();
        blocks.extend(concat.chunks_exact(max_length).map(<[u32]>::to_vec));
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn formats_like_the_study() {
        let text = format_example(&[msg("system", "Be brief."), msg("user", "Hi?"), msg("assistant", "Hello.  \n")])
            .expect("known roles");
        assert_eq!(text, "System: Be brief.\n\nUser: Hi?\n\nAssistant: Hello.");
        // Python strips U+001F; Rust's trim alone would keep it.
        assert_eq!(format_example(&[msg("user", "x\u{1f}")]).expect("ok"), "User: x");
        let err = format_example(&[msg("tool", "x")]).expect_err("unknown role");
        assert!(err.contains("\"tool\""), "{err}");
    }

    #[test]
    fn packs_per_chunk_and_drops_remainders() {
        let ex = vec![vec![1, 2, 3], vec![4, 5], vec![6, 7, 8, 9], vec![10]];
        assert_eq!(pack(&ex, 2, 1000), vec![vec![1, 2], vec![3, 4], vec![5, 6], vec![7, 8], vec![9, 10]]);
        // chunk 2: [1..5] → [1,2],[3,4] (5 dropped); [6..10] → [6,7],[8,9] (10 dropped)
        assert_eq!(pack(&ex, 2, 2), vec![vec![1, 2], vec![3, 4], vec![6, 7], vec![8, 9]]);
        assert!(pack(&ex, 11, 1000).is_empty());
    }

    #[test]
    fn epoch_order_is_a_deterministic_permutation() {
        assert_eq!(epoch_order(5, 42, 0, false), vec![0, 1, 2, 3, 4]);
        let a = epoch_order(100, 42, 0, true);
        assert_eq!(a, epoch_order(100, 42, 0, true));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        assert_ne!(a, epoch_order(100, 42, 1, true), "epochs must differ");
        assert_ne!(a, epoch_order(100, 43, 0, true), "seeds must differ");
        assert!(epoch_order(0, 1, 0, true).is_empty());
    }
}
