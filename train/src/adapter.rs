//! PEFT adapter directories (ml-spec §4): save what `PeftModel.save_pretrained` writes, and load
//! one back (`--init-from-adapter`).
//!
//! `adapter_config.json` is the minimal PEFT-loadable config of ml-spec §4 with this job's r,
//! alpha, dropout and targets, and always `init_lora_weights: true` (loading overwrites A and B;
//! values like "pissa" would alter the base on load). `adapter_model.safetensors` holds f32
//! `base_model.model.model.layers.{L}.{self_attn|mlp}.{m}.lora_{A,B}.weight` tensors with header
//! metadata `{"format": "pt"}` (what transformers/PEFT expect).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Var};
use lorasweep_common::Projection;
use lorasweep_common::job::LoraSpec;

use super::lora::{Adapter, Adapters, peft_prefix};
use super::model::Qwen2Config;
use crate::TrainError;
use crate::safetensors_f32::{self, NamedF32};

/// The adapter config file name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter weights file name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The `adapter_config.json` document for a job.
pub fn adapter_config(spec: &LoraSpec, base_model: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "revision": null,
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": spec.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": true
    })
}

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` (f32), creating `dir`.
///
/// # Errors
/// [`TrainError::Io`] for file errors; tensor errors.
pub fn save(dir: &Path, ads: &Adapters, spec: &LoraSpec, base_model: &str) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let cfg_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&adapter_config(spec, base_model))
        .map_err(|e| TrainError::Invalid(format!("adapter config: {e}")))?;
    std::fs::write(&cfg_path, text + "\n").map_err(|e| TrainError::io(&cfg_path, e))?;

    let tensors = tensors(ads)?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors_f32::serialize_named(&tensors, meta).map_err(TrainError::Invalid)?;
    let path = dir.join(WEIGHTS_FILE);
    std::fs::write(&path, bytes).map_err(|e| TrainError::io(&path, e))
}

/// The adapters' PEFT tensors (`….lora_A.weight`, `….lora_B.weight`) in host f32, as
/// [`save`] writes them and `checkpoint::adapter_artifact` ships them.
///
/// # Errors
/// Tensor errors (device copies).
pub(crate) fn tensors(ads: &Adapters) -> Result<Vec<NamedF32>, TrainError> {
    let mut out = Vec::with_capacity(2 * ads.list.len());
    for ad in &ads.list {
        let prefix = peft_prefix(ad.layer, ad.module);
        for (part, var) in [("lora_A", &ad.a), ("lora_B", &ad.b)] {
            let t = var.as_tensor().to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            out.push((format!("{prefix}.{part}.weight"), t.dims().to_vec(), t.flatten_all()?.to_vec1()?));
        }
    }
    Ok(out)
}

/// Loads a PEFT adapter directory as f32 Vars on `dev`. Every tensor must be a LoRA A/B of a
/// known projection with the shapes `spec.r` and `cfg` imply; the job's alpha and dropout apply.
///
/// # Errors
/// [`TrainError::Model`] naming the missing file, an unexpected tensor, a missing pair or a
/// shape mismatch.
pub fn load(dir: &Path, spec: &LoraSpec, cfg: &Qwen2Config, dev: &Device) -> Result<Adapters, TrainError> {
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        return Err(TrainError::Model(format!("missing adapter weights {}", path.display())));
    }
    let tensors = candle_core::safetensors::load(&path, dev)
        .map_err(|e| TrainError::Model(format!("{}: {e}", path.display())))?;
    let bad = |msg: String| TrainError::Model(format!("{}: {msg}", path.display()));
    let mut list = Vec::new();
    for layer in 0..cfg.num_hidden_layers {
        for module in Projection::ALL {
            let prefix = peft_prefix(layer, module);
            let a = tensors.get(&format!("{prefix}.lora_A.weight"));
            let b = tensors.get(&format!("{prefix}.lora_B.weight"));
            let (a, b) = match (a, b) {
                (None, None) => continue,
                (Some(a), Some(b)) => (a, b),
                _ => return Err(bad(format!("{prefix}: only one of lora_A/lora_B present"))),
            };
            let (d_in, d_out) = cfg.proj_dims(module);
            if a.dims() != [spec.r, d_in] || b.dims() != [d_out, spec.r] {
                return Err(bad(format!(
                    "{prefix}: A {:?} / B {:?}, expected [{}, {d_in}] / [{d_out}, {}]",
                    a.dims(),
                    b.dims(),
                    spec.r,
                    spec.r
                )));
            }
            list.push(Adapter {
                layer,
                module,
                a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            });
        }
    }
    if list.len() * 2 != tensors.len() {
        let known: Vec<String> = list
            .iter()
            .flat_map(|a| {
                let p = peft_prefix(a.layer, a.module);
                [format!("{p}.lora_A.weight"), format!("{p}.lora_B.weight")]
            })
            .collect();
        let extra: Vec<&String> = tensors.keys().filter(|k| !known.contains(k)).collect();
        return Err(bad(format!("unexpected tensors {extra:?}")));
    }
    if list.is_empty() {
        return Err(bad("no LoRA tensors".into()));
    }
    Adapters::from_list(spec, cfg.num_hidden_layers, list)
}

#[cfg(test)]
mod tests {
    use lorasweep_common::LoraInit;
    use safetensors::tensor::Dtype;

    use super::*;

    fn cfg() -> Qwen2Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2
        }))
        .expect("valid config")
    }

    #[test]
    fn save_then_load_round_trips_with_peft_names_and_metadata() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let spec =
            LoraSpec { targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()], ..LoraSpec::default() };
        let c = cfg();
        let ads = Adapters::init(&spec, LoraInit::OrthoQrMatch, 5, 2, &|m| c.proj_dims(m), &Device::Cpu)?;
        save(dir.path(), &ads, &spec, "tiny")?;

        let raw = std::fs::read(dir.path().join(WEIGHTS_FILE))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&raw)?;
        assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
        let st = safetensors::SafeTensors::deserialize(&raw)?;
        let mut names = st.names();
        names.sort();
        assert_eq!(names.len(), 12);
        assert!(names.contains(&"base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
        let t = st.tensor("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight")?;
        assert_eq!((t.dtype(), t.shape()), (Dtype::F32, &[8usize, 16][..]));

        let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE))?)?;
        assert_eq!(conf["r"], 8);
        assert_eq!(conf["lora_alpha"], 16.0);
        assert_eq!(conf["init_lora_weights"], true);
        assert_eq!(conf["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));

        let back = load(dir.path(), &spec, &c, &Device::Cpu)?;
        assert_eq!(back.list.len(), ads.list.len());
        for (x, y) in ads.list.iter().zip(&back.list) {
            assert_eq!((x.layer, x.module), (y.layer, y.module));
            assert_eq!(x.a.flatten_all()?.to_vec1::<f32>()?, y.a.flatten_all()?.to_vec1::<f32>()?);
            assert_eq!(x.b.flatten_all()?.to_vec1::<f32>()?, y.b.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn load_names_missing_file_and_rank_mismatch() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let err = load(dir.path(), &LoraSpec::default(), &cfg(), &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(WEIGHTS_FILE), "{err}");
        let spec = LoraSpec::default();
        let c = cfg();
        let ads = Adapters::init(&spec, LoraInit::Standard, 5, 2, &|m| c.proj_dims(m), &Device::Cpu)?;
        save(dir.path(), &ads, &spec, "tiny")?;
        let err = load(dir.path(), &LoraSpec { r: 4, ..spec }, &c, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("expected [4, 16]"), "{err}");
        Ok(())
    }
}
