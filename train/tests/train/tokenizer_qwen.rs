//! The real Qwen2.5 tokenizer (`tests/fixtures/qwen2.5-tokenizer`) in the Rust `tokenizers`
//! crate gives the ids that Python recorded (`goldens.json` → `real_tokenizer`), and the study's
//! EOS (`<|im_end|>` = 151645) is found from `tokenizer_config.json`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lorasweep_train::data;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

#[test]
fn real_qwen_tokenizer_matches_python() -> anyhow::Result<()> {
    let dir = root().join("fixtures/qwen2.5-tokenizer");
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root().join("reference/goldens.json"))?)?;
    let real = &g["real_tokenizer"];

    let eos = data::eos_token_id(&dir, &tok)?;
    assert_eq!(eos, 151_645);
    assert_eq!(u64::from(eos), real["eos_id"].as_u64().context("eos_id")?);

    let cases = real["cases"].as_array().context("cases")?;
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().context("text")?;
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone())?;
        let got = tok.encode(text, false).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(got.get_ids(), want.as_slice(), "{text:?}");
        // Byte-level BPE round-trips (NFC aside), specials included.
        let back = tok.decode(&want, false).map_err(|e| anyhow::anyhow!("{e}"))?;
        if !text.contains('\u{301}') {
            assert_eq!(back, text);
        }
    }
    Ok(())
}
