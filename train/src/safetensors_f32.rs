//! The one writer of f32 safetensors in the workspace: PEFT adapter files, adapter artifacts,
//! checkpoints and the tiny generated models all go through [`serialize`].

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};

/// One named f32 tensor: `(name, shape, row-major values)`.
pub(crate) type NamedF32 = (String, Vec<usize>, Vec<f32>);

/// Serialises `tensors` (little-endian f32) with `metadata` in the header.
///
/// # Errors
/// A message naming the tensor whose values do not fill its shape.
pub(crate) fn serialize<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f32])>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let raw: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| (name, shape, values.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = raw
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.to_vec(), bytes)
                .map(|v| (name.to_string(), v))
                .map_err(|e| format!("{name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// [`serialize`] of a list of [`NamedF32`].
///
/// # Errors
/// As [`serialize`].
pub(crate) fn serialize_named(tensors: &[NamedF32], metadata: HashMap<String, String>) -> Result<Vec<u8>, String> {
    serialize(tensors.iter().map(|(n, s, v)| (n.as_str(), &s[..], &v[..])), metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_values_shapes_and_metadata() -> anyhow::Result<()> {
        let (a, b) = (vec![1.0f32, -2.5, 3.25, 0.0, 5.0, 6.0], vec![7.0f32]);
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes =
            serialize([("a", &[2usize, 3][..], &a[..]), ("b", &[1][..], &b[..])], meta).map_err(anyhow::Error::msg)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
        assert_eq!(header.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        let t = st.tensor("a")?;
        assert_eq!((t.dtype(), t.shape()), (Dtype::F32, &[2usize, 3][..]));
        let back: Vec<f32> = t.data().chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(back, a);
        let short = serialize([("c", &[4usize][..], &b[..])], HashMap::new()).unwrap_err();
        assert!(short.contains('c'), "{short}");
        Ok(())
    }
}
