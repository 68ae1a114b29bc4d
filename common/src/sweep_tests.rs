//! Unit tests of the sweep file: the default grid and the refusal of malformed files.

use super::*;

/// Parses `text` as `bad.toml`, expects a refusal, and checks that it names the file and every
/// fragment in `needles` (the key, and usually the allowed values).
fn refused(text: &str, needles: &[&str]) {
    let err = SweepSpec::parse(text, "bad.toml").expect_err("malformed file was accepted").to_string();
    assert!(err.contains("bad.toml"), "error does not name the file: {err}");
    for needle in needles {
        assert!(err.contains(needle), "error does not mention {needle:?}: {err}");
    }
}

#[test]
fn empty_file_is_the_140_job_study_grid_in_grid_order() {
    let spec = SweepSpec::parse("", "study.toml").expect("empty file is valid");
    assert_eq!(spec.name, "study");
    let jobs = spec.jobs();
    assert_eq!(jobs.len(), 140);
    assert_eq!((jobs[0].init, jobs[0].lr, jobs[0].seed), (LoraInit::Standard, 1e-4, 42));
    assert_eq!((jobs[1].init, jobs[1].lr, jobs[1].seed), (LoraInit::Standard, 1e-4, 43));
    assert_eq!((jobs[4].init, jobs[4].lr, jobs[4].seed), (LoraInit::Standard, 2e-4, 42));
    assert_eq!((jobs[28].init, jobs[28].lr, jobs[28].seed), (LoraInit::Reversed, 1e-4, 42));
    assert_eq!((jobs[139].init, jobs[139].lr, jobs[139].seed), (LoraInit::OrthoQrMatch, 1e-2, 45));
    assert!(jobs.iter().all(|j| j.lora == LoraSpec::default() && j.train == TrainSpec::default()));
    assert_eq!(jobs[0].model.dtype, "bf16");
    assert_eq!(jobs[0].lora.r, 8);
    assert_eq!(jobs[0].train.eval_every, 40);
}

#[test]
fn a_full_file_overrides_defaults() {
    let text = r#"
        name = "tiny"
        [model]
        path = "/models/tiny"
        dtype = "f32"
        [data]
        path = "/data/tiny"
        max_length = 64
        [lora]
        r = 4
        targets = ["q_proj", "v_proj"]
        [train]
        micro_batch = 2
        max_steps = 10
        [grid]
        inits = ["ortho-eye", "standard"]
        lrs = [1e-3, 1]
        seeds = [7]
    "#;
    let spec = SweepSpec::parse(text, "tiny.toml").expect("valid file");
    assert_eq!(spec.name, "tiny");
    let jobs = spec.jobs();
    assert_eq!(jobs.len(), 4);
    assert_eq!((jobs[0].init, jobs[0].lr), (LoraInit::OrthoEye, 1e-3));
    assert_eq!((jobs[1].init, jobs[1].lr), (LoraInit::OrthoEye, 1.0));
    assert_eq!(jobs[3].init, LoraInit::Standard);
    assert_eq!(jobs[0].lora.r, 4);
    assert_eq!(jobs[0].lora.alpha, 16.0, "unset keys keep their default");
    assert_eq!(jobs[0].train.max_steps, Some(10));
    assert_eq!(jobs[0].data.max_length, 64);
}

#[test]
fn spec_round_trips_through_json() {
    let spec = SweepSpec::parse("[grid]\nseeds = [1]", "x.toml").expect("valid");
    let json = serde_json::to_string(&spec.jobs()[0]).expect("serialises");
    let back: JobSpec = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(back, spec.jobs()[0]);
}

#[test]
fn syntax_error() {
    refused("[grid\ninits = []", &["TOML"]);
}

#[test]
fn unknown_top_level_key() {
    refused("nmae = \"x\"", &["nmae", "grid"]);
}

#[test]
fn unknown_table() {
    refused("[optimizer]\nlr = 1", &["optimizer", "allowed"]);
}

#[test]
fn unknown_key_in_lora() {
    refused("[lora]\nrank = 8", &["lora.rank", "alpha"]);
}

#[test]
fn unknown_key_in_grid() {
    refused("[grid]\nlr = [0.1]", &["grid.lr", "lrs"]);
}

#[test]
fn unknown_init() {
    refused("[grid]\ninits = [\"kaiming\"]", &["grid.inits", "kaiming", "ortho-qr-match"]);
}

#[test]
fn duplicate_init() {
    refused("[grid]\ninits = [\"standard\", \"standard\"]", &["grid.inits", "twice"]);
}

#[test]
fn duplicate_lr() {
    refused("[grid]\nlrs = [1e-3, 0.001]", &["grid.lrs", "duplicate"]);
}

#[test]
fn duplicate_seed() {
    refused("[grid]\nseeds = [1, 2, 1]", &["grid.seeds", "twice"]);
}

#[test]
fn zero_lr() {
    refused("[grid]\nlrs = [1e-3, 0.0]", &["grid.lrs[1]", "> 0"]);
}

#[test]
fn negative_lr() {
    refused("[grid]\nlrs = [-1e-3]", &["grid.lrs[0]", "> 0"]);
}

#[test]
fn nan_lr() {
    refused("[grid]\nlrs = [nan]", &["grid.lrs[0]", "finite"]);
}

#[test]
fn infinite_lr() {
    refused("[grid]\nlrs = [inf]", &["grid.lrs[0]", "finite"]);
}

#[test]
fn empty_inits() {
    refused("[grid]\ninits = []", &["grid.inits", "empty"]);
}

#[test]
fn empty_lrs() {
    refused("[grid]\nlrs = []", &["grid.lrs", "empty"]);
}

#[test]
fn empty_seeds() {
    refused("[grid]\nseeds = []", &["grid.seeds", "empty"]);
}

#[test]
fn negative_seed_is_a_type_error() {
    refused("[grid]\nseeds = [-1]", &["grid.seeds"]);
}

#[test]
fn lrs_as_a_string() {
    refused("[grid]\nlrs = \"1e-3\"", &["grid.lrs"]);
}

#[test]
fn rank_as_a_string() {
    refused("[lora]\nr = \"8\"", &["lora.r"]);
}

#[test]
fn zero_rank() {
    refused("[lora]\nr = 0", &["lora.r", "≥ 1"]);
}

#[test]
fn zero_micro_batch() {
    refused("[train]\nmicro_batch = 0", &["train.micro_batch", "≥ 1"]);
}

#[test]
fn zero_grad_accum() {
    refused("[train]\ngrad_accum = 0", &["train.grad_accum"]);
}

#[test]
fn zero_eval_every() {
    refused("[train]\neval_every = 0", &["train.eval_every"]);
}

#[test]
fn warmup_ratio_above_one() {
    refused("[train]\nwarmup_ratio = 1.5", &["train.warmup_ratio", "≤ 1"]);
}

#[test]
fn dropout_of_one() {
    refused("[lora]\ndropout = 1.0", &["lora.dropout", "< 1"]);
}

#[test]
fn unknown_target() {
    refused("[lora]\ntargets = [\"qproj\"]", &["lora.targets[0]", "qproj", "q_proj"]);
}

#[test]
fn empty_targets() {
    refused("[lora]\ntargets = []", &["lora.targets", "empty"]);
}

#[test]
fn unknown_dtype() {
    refused("[model]\ndtype = \"f16\"", &["model.dtype", "bf16"]);
}

#[test]
fn empty_model_path() {
    refused("[model]\npath = \"\"", &["model.path", "empty"]);
}

#[test]
fn section_that_is_not_a_table() {
    refused("model = \"qwen\"", &["model", "table"]);
}

#[test]
fn name_that_is_not_a_string() {
    refused("name = 3", &["name", "string"]);
}

#[test]
fn empty_name() {
    refused("name = \" \"", &["name", "empty"]);
}

#[test]
fn grid_too_large() {
    let seeds: Vec<String> = (0..3000).map(|s| s.to_string()).collect();
    refused(&format!("[grid]\nseeds = [{}]", seeds.join(",")), &["grid", "at most"]);
}

#[test]
fn negative_weight_decay() {
    refused("[train]\nweight_decay = -0.1", &["train.weight_decay"]);
}

#[test]
fn max_steps_wrong_type() {
    refused("[train]\nmax_steps = 1.5", &["train.max_steps"]);
}

#[test]
fn checkpoint_every_is_accepted() {
    let spec = SweepSpec::parse("[train]\ncheckpoint_every = 10\n", "t.toml").expect("valid sweep");
    assert!(spec.jobs().iter().all(|j| j.train.checkpoint_every == 10));
}

#[test]
fn priority_and_requirements_parse_and_are_checked_by_key() {
    let spec = SweepSpec::parse("priority = 5\n[requirements]\ndevice = \"cuda\"\nmin_gpu_memory_gb = 40\n", "p.toml")
        .expect("valid");
    assert_eq!(
        (spec.priority, spec.requirements.device_kind(), spec.requirements.min_gpu_memory_gb),
        (5, "cuda", 40.0)
    );
    let plain = SweepSpec::parse("", "p.toml").expect("valid");
    assert_eq!((plain.priority, plain.requirements.device_kind(), plain.requirements.min_cpu_threads), (0, "", 0));
    for (text, key) in [
        ("priority = 5000", "`priority`"),
        ("priority = \"high\"", "`priority`"),
        ("[requirements]\ndevice = \"tpu\"", "`requirements.device`"),
        ("[requirements]\nmin_gpu_memory_gb = -1", "`requirements.min_gpu_memory_gb`"),
        ("[requirements]\ndevice = \"cpu\"\nmin_gpu_memory_gb = 8", "`requirements.min_gpu_memory_gb`"),
        ("[requirements]\ngpus = 2", "`requirements.gpus`"),
    ] {
        let err = SweepSpec::parse(text, "p.toml").expect_err(text).to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn fail_fast_defaults_on_and_refuses_zero_negative_and_strings() {
    assert_eq!(SweepSpec::parse("", "f.toml").expect("valid").fail_fast, Some(crate::sweep::DEFAULT_FAIL_FAST));
    assert_eq!(SweepSpec::parse("fail_fast = 7", "f.toml").expect("valid").fail_fast, Some(7));
    assert_eq!(SweepSpec::parse("fail_fast = true", "f.toml").expect("valid").fail_fast, Some(3));
    assert_eq!(SweepSpec::parse("fail_fast = false", "f.toml").expect("valid").fail_fast, None);
    for text in ["fail_fast = 0", "fail_fast = -2", "fail_fast = 100000", "fail_fast = \"3\"", "fail_fast = 1.5"] {
        let err = SweepSpec::parse(text, "f.toml").expect_err(text).to_string();
        assert!(err.contains("f.toml") && err.contains("`fail_fast`"), "{text}: {err}");
    }
}
