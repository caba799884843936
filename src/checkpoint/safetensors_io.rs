//! Reading and writing `.safetensors` files, single or sharded (`*.index.json`).
//!
//! Key decision: the header is checked *by us* before the `safetensors` crate sees the
//! buffer, so that a header which lies (offsets past the end of the file, a shape whose
//! byte size does not match its offsets, an unsupported dtype) is reported as an error
//! naming the file and the tensor, and nothing is allocated from an untrusted size.
//! Files are memory-mapped; every float dtype in use for LMs (f32/bf16/f16/f64) is
//! converted to f32 on the CPU; the model moves tensors to their device.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path};

/// Largest header we accept (the format's own reader caps it at 100 MB).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Reads every tensor of the safetensors file at `path`, converted to f32 on the CPU.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; a file changed underneath us while loading is
    // outside what any checkpoint reader can guard against.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let buf: &[u8] = &mmap;
    check_header(buf, path)?;
    let st = SafeTensors::deserialize(buf)
        .map_err(|e| Error::checkpoint(path, format!("invalid safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.iter() {
        let dtype = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::F64 => DType::F64,
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor `{name}` has dtype {other:?}; only F32, BF16, F16 and F64 weights are supported"),
                ))
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?;
        out.insert(name.to_string(), t.to_dtype(DType::F32)?);
    }
    Ok(out)
}

/// Reads a sharded checkpoint through its index (`model.safetensors.index.json`):
/// every shard named in `weight_map` (resolved beside the index) is read once, and
/// every mapped tensor must be in the shard the index names.
pub fn read_sharded(index_path: &Path) -> Result<HashMap<String, Tensor>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(index_path, format!("not valid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::checkpoint(index_path, "missing object `weight_map`"))?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut shards: BTreeSet<&str> = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::checkpoint(
                index_path,
                format!("`weight_map.{name}`: expected a file name, found {file}"),
            )
        })?;
        let safe = Path::new(file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !safe || file.is_empty() {
            return Err(Error::checkpoint(
                index_path,
                format!("`weight_map.{name}`: shard `{file}` is not a relative path inside the checkpoint folder"),
            ));
        }
        shards.insert(file);
    }
    let mut by_shard: HashMap<&str, HashMap<String, Tensor>> = HashMap::new();
    for shard in &shards {
        let shard_path = dir.join(shard);
        if !shard_path.exists() {
            return Err(Error::checkpoint(
                index_path,
                format!(
                    "shard `{shard}` named in `weight_map` does not exist at {}",
                    shard_path.display()
                ),
            ));
        }
        by_shard.insert(shard, read_safetensors(&shard_path)?);
    }
    let mut out = HashMap::new();
    for (name, file) in map {
        let file = file.as_str().unwrap_or_default();
        let tensor = by_shard
            .get_mut(file)
            .and_then(|s| s.remove(name))
            .ok_or_else(|| {
                Error::checkpoint(
                    dir.join(file),
                    format!("index maps tensor `{name}` to this shard, but it is not in it"),
                )
            })?;
        out.insert(name.clone(), tensor);
    }
    Ok(out)
}

/// A tensor's bytes in the form the `safetensors` writer consumes.
struct Bytes {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` as f32 to `path` with header metadata `{"format": "pt"}` (what
/// transformers expects of a PyTorch checkpoint).
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        owned.push((
            name.clone(),
            Bytes {
                dtype: StDtype::F32,
                shape: t.dims().to_vec(),
                data,
            },
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(
        owned.iter().map(|(n, b)| (n.as_str(), b)),
        Some(metadata),
        path,
    )
    .map_err(|e| Error::checkpoint(path, format!("writing safetensors failed: {e}")))
}

/// Validates the header of a safetensors buffer, naming the tensor in every error.
fn check_header(buf: &[u8], path: &Path) -> Result<()> {
    let err = |msg: String| Error::checkpoint(path, msg);
    if buf.len() < 8 {
        return Err(err(format!(
            "too short to be a safetensors file ({} bytes)",
            buf.len()
        )));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    let avail = (buf.len() - 8) as u64;
    if n > avail || n > MAX_HEADER_BYTES {
        return Err(err(format!(
            "header length {n} exceeds the {avail} bytes after the length prefix (truncated or not a safetensors file)"
        )));
    }
    let header: Value = serde_json::from_slice(&buf[8..8 + n as usize])
        .map_err(|e| err(format!("header is not valid JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| err("header is not a JSON object".into()))?;
    let data_len = avail - n;
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("tensor `{name}`: missing `dtype`")))?;
        let bits: u64 = match dtype {
            "F64" | "I64" | "U64" => 64,
            "F32" | "I32" | "U32" => 32,
            "F16" | "BF16" | "I16" | "U16" => 16,
            "U8" | "I8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 8,
            other => return Err(err(format!("tensor `{name}`: unsupported dtype `{other}`"))),
        };
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|s| s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| err(format!("tensor `{name}`: missing or malformed `shape`")))?;
        let offsets = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|s| s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| {
                err(format!(
                    "tensor `{name}`: missing or malformed `data_offsets`"
                ))
            })?;
        let (start, end) = (offsets[0], offsets[1]);
        if end < start || end > data_len {
            return Err(err(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] run past the {data_len} data bytes in the file (truncated?)"
            )));
        }
        let needed = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|elems| elems.checked_mul(bits / 8));
        if needed != Some(end - start) {
            return Err(err(format!(
                "tensor `{name}`: shape {shape:?} of {dtype} needs {} bytes but data_offsets span {} bytes",
                needed.map_or("an overflowing number of".to_string(), |b| b.to_string()),
                end - start
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_raw(path: &Path, header: &str, data: &[u8]) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn lying_headers_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        // Offsets past the end of the data.
        write_raw(
            &p,
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            &[0u8; 8],
        );
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad.safetensors") && e.contains("`w`") && e.contains("truncated"),
            "{e}"
        );
        // Shape x dtype disagrees with the offsets.
        write_raw(
            &p,
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
            &[0u8; 16],
        );
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(e.contains("`w`") && e.contains("needs 12 bytes"), "{e}");
        // An absurd shape must not allocate or overflow.
        write_raw(
            &p,
            r#"{"w":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,16]}}"#,
            &[0u8; 16],
        );
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(e.contains("`w`") && e.contains("overflowing"), "{e}");
        // Header length larger than the file.
        std::fs::write(&p, 1_000_000u64.to_le_bytes()).unwrap();
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(e.contains("header length"), "{e}");
        // Too short.
        std::fs::write(&p, b"abc").unwrap();
        assert!(read_safetensors(&p)
            .unwrap_err()
            .to_string()
            .contains("too short"));
        // Unsupported dtype.
        write_raw(
            &p,
            r#"{"w":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0u8; 4],
        );
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(e.contains("`w`") && e.contains("I32"), "{e}");
    }

    #[test]
    fn write_then_read_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let t = Tensor::arange(0f32, 12f32, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        write_safetensors(&p, &[("a.weight".into(), t.clone())]).unwrap();
        let back = read_safetensors(&p).unwrap();
        assert_eq!(
            back["a.weight"].to_vec2::<f32>().unwrap(),
            t.to_vec2::<f32>().unwrap()
        );
        let bytes = std::fs::read(&p).unwrap();
        let st_meta = SafeTensors::read_metadata(&bytes).unwrap().1;
        assert_eq!(st_meta.metadata().as_ref().unwrap()["format"], "pt");
    }
}
