//! The data pipeline against the Python reference's goldens (`tests/reference/goldens.json`,
//! written by `tests/reference/make_goldens.py`): identical packed blocks from the jsonl and the
//! parquet copies of the fixture data, per-chunk remainder dropping, and the EOS lookup.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lorasweep_train::data::{self, Split};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn goldens() -> anyhow::Result<Value> {
    let path = root().join("reference/goldens.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

fn blocks(v: &Value) -> anyhow::Result<Vec<Vec<u32>>> {
    Ok(serde_json::from_value(v.clone())?)
}

fn tiny_tokenizer() -> anyhow::Result<tokenizers::Tokenizer> {
    let path = root().join("fixtures/tiny-qwen2/tokenizer.json");
    tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Copies `files` (relative to the fixture data dir) into a fresh temp dir.
fn only(files: &[&str]) -> anyhow::Result<tempfile::TempDir> {
    let src = root().join("fixtures/tiny-data");
    let dir = tempfile::tempdir()?;
    for f in files {
        let to = dir.path().join(f);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(src.join(f), &to).with_context(|| f.to_string())?;
    }
    Ok(dir)
}

#[test]
fn eos_comes_from_tokenizer_config() -> anyhow::Result<()> {
    let g = goldens()?;
    let tok = tiny_tokenizer()?;
    let eos = data::eos_token_id(&root().join("fixtures/tiny-qwen2"), &tok)?;
    assert_eq!(u64::from(eos), g["settings"]["eos_id"].as_u64().context("eos_id")?);
    assert_eq!(tok.id_to_token(eos).as_deref(), Some("<|im_end|>"));

    // Without tokenizer_config.json the id falls back to config.json's eos_token_id.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("config.json"), r#"{"eos_token_id": [7, 2]}"#)?;
    assert_eq!(data::eos_token_id(dir.path(), &tok)?, 7);
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": {"content": "<|endoftext|>"}}"#)?;
    assert_eq!(data::eos_token_id(dir.path(), &tok)?, 0);
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "<nope>"}"#)?;
    let err = data::eos_token_id(dir.path(), &tok).expect_err("unknown token");
    assert!(err.to_string().contains("<nope>"), "{err}");
    Ok(())
}

#[test]
fn jsonl_packing_matches_goldens() -> anyhow::Result<()> {
    let g = goldens()?;
    let tok = tiny_tokenizer()?;
    let max_length = g["settings"]["max_length"].as_u64().context("max_length")? as usize;
    let eos = g["settings"]["eos_id"].as_u64().context("eos_id")? as u32;
    let dir = only(&["train.jsonl", "test.jsonl"])?;
    let packed = data::load_packed(&dir.path().to_string_lossy(), &tok, eos, max_length)?;
    assert_eq!(packed.train, blocks(&g["packing"]["train"])?);
    assert_eq!(packed.eval, blocks(&g["packing"]["eval"])?);
    assert!(packed.train.iter().chain(&packed.eval).all(|b| b.len() == max_length));
    Ok(())
}

#[test]
fn parquet_packing_matches_goldens_and_jsonl_rows() -> anyhow::Result<()> {
    let g = goldens()?;
    let tok = tiny_tokenizer()?;
    let max_length = g["settings"]["max_length"].as_u64().context("max_length")? as usize;
    let eos = g["settings"]["eos_id"].as_u64().context("eos_id")? as u32;
    let dir = only(&["data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"])?;
    let packed = data::load_packed(&dir.path().to_string_lossy(), &tok, eos, max_length)?;
    assert_eq!(packed.train, blocks(&g["packing"]["train"])?);
    assert_eq!(packed.eval, blocks(&g["packing"]["eval"])?);

    // Field for field, the parquet rows are the jsonl rows.
    let fixture = root().join("fixtures/tiny-data");
    for split in [Split::Train, Split::Test] {
        let from_parquet = data::load_rows(dir.path(), split)?;
        let from_jsonl = data::read_jsonl(&fixture.join(format!("{}.jsonl", split.name())))?;
        assert_eq!(from_parquet, from_jsonl, "{split:?}");
    }
    assert_eq!(
        data::load_rows(dir.path(), Split::Train)?.len() as u64,
        g["packing"]["n_train_examples"].as_u64().context("n_train_examples")?
    );
    Ok(())
}

#[test]
fn sharded_legacy_parquet_reads_the_same_rows_and_blocks() -> anyhow::Result<()> {
    // train in 2 shards, `list.item` naming, 24-row row groups, no dictionary pages.
    let g = goldens()?;
    let tok = tiny_tokenizer()?;
    let max_length = g["settings"]["max_length"].as_u64().context("max_length")? as usize;
    let eos = g["settings"]["eos_id"].as_u64().context("eos_id")? as u32;
    let sharded = root().join("fixtures/tiny-data-sharded");
    let fixture = root().join("fixtures/tiny-data");
    assert_eq!(data::load_rows(&sharded, Split::Train)?, data::read_jsonl(&fixture.join("train.jsonl"))?);
    let packed = data::load_packed(&sharded.to_string_lossy(), &tok, eos, max_length)?;
    assert_eq!(packed.train, blocks(&g["packing"]["train"])?);
    assert_eq!(packed.eval, blocks(&g["packing"]["eval"])?);
    // The fixture dir holds both layouts; parquet wins and gives the same blocks.
    let both = data::load_packed(&fixture.to_string_lossy(), &tok, eos, max_length)?;
    assert_eq!(both, packed);
    Ok(())
}

#[test]
fn small_chunks_drop_each_remainder_like_python() -> anyhow::Result<()> {
    let g = goldens()?;
    let tok = tiny_tokenizer()?;
    let max_length = g["settings"]["max_length"].as_u64().context("max_length")? as usize;
    let eos = g["settings"]["eos_id"].as_u64().context("eos_id")? as u32;
    let chunk = g["packing"]["small_chunk"]["chunk"].as_u64().context("chunk")? as usize;
    let fixture = root().join("fixtures/tiny-data");
    for (split, key) in [(Split::Train, "train"), (Split::Test, "eval")] {
        let rows = data::load_rows(&fixture, split)?;
        let examples = data::tokenize_rows(&rows, &tok, eos)?;
        assert!(examples.iter().all(|e| e.last() == Some(&eos)));
        let small = data::pack(&examples, max_length, chunk);
        assert_eq!(small, blocks(&g["packing"]["small_chunk"][key])?, "{key}");
        let whole = data::pack(&examples, max_length, data::PACK_CHUNK).len();
        // Dropping a remainder per chunk can only lose blocks; on train it does.
        assert!(small.len() <= whole && (split == Split::Test || small.len() < whole), "{key}");
    }
    Ok(())
}

#[test]
fn missing_split_and_bad_rows_are_named() -> anyhow::Result<()> {
    let tok = tiny_tokenizer()?;
    let dir = only(&["train.jsonl"])?;
    let err = data::load_packed(&dir.path().to_string_lossy(), &tok, 2, 64).expect_err("no test split");
    assert!(err.to_string().contains("no test split"), "{err}");

    std::fs::write(dir.path().join("test.jsonl"), "{\"messages\": [{\"role\": \"narrator\", \"content\": \"x\"}]}\n")?;
    let err = data::load_packed(&dir.path().to_string_lossy(), &tok, 2, 64).expect_err("bad role");
    let msg = err.to_string();
    assert!(msg.contains("test split: row 0: unknown role \"narrator\""), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");

    let err = data::load_packed("/definitely/not/here", &tok, 2, 64).expect_err("missing dir");
    assert!(err.to_string().contains("/definitely/not/here"), "{err}");
    Ok(())
}
