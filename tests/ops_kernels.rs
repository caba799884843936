//! The fused kernels of `smelt::ops` against their slow references and against
//! finite differences.
//!
//! Each op is checked twice: (1) f32, random shapes (odd lengths, several heads,
//! several documents per row): forward output and every input gradient of a weighted
//! sum of the output equal the reference composition's within 1e-5 relative
//! (max-norm); (2) f64, small shapes: the fused backward equals a central finite
//! difference of the fused forward within 1e-6.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::ops::{max_rel_err, rand_t, rand_vec, value_and_grads};
use smelt::ops;
use smelt::ops::Precision::{Bf16Autocast, F32};

/// `max |a − b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    max_rel_err(a, b, 1e-30)
}

/// Fused vs reference in f32: output and all gradients within 1e-5 relative.
fn assert_matches_reference(
    what: &str,
    inputs: &[Tensor],
    fused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    reference: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) {
    let (yf, gf) = value_and_grads(inputs, fused);
    let (yr, gr) = value_and_grads(inputs, reference);
    assert_eq!(yf.dims(), yr.dims(), "{what}: output shape");
    let e = rel_err(&yf, &yr);
    assert!(e <= 1e-5, "{what}: forward rel err {e:e}");
    for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
        assert_eq!(a.dims(), b.dims(), "{what}: grad {i} shape");
        let e = rel_err(a, b);
        assert!(e <= 1e-5, "{what}: grad of input {i} rel err {e:e}");
    }
}

/// Fused backward vs central finite differences of the fused forward, in f64.
fn assert_fd(what: &str, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) {
    let (out, grads) = value_and_grads(inputs, f);
    let w = rand_t(out.dims(), 99, 1.0, DType::F64);
    let eps = 1e-6;
    for (i, x) in inputs.iter().enumerate() {
        let x0: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f64> = grads[i].flatten_all().unwrap().to_vec1().unwrap();
        for j in 0..x0.len() {
            let eval = |d: f64| {
                let mut xs = x0.clone();
                xs[j] += d;
                let mut args = inputs.to_vec();
                args[i] = Tensor::from_vec(xs, x.dims(), &Device::Cpu).unwrap();
                (f(&args).unwrap() * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[j]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{what}: input {i} elem {j}: fd {fd} vs backward {}",
                g[j]
            );
        }
    }
}

#[test]
fn rms_norm_matches_reference_and_fd() {
    for (k, shape) in [[3usize, 7, 33], [2, 1, 576], [1, 5, 9]].iter().enumerate() {
        let h = shape[2];
        let x = rand_t(shape, 1 + k as u64, 2.0, DType::F32);
        let w = rand_t(&[h], 7 + k as u64, 1.5, DType::F32);
        assert_matches_reference(
            &format!("rms_norm {shape:?}"),
            &[x, w],
            &|a| ops::fused_rms_norm(&a[0], &a[1], 1e-5),
            &|a| ops::rms_norm(&a[0], &a[1], 1e-5),
        );
    }
    let x = rand_t(&[3, 5], 3, 2.0, DType::F64);
    let w = rand_t(&[5], 4, 1.5, DType::F64);
    assert_fd("rms_norm f64", &[x, w], &|a| {
        ops::fused_rms_norm(&a[0], &a[1], 1e-5)
    });
}

#[test]
fn swiglu_matches_reference_and_fd() {
    for (k, shape) in [[4usize, 37], [256, 1536], [1, 3]].iter().enumerate() {
        let g = rand_t(shape, 11 + k as u64, 4.0, DType::F32);
        let u = rand_t(shape, 21 + k as u64, 2.0, DType::F32);
        assert_matches_reference(
            &format!("swiglu {shape:?}"),
            &[g, u],
            &|a| ops::fused_swiglu(&a[0], &a[1]),
            &|a| ops::swiglu(&a[0], &a[1]),
        );
    }
    let g = rand_t(&[2, 5], 5, 4.0, DType::F64);
    let u = rand_t(&[2, 5], 6, 2.0, DType::F64);
    assert_fd("swiglu f64", &[g, u], &|a| ops::fused_swiglu(&a[0], &a[1]));
}

/// Tables for rows that pack several documents (positions restart at each).
fn rope_tables(positions: &[Vec<u32>], d: usize, dtype: DType) -> (Tensor, Tensor) {
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32))
        .collect();
    let (c, s) = smelt::model::rope::tables(&inv, positions, &Device::Cpu).unwrap();
    (c.to_dtype(dtype).unwrap(), s.to_dtype(dtype).unwrap())
}

#[test]
fn rope_matches_reference_and_fd_with_packed_documents() {
    // (B, NH, T, D): odd T, 1/3/9 heads (query and key head counts of GQA 1, 3)
    for (k, &(b, nh, t, d)) in [
        (2usize, 3usize, 7usize, 8usize),
        (1, 9, 13, 64),
        (3, 1, 5, 2),
    ]
    .iter()
    .enumerate()
    {
        let positions: Vec<Vec<u32>> = (0..b)
            .map(|r| {
                // row r packs documents of lengths 3, 2, then the rest
                (0..t as u32)
                    .map(|i| match i {
                        0..=2 => i,
                        3..=4 => i - 3,
                        _ => i - 5 + r as u32,
                    })
                    .collect()
            })
            .collect();
        let (cos, sin) = rope_tables(&positions, d, DType::F32);
        let x = rand_t(&[b, nh, t, d], 31 + k as u64, 2.0, DType::F32);
        let (c2, s2) = (cos.clone(), sin.clone());
        assert_matches_reference(
            &format!("rope {:?}", (b, nh, t, d)),
            &[x],
            &|a| ops::fused_rope(&a[0], &cos, &sin),
            &|a| ops::apply_rope(&a[0], &c2, &s2),
        );
    }
    let positions = vec![vec![0u32, 1, 2, 0, 1], vec![0, 1, 0, 1, 2]];
    let (cos, sin) = rope_tables(&positions, 4, DType::F64);
    let x = rand_t(&[2, 2, 5, 4], 41, 2.0, DType::F64);
    assert_fd("rope f64", &[x], &|a| ops::fused_rope(&a[0], &cos, &sin));
}

fn labels_with_ignored(n: usize, v: usize, seed: u64) -> Tensor {
    let ls: Vec<i64> = rand_vec(n, seed, 1.0)
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if i % 5 == 3 {
                ops::IGNORE_INDEX
            } else {
                ((r.abs() * v as f64) as i64).min(v as i64 - 1)
            }
        })
        .collect();
    Tensor::from_vec(ls, n, &Device::Cpu).unwrap()
}

#[test]
fn linear_cross_entropy_matches_reference_and_fd() {
    // (N, H, V, chunk): chunks that do and do not divide V, one chunk, V-wide chunk
    for (k, &(n, h, v, chunk)) in [
        (13usize, 16usize, 50usize, 7usize),
        (64, 32, 300, 128),
        (5, 8, 11, 64),
    ]
    .iter()
    .enumerate()
    {
        let hid = rand_t(&[n, h], 51 + k as u64, 2.0, DType::F32);
        let w = rand_t(&[v, h], 61 + k as u64, 1.0, DType::F32);
        let labels = labels_with_ignored(n, v, 71 + k as u64);
        let l2 = labels.clone();
        // per-token NLL, so the per-token upstream gradient path is exercised
        assert_matches_reference(
            &format!("linear_cross_entropy {:?}", (n, h, v, chunk)),
            &[hid.clone(), w.clone()],
            &|a| Ok(ops::linear_cross_entropy(&a[0], &a[1], &labels, chunk, F32)?.nll),
            &|a| {
                let logits = ops::linear(&a[0], &a[1], None)?;
                let lse = ops::reference::softmax_last_dim(&logits)?.log()?; // (N, V) log p
                let mask = l2.ge(0i64)?;
                let safe = mask
                    .where_cond(&l2, &l2.zeros_like()?)?
                    .to_dtype(DType::U32)?;
                let picked = lse.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
                picked.neg()? * mask.to_dtype(DType::F32)?
            },
        );
        // summed form: same value, count and accuracy as cross_entropy_sum
        let (s, count, correct) = ops::linear_cross_entropy_sum(&hid, &w, &labels).unwrap();
        let logits = ops::linear(&hid, &w, None).unwrap();
        let (rs, rcount, rcorrect) = ops::cross_entropy_sum(&logits, &labels).unwrap();
        assert!(rel_err(&s, &rs) <= 1e-5);
        assert_eq!((count, correct), (rcount, rcorrect));
    }
    let hid = rand_t(&[4, 3], 81, 2.0, DType::F64);
    let w = rand_t(&[9, 3], 82, 1.0, DType::F64);
    let labels = labels_with_ignored(4, 9, 83);
    assert_fd("linear_cross_entropy f64", &[hid, w], &|a| {
        Ok(ops::linear_cross_entropy(&a[0], &a[1], &labels, 4, F32)?.nll)
    });
}

/// Under bf16 autocast the loss is the f32 loss of the bf16-rounded hidden states and
/// weight (the GEMM inputs are rounded, accumulation stays f32), and the gradients
/// track the f32 ones within bf16 rounding (the upstream `dlogits` is rounded too).
#[test]
fn linear_cross_entropy_under_bf16_autocast_is_the_loss_of_rounded_inputs() {
    let (n, h, v, chunk) = (64usize, 32usize, 300usize, 128usize);
    let hid = rand_t(&[n, h], 52, 2.0, DType::F32);
    let w = rand_t(&[v, h], 62, 1.0, DType::F32);
    let labels = labels_with_ignored(n, v, 72);
    let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
    let (y16, g16) = value_and_grads(&[hid.clone(), w.clone()], &|a| {
        Ok(ops::linear_cross_entropy(&a[0], &a[1], &labels, chunk, Bf16Autocast)?.nll)
    });
    let y_rounded = ops::linear_cross_entropy(
        &round(&hid).unwrap(),
        &round(&w).unwrap(),
        &labels,
        chunk,
        F32,
    )
    .unwrap()
    .nll;
    let e = rel_err(&y16, &y_rounded);
    assert!(e <= 1e-5, "bf16 loss vs f32 loss of rounded inputs: {e:e}");
    let (y32, g32) = value_and_grads(&[hid, w], &|a| {
        Ok(ops::linear_cross_entropy(&a[0], &a[1], &labels, chunk, F32)?.nll)
    });
    let e = rel_err(&y16, &y32);
    assert!(
        e > 0.0 && e <= 2e-2,
        "bf16 vs f32 loss: {e:e} (0 would mean no rounding happened)"
    );
    for (i, (a, b)) in g16.iter().zip(&g32).enumerate() {
        assert_eq!(a.dtype(), DType::F32);
        let e = rel_err(a, b);
        assert!(e <= 2e-2, "grad {i}: bf16 vs f32 rel err {e:e}");
    }
}

#[test]
fn linear_cross_entropy_rejects_out_of_range_label() {
    let hid = rand_t(&[2, 3], 1, 1.0, DType::F32);
    let w = rand_t(&[5, 3], 2, 1.0, DType::F32);
    let labels = Tensor::from_vec(vec![1i64, 5], 2, &Device::Cpu).unwrap();
    let err = ops::linear_cross_entropy(&hid, &w, &labels, 2, F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 5 out of range"), "{err}");
}
