//! `smelt::ops::fused_attention` against its slow reference, finite differences, and
//! the semantics it promises (packed documents, decode with a KV cache, left padding).
//!
//! (1) f32 on random shapes (GQA ratios 1, 3, 4; odd lengths incl. 1 and longer than a
//! query block; several documents per row; `Tq < Tk` decode; left padding): the output
//! and the q/k/v gradients of a weighted sum equal `reference_attention`'s within 1e-5
//! relative (max-norm). (2) f64: the backward equals a central finite difference of the
//! forward within 1e-6. (3) A row of packed documents gives, per document, exactly what
//! that document gives alone.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::ops::{max_rel_err, rand_t, value_and_grads};
use smelt::ops::{fused_attention, reference_attention};

/// `max |a − b| / max(max |b|, 1e-2)`: relative in max-norm (values here are O(1)), absolute where the
/// values vanish analytically (a query that sees a single key has `dq = 0`).
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    max_rel_err(a, b, 1e-2)
}

/// One attention problem: shapes and the document id of every key slot.
struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
    /// Per row, document lengths covering `tk` slots (`None`: one document per row).
    docs: Option<Vec<Vec<usize>>>,
}

impl Case {
    fn segments(&self) -> Option<Tensor> {
        let docs = self.docs.as_ref()?;
        let ids: Vec<u32> = docs
            .iter()
            .flat_map(|row| {
                assert_eq!(
                    row.iter().sum::<usize>(),
                    self.tk,
                    "case docs must cover Tk"
                );
                row.iter()
                    .enumerate()
                    .flat_map(|(i, &len)| std::iter::repeat_n(i as u32 + 7, len))
            })
            .collect();
        Some(Tensor::from_vec(ids, (self.b, self.tk), &Device::Cpu).unwrap())
    }

    fn qkv(&self, seed: u64, dtype: DType) -> [Tensor; 3] {
        [
            rand_t(&[self.b, self.hq, self.tq, self.d], seed, 2.0, dtype),
            rand_t(&[self.b, self.hkv, self.tk, self.d], seed + 1, 2.0, dtype),
            rand_t(&[self.b, self.hkv, self.tk, self.d], seed + 2, 1.0, dtype),
        ]
    }
}

fn case(b: usize, hq: usize, hkv: usize, tq: usize, tk: usize, d: usize) -> Case {
    Case {
        b,
        hq,
        hkv,
        tq,
        tk,
        d,
        docs: None,
    }
}

fn with_docs(c: Case, docs: &[&[usize]]) -> Case {
    Case {
        docs: Some(docs.iter().map(|r| r.to_vec()).collect()),
        ..c
    }
}

#[test]
fn fused_matches_reference_on_random_shapes() {
    let cases = [
        case(2, 3, 3, 7, 7, 8),                                      // GQA 1, odd T
        case(3, 4, 1, 1, 1, 4),                                      // T = 1
        with_docs(case(2, 9, 3, 33, 33, 16), &[&[5, 20, 8], &[33]]), // GQA 3, documents
        with_docs(case(1, 4, 1, 130, 130, 8), &[&[1, 64, 60, 5]]),   // GQA 4, > one block
        case(2, 6, 2, 1, 37, 8),                                     // decode Tq = 1
        with_docs(case(2, 4, 1, 1, 37, 8), &[&[4, 33], &[37]]),      // decode, left padding
        with_docs(case(2, 6, 2, 5, 70, 8), &[&[9, 61], &[1, 69]]),   // decode 5 tokens, padding
        with_docs(case(1, 3, 1, 129, 200, 8), &[&[71, 60, 69]]),     // Tq < Tk over blocks
        case(1, 9, 3, 256, 256, 64),                                 // SmolLM2 head shape
    ];
    for (n, c) in cases.iter().enumerate() {
        let seg = c.segments();
        let scale = 1.0 / (c.d as f64).sqrt();
        let what = format!(
            "case {n} (B {}, Hq {}, Hkv {}, Tq {}, Tk {}, D {})",
            c.b, c.hq, c.hkv, c.tq, c.tk, c.d
        );
        let (yf, gf) = value_and_grads(&c.qkv(100 + n as u64, DType::F32), &|a| {
            fused_attention(&a[0], &a[1], &a[2], seg.as_ref(), scale)
        });
        let (yr, gr) = value_and_grads(&c.qkv(100 + n as u64, DType::F32), &|a| {
            reference_attention(&a[0], &a[1], &a[2], seg.as_ref(), scale)
        });
        assert_eq!(yf.dims(), [c.b, c.hq, c.tq, c.d], "{what}: output shape");
        assert!(yf.is_contiguous(), "{what}: fused output is a strided view");
        let e = rel_err(&yf, &yr);
        assert!(e <= 1e-5, "{what}: forward rel err {e:e}");
        for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
            assert_eq!(a.dims(), b.dims(), "{what}: grad {i} shape");
            let e = rel_err(a, b);
            assert!(
                e <= 1e-5,
                "{what}: grad of {} rel err {e:e}",
                ["q", "k", "v"][i]
            );
        }
    }
}

/// Fused backward vs central finite differences of the fused forward, in f64.
fn assert_fd(what: &str, c: &Case, seed: u64) {
    let seg = c.segments();
    let f = |a: &[Tensor]| fused_attention(&a[0], &a[1], &a[2], seg.as_ref(), 0.7);
    let inputs = c.qkv(seed, DType::F64);
    let (out, grads) = value_and_grads(&inputs, &f);
    let w = rand_t(out.dims(), 99, 1.0, DType::F64);
    let eps = 1e-6;
    for (i, x) in inputs.iter().enumerate() {
        let x0: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f64> = grads[i].flatten_all().unwrap().to_vec1().unwrap();
        let mut nonzero = 0;
        for j in 0..x0.len() {
            let eval = |dx: f64| {
                let mut xs = x0.clone();
                xs[j] += dx;
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
                "{what}: {} elem {j}: fd {fd} vs backward {}",
                ["q", "k", "v"][i],
                g[j]
            );
            nonzero += usize::from(fd.abs() > 1e-9);
        }
        assert!(nonzero > 0, "{what}: all gradients of input {i} vanish");
    }
}

#[test]
fn fused_backward_matches_finite_differences() {
    // GQA 2, decode-style Tq < Tk, two documents
    assert_fd(
        "small",
        &with_docs(case(2, 4, 2, 5, 7, 3), &[&[3, 4], &[7]]),
        1,
    );
    // more queries than one block, GQA 3, three documents
    assert_fd(
        "blocks",
        &with_docs(case(1, 3, 1, 70, 70, 2), &[&[30, 35, 5]]),
        2,
    );
}

/// Query/key slices `a..z` of a (B, H, T, D) tensor for batch row `row`.
fn doc_slice(x: &Tensor, row: usize, a: usize, z: usize) -> Tensor {
    x.narrow(0, row, 1).unwrap().narrow(2, a, z - a).unwrap()
}

/// Gradients of `Σ f(inputs) ∘ w` w.r.t. `inputs`, with the output.
fn weighted_grads(
    inputs: &[Tensor],
    w: &Tensor,
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts).unwrap();
    let grads = (&out * w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
    (out, g)
}

/// `max |a − b|` over `max |whole|`: a slice's error relative to the whole tensor's scale.
fn slice_err(a: &Tensor, b: &Tensor, whole: &Tensor) -> f64 {
    let max = |t: &Tensor| {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    max(&(a - b).unwrap()) / max(whole)
}

#[test]
fn packed_documents_equal_each_document_alone() {
    let c = with_docs(case(2, 6, 2, 130, 130, 8), &[&[5, 40, 19, 66], &[1, 129]]);
    let [q, k, v] = c.qkv(7, DType::F32);
    let w = rand_t(&[c.b, c.hq, c.tq, c.d], 99, 1.0, DType::F32);
    let seg = c.segments();
    let (out, grads) = weighted_grads(&[q.clone(), k.clone(), v.clone()], &w, &|a| {
        fused_attention(&a[0], &a[1], &a[2], seg.as_ref(), 0.3)
    });
    for (row, docs) in c.docs.as_ref().unwrap().iter().enumerate() {
        let mut a = 0;
        for &len in docs {
            let z = a + len;
            let inputs = [
                doc_slice(&q, row, a, z),
                doc_slice(&k, row, a, z),
                doc_slice(&v, row, a, z),
            ];
            let (alone, alone_grads) = weighted_grads(&inputs, &doc_slice(&w, row, a, z), &|t| {
                fused_attention(&t[0], &t[1], &t[2], None, 0.3)
            });
            let e = slice_err(&doc_slice(&out, row, a, z), &alone, &out);
            assert!(e <= 1e-6, "row {row} doc {a}..{z}: output rel err {e:e}");
            for (i, g) in grads.iter().enumerate() {
                let e = slice_err(&doc_slice(g, row, a, z), &alone_grads[i], g);
                assert!(e <= 1e-6, "row {row} doc {a}..{z}: grad {i} rel err {e:e}");
            }
            a = z;
        }
    }
}

#[test]
fn left_padded_decode_equals_unpadded() {
    // row 0: 6 pad slots then 31 real keys; its last query must ignore the padding
    let c = with_docs(case(1, 4, 2, 3, 37, 8), &[&[6, 31]]);
    let [q, k, v] = c.qkv(11, DType::F32);
    let padded = fused_attention(&q, &k, &v, c.segments().as_ref(), 0.35).unwrap();
    let k_real = k.narrow(2, 6, 31).unwrap();
    let v_real = v.narrow(2, 6, 31).unwrap();
    let alone = fused_attention(&q, &k_real, &v_real, None, 0.35).unwrap();
    let e = rel_err(&padded, &alone);
    assert!(
        e <= 1e-6,
        "left padding leaks into attention: rel err {e:e}"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let c = case(1, 3, 2, 4, 4, 2);
    let [q, k, v] = c.qkv(1, DType::F32);
    let err = fused_attention(&q, &k, &v, None, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a multiple"), "{err}");

    let c = case(1, 2, 1, 5, 4, 2);
    let [q, k, v] = c.qkv(1, DType::F32);
    let err = fused_attention(&q, &k, &v, None, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Tq <= Tk"), "{err}");

    let c = case(1, 2, 1, 4, 4, 2);
    let [q, k, v] = c.qkv(1, DType::F32);
    let seg = Tensor::from_vec(vec![0u32, 1, 0, 1], (1, 4), &Device::Cpu).unwrap();
    let err = fused_attention(&q, &k, &v, Some(&seg), 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 0 decreases at slot 2"), "{err}");

    let seg = Tensor::zeros((1, 3), DType::U32, &Device::Cpu).unwrap();
    let err = fused_attention(&q, &k, &v, Some(&seg), 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("segments [1, 3]"), "{err}");
}
