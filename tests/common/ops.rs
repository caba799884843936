//! Helpers shared by the op tests (`ops_kernels`, `ops_attention`, `ops_linear`):
//! reproducible random tensors, value + gradients of an op, max-norm relative error.

use candle_core::{DType, Device, Result, Tensor, Var};

/// Deterministic pseudo-random values in [-scale, scale) (splitmix64).
pub fn rand_vec(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A CPU tensor of `shape` filled by [`rand_vec`], cast to `dtype`.
pub fn rand_t(shape: &[usize], seed: u64, scale: f64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(rand_vec(n, seed, scale), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Output of `f` and the gradients of `Σ out · w` (w fixed pseudo-random) w.r.t. `inputs`.
pub fn value_and_grads(
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts).unwrap();
    let w = rand_t(out.dims(), 99, 1.0, out.dtype());
    let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = vars
        .iter()
        .map(|v| grads.get(v).expect("missing gradient").clone())
        .collect();
    (out, g)
}

/// `max |a − b| / max(max |b|, floor)`: relative in max-norm, absolute below `floor`.
pub fn max_rel_err(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    diff / scale.max(floor)
}
