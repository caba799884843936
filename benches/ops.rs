//! Microbenchmarks of every op in `smelt::ops`, forward and backward, fused kernel
//! beside its slow reference, at the shapes of one SmolLM2-135M layer with a batch of
//! 4 × 256 tokens (hidden 576, 9 query / 3 key-value heads of 64, MLP 1536, vocab
//! 49,152).
//!
//! Run: `cargo bench -p smelt --bench ops` (filter: `cargo bench -p smelt --bench ops
//! -- attention`). Each bench takes a few short samples so the whole file stays quick;
//! pass `--sample-count N` for steadier numbers.
//!
//! Key decision: a backward bench times `loss.backward()` alone; the forward that
//! builds its graph runs outside the timed region (divan's `with_inputs`).

use candle_core::{Device, Tensor, Var};
use divan::Bencher;
use smelt::ops;

/// SmolLM2-135M shapes.
const B: usize = 4;
const T: usize = 256;
const HIDDEN: usize = 576;
const HQ: usize = 9;
const HKV: usize = 3;
const HEAD: usize = 64;
const MLP: usize = 1536;
const VOCAB: usize = 49_152;
/// Tokens of the long-context attention benches (batch 1).
const LONG: usize = 2048;
/// Tokens of the linear + cross-entropy benches (one row: the full batch would take
/// seconds per sample).
const LCE_TOKENS: usize = 256;

fn main() {
    divan::Divan::default()
        .sample_count(5)
        .sample_size(1)
        .config_with_args()
        .main();
}

/// A deterministic f32 tensor of small values (std ≈ `scale / √3`).
fn rand_t(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut x = seed;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let r = smelt::rng::splitmix64(&mut x);
            ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// An op under test: a function of its (differentiable) inputs.
type Op = dyn Fn(&[Tensor]) -> Tensor + Sync;

/// Times `f(inputs)`.
fn forward(bencher: Bencher, inputs: &[Tensor], f: &Op) {
    bencher.bench(|| f(inputs));
}

/// Times the backward of `Σ f(inputs)` w.r.t. every input; the forward runs untimed.
fn backward(bencher: Bencher, inputs: &[Tensor], f: &Op) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    bencher
        .with_inputs(|| f(&ts).sum_all().unwrap())
        .bench_values(|loss| loss.backward().unwrap());
}

mod attention {
    //! Causal GQA attention over (B, H, T, 64) heads, one document per row.
    use super::*;

    fn qkv() -> Vec<Tensor> {
        vec![
            rand_t(&[B, HQ, T, HEAD], 1, 1.0),
            rand_t(&[B, HKV, T, HEAD], 2, 1.0),
            rand_t(&[B, HKV, T, HEAD], 3, 1.0),
        ]
    }

    const SCALE: f64 = 0.125; // 1 / √64

    fn fused(a: &[Tensor]) -> Tensor {
        ops::fused_attention(&a[0], &a[1], &a[2], None, SCALE).unwrap()
    }

    fn reference(a: &[Tensor]) -> Tensor {
        ops::reference_attention(&a[0], &a[1], &a[2], None, SCALE).unwrap()
    }

    #[divan::bench]
    fn fused_forward(b: Bencher) {
        forward(b, &qkv(), &fused);
    }

    #[divan::bench]
    fn reference_forward(b: Bencher) {
        forward(b, &qkv(), &reference);
    }

    #[divan::bench]
    fn fused_backward(b: Bencher) {
        backward(b, &qkv(), &fused);
    }

    #[divan::bench]
    fn reference_backward(b: Bencher) {
        backward(b, &qkv(), &reference);
    }

    /// One row of 2048 tokens (long context); the reference's backward is left out
    /// (seconds per sample: it keeps (9, 2048, 2048) scores and probabilities).
    fn long() -> Vec<Tensor> {
        vec![
            rand_t(&[1, HQ, LONG, HEAD], 1, 1.0),
            rand_t(&[1, HKV, LONG, HEAD], 2, 1.0),
            rand_t(&[1, HKV, LONG, HEAD], 3, 1.0),
        ]
    }

    #[divan::bench]
    fn fused_forward_t2048(b: Bencher) {
        forward(b, &long(), &fused);
    }

    #[divan::bench]
    fn reference_forward_t2048(b: Bencher) {
        forward(b, &long(), &reference);
    }

    #[divan::bench]
    fn fused_backward_t2048(b: Bencher) {
        backward(b, &long(), &fused);
    }

    /// Four packed documents per row (per-document masking on the fused path).
    #[divan::bench]
    fn fused_forward_packed(b: Bencher) {
        let ids: Vec<u32> = (0..B * T).map(|i| ((i % T) / 64) as u32).collect();
        let seg = Tensor::from_vec(ids, (B, T), &Device::Cpu).unwrap();
        forward(b, &qkv(), &move |a: &[Tensor]| {
            ops::fused_attention(&a[0], &a[1], &a[2], Some(&seg), SCALE).unwrap()
        });
    }
}

mod rms_norm {
    //! RMSNorm over (B·T, 576).
    use super::*;

    fn inputs() -> Vec<Tensor> {
        vec![rand_t(&[B * T, HIDDEN], 4, 1.0), rand_t(&[HIDDEN], 5, 1.0)]
    }

    fn fused(a: &[Tensor]) -> Tensor {
        ops::fused_rms_norm(&a[0], &a[1], 1e-5).unwrap()
    }

    fn reference(a: &[Tensor]) -> Tensor {
        ops::rms_norm(&a[0], &a[1], 1e-5).unwrap()
    }

    #[divan::bench]
    fn fused_forward(b: Bencher) {
        forward(b, &inputs(), &fused);
    }

    #[divan::bench]
    fn reference_forward(b: Bencher) {
        forward(b, &inputs(), &reference);
    }

    #[divan::bench]
    fn fused_backward(b: Bencher) {
        backward(b, &inputs(), &fused);
    }

    #[divan::bench]
    fn reference_backward(b: Bencher) {
        backward(b, &inputs(), &reference);
    }
}

mod rope {
    //! Rotary embedding of the (B, 9, T, 64) query heads.
    use super::*;

    fn tables() -> (Tensor, Tensor) {
        let inv: Vec<f32> = (0..HEAD / 2)
            .map(|i| 1.0 / 100_000f32.powf(2.0 * i as f32 / HEAD as f32))
            .collect();
        let positions: Vec<Vec<u32>> = (0..B).map(|_| (0..T as u32).collect()).collect();
        smelt::model::rope::tables(&inv, &positions, &Device::Cpu).unwrap() // (B, 1, T, D)
    }

    fn run(b: Bencher, fused: bool, bwd: bool) {
        let (cos, sin) = tables();
        let f = move |a: &[Tensor]| {
            if fused {
                ops::fused_rope(&a[0], &cos, &sin).unwrap()
            } else {
                ops::apply_rope(&a[0], &cos, &sin).unwrap()
            }
        };
        let x = [rand_t(&[B, HQ, T, HEAD], 6, 1.0)];
        if bwd {
            backward(b, &x, &f)
        } else {
            forward(b, &x, &f)
        }
    }

    #[divan::bench]
    fn fused_forward(b: Bencher) {
        run(b, true, false);
    }

    #[divan::bench]
    fn reference_forward(b: Bencher) {
        run(b, false, false);
    }

    #[divan::bench]
    fn fused_backward(b: Bencher) {
        run(b, true, true);
    }

    #[divan::bench]
    fn reference_backward(b: Bencher) {
        run(b, false, true);
    }
}

mod swiglu {
    //! `silu(gate) · up` over (B·T, 1536).
    use super::*;

    fn inputs() -> Vec<Tensor> {
        vec![rand_t(&[B * T, MLP], 7, 2.0), rand_t(&[B * T, MLP], 8, 2.0)]
    }

    fn fused(a: &[Tensor]) -> Tensor {
        ops::fused_swiglu(&a[0], &a[1]).unwrap()
    }

    fn reference(a: &[Tensor]) -> Tensor {
        ops::swiglu(&a[0], &a[1]).unwrap()
    }

    #[divan::bench]
    fn fused_forward(b: Bencher) {
        forward(b, &inputs(), &fused);
    }

    #[divan::bench]
    fn reference_forward(b: Bencher) {
        forward(b, &inputs(), &reference);
    }

    #[divan::bench]
    fn fused_backward(b: Bencher) {
        backward(b, &inputs(), &fused);
    }

    #[divan::bench]
    fn reference_backward(b: Bencher) {
        backward(b, &inputs(), &reference);
    }
}

mod linear {
    //! The MLP up projection (B·T, 576) · (1536, 576)ᵀ.
    use super::*;
    use smelt::ops::Precision;

    fn inputs() -> Vec<Tensor> {
        vec![
            rand_t(&[B * T, HIDDEN], 9, 1.0),
            rand_t(&[MLP, HIDDEN], 10, 0.05),
        ]
    }

    fn fused(a: &[Tensor]) -> Tensor {
        ops::fused_linear(&a[0], &a[1], None, Precision::F32).unwrap()
    }

    fn fused_bf16(a: &[Tensor]) -> Tensor {
        ops::fused_linear(&a[0], &a[1], None, Precision::Bf16Autocast).unwrap()
    }

    fn reference(a: &[Tensor]) -> Tensor {
        ops::linear(&a[0], &a[1], None).unwrap()
    }

    #[divan::bench]
    fn fused_forward(b: Bencher) {
        forward(b, &inputs(), &fused);
    }

    #[divan::bench]
    fn fused_bf16_autocast_forward(b: Bencher) {
        forward(b, &inputs(), &fused_bf16);
    }

    #[divan::bench]
    fn reference_forward(b: Bencher) {
        forward(b, &inputs(), &reference);
    }

    #[divan::bench]
    fn fused_backward(b: Bencher) {
        backward(b, &inputs(), &fused);
    }

    #[divan::bench]
    fn fused_bf16_autocast_backward(b: Bencher) {
        backward(b, &inputs(), &fused_bf16);
    }

    #[divan::bench]
    fn reference_backward(b: Bencher) {
        backward(b, &inputs(), &reference);
    }
}

mod linear_cross_entropy {
    //! lm_head + cross-entropy: (256, 576) hidden against the (49152, 576) embedding.
    use super::*;

    fn inputs() -> Vec<Tensor> {
        vec![
            rand_t(&[LCE_TOKENS, HIDDEN], 11, 1.0),
            rand_t(&[VOCAB, HIDDEN], 12, 0.05),
        ]
    }

    fn labels() -> Tensor {
        let ls: Vec<i64> = (0..LCE_TOKENS)
            .map(|i| ((i * 7919) % VOCAB) as i64)
            .collect();
        Tensor::from_vec(ls, LCE_TOKENS, &Device::Cpu).unwrap()
    }

    fn run(b: Bencher, fused: bool, bwd: bool) {
        let labels = labels();
        let f = move |a: &[Tensor]| {
            if fused {
                ops::linear_cross_entropy_sum(&a[0], &a[1], &labels)
                    .unwrap()
                    .0
            } else {
                let logits = ops::linear(&a[0], &a[1], None).unwrap(); // (N, V)
                ops::cross_entropy_sum(&logits, &labels).unwrap().0
            }
        };
        if bwd {
            backward(b, &inputs(), &f)
        } else {
            forward(b, &inputs(), &f)
        }
    }

    #[divan::bench]
    fn fused_forward(b: Bencher) {
        run(b, true, false);
    }

    #[divan::bench]
    fn reference_forward(b: Bencher) {
        run(b, false, false);
    }

    #[divan::bench]
    fn fused_backward(b: Bencher) {
        run(b, true, true);
    }

    #[divan::bench]
    fn reference_backward(b: Bencher) {
        run(b, false, true);
    }
}

mod softmax {
    //! The reference softmax over attention-score rows (B·9·T, T); it has no fused
    //! twin (the fused attention never materialises these rows).
    use super::*;

    fn f(a: &[Tensor]) -> Tensor {
        ops::softmax_last_dim(&a[0]).unwrap()
    }

    #[divan::bench]
    fn reference_forward(b: Bencher) {
        forward(b, &[rand_t(&[B * HQ * T, T], 13, 4.0)], &f);
    }

    #[divan::bench]
    fn reference_backward(b: Bencher) {
        backward(b, &[rand_t(&[B * HQ * T, T], 13, 4.0)], &f);
    }
}

mod decode {
    //! Generation at batch 8: the skinny weight-streaming GEMM beside the GEMM backend
    //! at 8 rows (weights cache-resident here: the kernel's speed, not memory's), and
    //! one `DecodeSession` step of a random-weight SmolLM2-135M-shaped model after a
    //! 32-token prompt (weights streamed from memory, as in real generation).
    use super::*;
    use smelt::ops::skinny_gemm::{matmul_wt_rows, SharedMatrix};
    use smelt::ops::Precision;
    use smelt::runtime::team::{share, WorkerTeam};
    use smelt::{DecodeSession, Model, ModelConfig, ModelType};

    const ROWS: usize = 8;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        rand_t(&[n], seed, 0.05).to_vec1().unwrap()
    }

    #[divan::bench]
    fn skinny_gemm_b8_up_proj(b: Bencher) {
        let (x, w) = (values(ROWS * HIDDEN, 1), values(MLP * HIDDEN, 2));
        let mut out = vec![0f32; ROWS * MLP];
        let team = WorkerTeam::with_default_size();
        b.bench_local(|| {
            let y = SharedMatrix::new(&mut out, ROWS, MLP);
            team.run(|worker, workers| {
                let blocks = share(MLP / 16, worker, workers);
                matmul_wt_rows(&x, HIDDEN, &w, blocks.start * 16..blocks.end * 16, y, false);
            });
        });
    }

    #[divan::bench]
    fn gemm_backend_b8_up_proj(b: Bencher) {
        let x = rand_t(&[ROWS, HIDDEN], 1, 1.0);
        let w = rand_t(&[MLP, HIDDEN], 2, 0.05);
        b.bench_local(|| ops::fused_linear(&x, &w, None, Precision::F32).unwrap());
    }

    fn smollm2_shaped() -> Model {
        let mut c = ModelConfig::tiny(ModelType::Llama, VOCAB);
        (c.hidden_size, c.intermediate_size, c.num_hidden_layers) = (HIDDEN, MLP, 30);
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim) = (HQ, HKV, HEAD);
        c.use_rope = vec![true; 30];
        Model::new_random(c, &Device::Cpu, 7).unwrap()
    }

    #[divan::bench(sample_count = 10)]
    fn session_step_b8_after_32(b: Bencher) {
        let model = smollm2_shaped();
        let prompt: Vec<u32> = (0..ROWS as u32 * 32)
            .map(|i| i * 7 % VOCAB as u32)
            .collect();
        b.with_inputs(|| {
            let mut s = DecodeSession::new(&model, ROWS, 40).unwrap();
            s.extend(&prompt, 32).unwrap();
            s
        })
        .bench_local_values(|mut s| {
            s.extend(&[5; ROWS], 1).unwrap();
            s
        });
    }
}

mod gemm {
    //! The three GEMMs of the MLP up projection (tokens 1024, in 576, out 1536) in f32
    //! and with bf16 inputs, on the selected backend: forward `x · Wᵀ`, input grad
    //! `dy · W`, weight grad `dyᵀ · x`. 1.81 GFLOP each.
    use super::*;
    use smelt::ops::gemm::{self, bf16, Threads, Trans};

    const M: usize = B * T;

    fn operands(seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let v = |shape: &[usize], s| {
            rand_t(shape, s, 1.0)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        (
            v(&[M, HIDDEN], seed),
            v(&[MLP, HIDDEN], seed + 1),
            v(&[M, MLP], seed + 2),
        )
    }

    /// The three products, named as the bench arguments.
    const PRODUCTS: [&str; 3] = ["forward", "grad_input", "grad_weight"];

    /// Times one product: `forward` `x · Wᵀ`, `grad_input` `dy · W`, `grad_weight`
    /// `dyᵀ · x` (`W` as stored, `(out, in)`), with f32 or bf16 operands.
    fn run(product: &str, bf: bool, bencher: Bencher) {
        let (x, w, dy) = operands(20);
        let (ta, tb, (m, n, k), a, lda, b, ldb) = match product {
            "forward" => (
                Trans::No,
                Trans::Yes,
                (M, MLP, HIDDEN),
                &x,
                HIDDEN,
                &w,
                HIDDEN,
            ),
            "grad_input" => (Trans::No, Trans::No, (M, HIDDEN, MLP), &dy, MLP, &w, HIDDEN),
            "grad_weight" => (
                Trans::Yes,
                Trans::No,
                (MLP, HIDDEN, M),
                &dy,
                MLP,
                &x,
                HIDDEN,
            ),
            other => panic!("unknown product {other:?}"),
        };
        let mut c = vec![0f32; m * n];
        if bf {
            let (a, b) = (gemm::to_bf16(a), gemm::to_bf16(b));
            let (a, b): (&[bf16], &[bf16]) = (&a, &b);
            bencher.bench_local(|| {
                gemm::gemm_bf16_f32(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    1.0,
                    a,
                    lda,
                    b,
                    ldb,
                    0.0,
                    &mut c,
                    n,
                    Threads::All,
                )
                .unwrap()
            });
        } else {
            bencher.bench_local(|| {
                gemm::sgemm(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    1.0,
                    a,
                    lda,
                    b,
                    ldb,
                    0.0,
                    &mut c,
                    n,
                    Threads::All,
                )
                .unwrap()
            });
        }
    }

    #[divan::bench(args = PRODUCTS)]
    fn f32(b: Bencher, product: &str) {
        run(product, false, b)
    }

    #[divan::bench(args = PRODUCTS)]
    fn bf16_inputs(b: Bencher, product: &str) {
        run(product, true, b)
    }
}
