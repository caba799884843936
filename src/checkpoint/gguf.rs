//! GGUF import: a llama.cpp file (any of candle's quant types) to HF-named f32 tensors.
//!
//! Key decisions:
//! - The whole file is validated *before* any tensor data is touched: the magic, the
//!   header (parsed by candle's reader over a memory map), then for every tensor its
//!   byte range against the file length and its shape against the config that the
//!   GGUF metadata describes. A file cut short anywhere is an error naming the file
//!   (and the first tensor that does not fit), never a panic or an allocation sized by
//!   an untrusted header. candle's header reader is bounds-checked but can still
//!   panic on a zero `general.alignment`, so it alone runs under `catch_unwind`.
//! - llama.cpp's converter permutes the rows of Llama `q_proj`/`k_proj` for its
//!   interleaved rope; the import undoes it exactly as transformers' GGUF loader does
//!   (`LlamaTensorProcessor._reverse_permute_weights`: `reshape(n_head, d/2, 2, in)`,
//!   swap axes 1 and 2; `k` uses `n_head_kv`). Qwen GGUFs are not permuted.
//! - The config is built as an HF `config.json` value and parsed by
//!   [`ModelConfig::from_json`], so GGUF and folder loads share one validator.

use super::gguf_config::{config_from_metadata, Meta};
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{ggml_file, GgmlDType};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// What a GGUF file holds, converted to smelt's terms.
pub struct GgufImport {
    /// The model configuration described by the `<arch>.*` metadata.
    pub config: ModelConfig,
    /// Every parameter under its HF name, dequantized to f32 on the CPU.
    pub tensors: HashMap<String, Tensor>,
    /// The raw metadata (tokenizer vocabulary, merges, chat template, ...).
    pub metadata: HashMap<String, Value>,
}

/// Reads, validates and dequantizes the GGUF file at `path`.
pub fn read_gguf(path: &Path) -> Result<GgufImport> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map; see `safetensors_io::read_safetensors`.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let buf: &[u8] = &mmap;
    if buf.len() < 4 || &buf[..4] != b"GGUF" {
        let head: Vec<u8> = buf.iter().take(4).copied().collect();
        return Err(Error::checkpoint(
            path,
            format!(
                "not a GGUF file: expected magic `GGUF`, found {:?}",
                String::from_utf8_lossy(&head)
            ),
        ));
    }
    let content = read_header(buf, path)?;
    let arch = Meta {
        md: &content.metadata,
        path,
    }
    .string("general.architecture")?
    .unwrap_or_default()
    .to_string();
    let config = config_from_metadata(&content, path)?;

    // Validate every tensor's byte range and shape before reading any data.
    let expected: HashMap<String, Vec<usize>> =
        Model::expected_parameters(&config).into_iter().collect();
    let mut plan = Vec::with_capacity(content.tensor_infos.len());
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims().to_vec();
        let (start, size) = byte_range(
            name,
            info.ggml_dtype,
            &dims,
            info.offset,
            content.tensor_data_offset,
            path,
        )?;
        plan.push((start, size, name.as_str(), info.ggml_dtype, dims));
    }
    plan.sort_by_key(|p| p.0);
    for &(start, size, name, _, _) in &plan {
        let end = start + size;
        if end > buf.len() as u64 {
            return Err(Error::checkpoint(
                path,
                format!(
                    "truncated: tensor `{name}` needs bytes up to {end} but the file has {}",
                    buf.len()
                ),
            ));
        }
    }
    let mut mapped = Vec::with_capacity(plan.len());
    for (start, size, name, dtype, dims) in plan {
        let hf = hf_name(name, path)?;
        match expected.get(&hf) {
            Some(shape) if *shape == dims => {}
            Some(shape) => {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor `{name}` (HF `{hf}`) has shape {dims:?} but the GGUF metadata's config expects {shape:?}"),
                ))
            }
            None => {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor `{name}` maps to `{hf}`, which is not a parameter of the config in this file's metadata"),
                ))
            }
        }
        mapped.push((start as usize, size as usize, name, hf, dtype, dims));
    }
    if let Some((missing, _)) = expected
        .iter()
        .find(|(n, _)| !mapped.iter().any(|m| &m.3 == *n))
    {
        return Err(Error::checkpoint(
            path,
            format!("missing tensor for HF parameter `{missing}`"),
        ));
    }

    let mut tensors = HashMap::with_capacity(mapped.len());
    for (start, size, name, hf, dtype, dims) in mapped {
        let t = dequantize_raw(dtype, &buf[start..start + size], dims).map_err(|e| {
            Error::checkpoint(
                path,
                format!(
                    "tensor `{name}` ({dtype:?}): cannot dequantize: {}",
                    plain(&e)
                ),
            )
        })?;
        let is = |part: &str| {
            name.ends_with(&format!(".{part}.weight")) || name.ends_with(&format!(".{part}.bias"))
        };
        let t = if arch == "llama" && is("attn_q") {
            unpermute(&t, config.num_attention_heads, name, path)?
        } else if arch == "llama" && is("attn_k") {
            unpermute(&t, config.num_key_value_heads, name, path)?
        } else {
            t
        };
        tensors.insert(hf, t);
    }
    Ok(GgufImport {
        config,
        tensors,
        metadata: content.metadata,
    })
}

/// Parses the header with candle's reader, turning its errors (and, as a last
/// resort, its panics) into errors naming the file.
fn read_header(buf: &[u8], path: &Path) -> Result<Content> {
    let parsed = std::panic::catch_unwind(|| Content::read(&mut std::io::Cursor::new(buf)));
    match parsed {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Error::checkpoint(
            path,
            format!("truncated or malformed GGUF header: {}", plain(&e)),
        )),
        Err(_) => Err(Error::checkpoint(
            path,
            "malformed GGUF header (the reader rejected it)",
        )),
    }
}

/// A candle error's message without the backtrace candle attaches when
/// `RUST_BACKTRACE` is set (it would flood a one-line user error).
fn plain(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => plain(inner),
        candle_core::Error::Context { inner, context } => format!("{context}: {}", plain(inner)),
        other => other.to_string(),
    }
}

/// Absolute start and byte size of a tensor, with every product checked.
fn byte_range(
    name: &str,
    dtype: GgmlDType,
    dims: &[usize],
    offset: u64,
    data_start: u64,
    path: &Path,
) -> Result<(u64, u64)> {
    let err = |msg: String| Error::checkpoint(path, format!("tensor `{name}`: {msg}"));
    let elems = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| err(format!("shape {dims:?} overflows")))?;
    let block = dtype.block_size() as u64;
    if dims
        .last()
        .is_none_or(|&d| !(d as u64).is_multiple_of(block))
    {
        return Err(err(format!("shape {dims:?}: innermost dimension is not a multiple of the {dtype:?} block size {block}")));
    }
    let size = (elems / block)
        .checked_mul(dtype.type_size() as u64)
        .ok_or_else(|| err(format!("shape {dims:?} overflows")))?;
    let start = data_start
        .checked_add(offset)
        .ok_or_else(|| err(format!("offset {offset} overflows")))?;
    start
        .checked_add(size)
        .ok_or_else(|| err(format!("offset {offset} + size {size} overflows")))?;
    Ok((start, size))
}

/// Dequantizes one tensor's raw GGML bytes (`raw.len()` must be its exact size) to f32.
pub fn dequantize_raw(
    dtype: GgmlDType,
    raw: &[u8],
    dims: Vec<usize>,
) -> candle_core::Result<Tensor> {
    // candle reinterprets the bytes as blocks in place, so they must be aligned.
    if (raw.as_ptr() as usize).is_multiple_of(8) {
        ggml_file::qtensor_from_ggml(dtype, raw, dims, &Device::Cpu)?.dequantize(&Device::Cpu)
    } else {
        let mut aligned = vec![0u64; raw.len().div_ceil(8)];
        // SAFETY: `aligned` owns at least `raw.len()` initialised bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(aligned.as_mut_ptr() as *mut u8, raw.len()) };
        bytes.copy_from_slice(raw);
        ggml_file::qtensor_from_ggml(dtype, bytes, dims, &Device::Cpu)?.dequantize(&Device::Cpu)
    }
}

/// Undoes llama.cpp's rope permutation of q/k rows (see the module header).
pub fn unpermute(w: &Tensor, n_head: usize, name: &str, path: &Path) -> Result<Tensor> {
    let rows = w.dim(0)?;
    if n_head == 0 || rows % (2 * n_head) != 0 {
        return Err(Error::checkpoint(
            path,
            format!(
                "tensor `{name}`: {rows} rows cannot be split into {n_head} heads of rope pairs"
            ),
        ));
    }
    let mut shape = vec![n_head, rows / n_head / 2, 2];
    shape.extend_from_slice(&w.dims()[1..]);
    Ok(w.reshape(shape)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(w.shape())?)
}

/// The HF name of a GGUF tensor, or an error naming the unsupported tensor.
fn hf_name(gguf: &str, path: &Path) -> Result<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "rope_freqs.weight" => {
            return Err(Error::checkpoint(
                path,
                "tensor `rope_freqs.weight` (Llama 3.x rope scaling factors) is not supported by the GGUF import",
            ))
        }
        _ => None,
    };
    if let Some(s) = simple {
        return Ok(s.to_string());
    }
    let unsupported = || {
        Error::checkpoint(
            path,
            format!("tensor `{gguf}` has no HF equivalent in the supported architectures"),
        )
    };
    let rest = gguf.strip_prefix("blk.").ok_or_else(unsupported)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(unsupported)?;
    let layer: usize = layer.parse().map_err(|_| unsupported())?;
    let (part, kind) = rest.rsplit_once('.').ok_or_else(unsupported)?;
    if kind != "weight" && kind != "bias" {
        return Err(unsupported());
    }
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return Err(unsupported()),
    };
    Ok(format!("model.layers.{layer}.{hf}.{kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn dequantizes_q8_0_block_by_hand() {
        // Q8_0 block: f16 scale d, then 32 signed bytes; x[j] = d * q[j].
        let mut raw = f16::from_f32(0.5).to_le_bytes().to_vec();
        raw.extend((-16i8..16).map(|q| q as u8));
        let t = dequantize_raw(GgmlDType::Q8_0, &raw, vec![32]).unwrap();
        let want: Vec<f32> = (-16..16).map(|q| 0.5 * q as f32).collect();
        assert_eq!(t.to_vec1::<f32>().unwrap(), want);
    }

    #[test]
    fn dequantizes_q4_1_block_by_hand() {
        // Q4_1 block: f16 d, f16 m, 16 bytes; x[j] = lo(q[j])*d + m, x[j+16] = hi(q[j])*d + m.
        let mut raw = f16::from_f32(0.25).to_le_bytes().to_vec();
        raw.extend(f16::from_f32(-1.0).to_le_bytes());
        raw.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
        // Unaligned on purpose (offset 1) to exercise the aligned copy.
        let mut shifted = vec![0u8];
        shifted.extend(&raw);
        let t = dequantize_raw(GgmlDType::Q4_1, &shifted[1..], vec![32]).unwrap();
        let mut want: Vec<f32> = (0..16).map(|j| j as f32 * 0.25 - 1.0).collect();
        want.extend((0..16).map(|j| (15 - j) as f32 * 0.25 - 1.0));
        assert_eq!(t.to_vec1::<f32>().unwrap(), want);
    }

    #[test]
    fn maps_names() {
        let p = Path::new("x.gguf");
        assert_eq!(
            hf_name("blk.3.attn_output.weight", p).unwrap(),
            "model.layers.3.self_attn.o_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k_norm.weight", p).unwrap(),
            "model.layers.0.self_attn.k_norm.weight"
        );
        assert_eq!(
            hf_name("blk.1.attn_q.bias", p).unwrap(),
            "model.layers.1.self_attn.q_proj.bias"
        );
        assert_eq!(hf_name("output.weight", p).unwrap(), "lm_head.weight");
        let e = hf_name("blk.0.ffn_gate_exps.weight", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.gguf") && e.contains("ffn_gate_exps"), "{e}");
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, rows/n_head/2, in).swapaxes(1, 2).reshape(rows, in)
        let (n_head, rows, cols) = (2, 8, 3);
        let w = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let permuted = w
            .reshape((n_head, 2, rows / n_head / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        assert_ne!(
            permuted.to_vec2::<f32>().unwrap(),
            w.to_vec2::<f32>().unwrap()
        );
        let back = unpermute(&permuted, n_head, "q", Path::new("x")).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
