//! Property tests of the sweep-file parser on random input: it never panics, every refusal
//! names the source and a key (or the TOML syntax), and every accepted file satisfies the
//! invariants the coordinator relies on (a bounded, non-empty grid of finite, positive lrs).

use lorasweep_common::{
    Error, LoraInit, SweepSpec,
    sweep::{MAX_JOBS, MAX_NAME_LEN, MAX_PATH_LEN},
};
use proptest::prelude::*;

const SOURCE: &str = "fuzz.toml";

/// Parses `text` and checks the contract either way.
fn check(text: &str) -> Result<(), TestCaseError> {
    match SweepSpec::parse(text, SOURCE) {
        Ok(spec) => {
            let n = spec.job_count();
            prop_assert!((1..=MAX_JOBS).contains(&n), "accepted a grid of {} jobs", n);
            prop_assert_eq!(spec.jobs().len(), n);
            prop_assert!(spec.grid.lrs.iter().all(|lr| lr.is_finite() && *lr > 0.0), "lrs {:?}", spec.grid.lrs);
            prop_assert!(!spec.name.trim().is_empty() && spec.name.len() <= MAX_NAME_LEN);
            prop_assert!(spec.model.path.len() <= MAX_PATH_LEN && spec.data.path.len() <= MAX_PATH_LEN);
            prop_assert!(spec.lora.r >= 1 && (0.0..1.0).contains(&spec.lora.dropout));
            // A job spec survives its JSON round trip (it is what a worker receives).
            for job in spec.jobs().iter().take(3) {
                let json = serde_json::to_string(job).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back: lorasweep_common::JobSpec =
                    serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back, job);
            }
        }
        Err(Error::Invalid { field, message }) => {
            prop_assert!(field.starts_with(SOURCE), "field {:?} does not name the source", field);
            prop_assert!(field.contains("key `") || field.contains("TOML syntax"), "field {:?}", field);
            prop_assert!(!message.is_empty());
        }
    }
    Ok(())
}

/// A TOML value of any shape the parser may meet, as text.
fn value() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        prop::num::f64::ANY.prop_map(|v| format!("{v:?}")),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("1e999".to_string()),
        Just("18446744073709551616".to_string()),
        (0u32..5).prop_map(|v| v.to_string()),
        Just("1e-4".to_string()),
    ];
    let string = prop_oneof![
        prop::sample::select(LoraInit::ALL.iter().map(|i| i.name().to_string()).collect::<Vec<_>>()),
        prop::sample::select(vec!["q_proj".to_string(), "v_proj".into(), "f32".into(), "bf16".into(), String::new()]),
        "\\PC{0,12}",
        (0usize..6000).prop_map(|n| "x".repeat(n)),
    ]
    .prop_map(|s| format!("{s:?}"));
    let scalar = prop_oneof![number, string.clone(), Just("true".to_string())];
    prop_oneof![
        3 => scalar.clone(),
        2 => prop::collection::vec(scalar, 0..6).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => Just("{ a = 1 }".to_string()),
    ]
}

/// A sweep file assembled from real and bogus sections and keys with random values.
fn sweep_text() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec!["", "model", "data", "lora", "train", "grid", "bogus", "grid.inner"]);
    let key = prop::sample::select(vec![
        "name",
        "path",
        "dtype",
        "max_length",
        "r",
        "alpha",
        "dropout",
        "targets",
        "micro_batch",
        "grad_accum",
        "epochs",
        "eval_every",
        "weight_decay",
        "warmup_ratio",
        "max_grad_norm",
        "divergence_threshold",
        "inits",
        "lrs",
        "seeds",
        "unknown_key",
    ]);
    prop::collection::vec((section, prop::collection::vec((key, value()), 0..4)), 0..5).prop_map(|sections| {
        let mut text = String::new();
        for (section, entries) in sections {
            if !section.is_empty() {
                text.push_str(&format!("[{section}]\n"));
            }
            for (key, value) in entries {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_parsed_or_refused_by_key(text in "\\PC{0,200}") {
        check(&text)?;
    }

    #[test]
    fn any_bytes_as_text_are_parsed_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn structured_sweep_files_keep_the_invariants(text in sweep_text()) {
        check(&text)?;
    }
}

#[test]
fn deep_nesting_and_huge_grids_are_refused_not_crashed() {
    // Arrays nested thousands deep: toml's parser limits its depth; the parser must refuse.
    let deep = format!("[grid]\nlrs = {}1{}\n", "[".repeat(5000), "]".repeat(5000));
    assert!(SweepSpec::parse(&deep, SOURCE).is_err());
    let lrs: Vec<String> = (1..=200).map(|i| format!("{i}e-6")).collect();
    let seeds: Vec<String> = (0..200).map(|s| s.to_string()).collect();
    let huge = format!("[grid]\nlrs = [{}]\nseeds = [{}]\n", lrs.join(","), seeds.join(","));
    let err = SweepSpec::parse(&huge, SOURCE).expect_err("200k jobs accepted").to_string();
    assert!(err.contains("200000") && err.contains(&MAX_JOBS.to_string()), "{err}");
}
