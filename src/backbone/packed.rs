//! f32 products with few rows against a weight laid out once, at load, for the GEMM kernel:
//! what a text query (32 tokens or fewer) runs through the text tower's linear layers.
//!
//! With few rows a product is bound by reading its weight, not by arithmetic: one 32-token pass
//! reads all 151 MB of ViT-B/32's text encoder weights to do 2.4 GFLOP. `gemm` packs the right-hand
//! side into its micro-kernel's panels on every call (a second pass over the weight, and a
//! strided one: W^T's rows are 6-8 KB apart) and its AVX-512 micro-kernel is 64 rows tall, half
//! empty at 32. Here the weight is packed once by `rten-gemm` (maintained; its f32 kernels are
//! chosen at run time: AVX-512, AVX2+FMA or generic), so a call streams it once, in order.
//! Measured on this project's machine (standalone program timing the 48 products of one text-tower
//! pass, distinct weights so none stays in cache): 1.54x `gemm`'s speed at 32 and at 10 rows, at
//! 64 rows 1.55x on two threads (0.88x on one), level or slower from 128 rows: hence
//! [`MAX_ROWS`], above which `kernels::matmul` (gemm) takes the product. See BENCHMARKS.md
//! "Short products against prepacked weights".
//!
//! The packed copy sits beside the layer's f32 weight (which the composite, GPU and training
//! paths read): about the size of the weight again, so only the text tower gets one.

use super::kernels::{bias_quick_gelu_in_place, Epilogue, FrozenProduct};
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmUninitOptions, PackedBMatrix};
use rten_tensor::NdTensorView;
use std::mem::MaybeUninit;

/// Products with at most this many rows take the packed weight.
pub const MAX_ROWS: usize = 64;

thread_local! {
    /// rten's executor is not `Send`, so each calling thread has its own; every thread picks the
    /// same kernel on one CPU, and rten checks a packed weight against the kernel that reads it
    /// (a mismatch is an error, never a wrong result).
    static EXECUTOR: GemmExecutor<f32, f32, f32> = GemmExecutor::default();
}

/// The f32 kernel rten runs on this CPU (for the benchmark's report).
pub fn kernel_name() -> String {
    EXECUTOR.with(|e| e.kernel_name().to_string())
}

/// A frozen layer's W^T (k, n), packed for the executor's kernel, and its bias.
pub struct PackedLinear {
    packed: PackedBMatrix<f32>,
    /// (n,) or empty: added in the epilogue when the caller asks for it.
    bias: Vec<f32>,
    k: usize,
    n: usize,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedLinear({} x {})", self.k, self.n)
    }
}

impl PackedLinear {
    /// `wt` is W^T, (k, n) row-major (a frozen layer's layout); `bias` (n,) is kept for
    /// [`Epilogue::BiasQuickGelu`].
    pub fn new(wt: &[f32], k: usize, n: usize, bias: Option<&[f32]>) -> Self {
        assert_eq!(wt.len(), k * n, "W^T must be k x n");
        let bias = bias.map(|b| b.to_vec()).unwrap_or_default();
        assert!(bias.is_empty() || bias.len() == n, "bias is not (n,)");
        let view = NdTensorView::from_data([k, n], wt);
        let packed = EXECUTOR.with(|e| e.prepack_b(view));
        Self { packed, bias, k, n }
    }
}

impl FrozenProduct for PackedLinear {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn k(&self) -> usize {
        self.k
    }

    fn n(&self) -> usize {
        self.n
    }

    /// `a (m, k) · W^T -> (m, n)` into a new buffer (never zeroed: the GEMM writes all of it).
    fn forward(&self, a: &[f32], m: usize, epilogue: Epilogue) -> Result<Vec<f32>, String> {
        let (k, n) = (self.k, self.n);
        if a.len() != m * k {
            return Err(format!(
                "packed linear: {} values are not {m} x {k}",
                a.len()
            ));
        }
        if epilogue == Epilogue::BiasQuickGelu && (self.bias.len() != n || n == 0) {
            return Err("packed linear: bias + QuickGELU without a bias".into());
        }
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        let a = NdTensorView::from_data([m, k], a);
        EXECUTOR
            .with(|e| {
                let dst: &mut [MaybeUninit<f32>] = &mut out.spare_capacity_mut()[..m * n];
                e.gemm_uninit(
                    dst,
                    GemmInputA::Unpacked(a),
                    GemmInputB::Packed(&self.packed),
                    GemmUninitOptions::default(),
                )
                .map(|_| ())
            })
            .map_err(|e| format!("packed linear: {e:?}"))?;
        // SAFETY: `gemm_uninit` returned Ok, so it wrote all m * n outputs.
        unsafe { out.set_len(m * n) };
        if epilogue == Epilogue::BiasQuickGelu {
            bias_quick_gelu_in_place(&mut out, &self.bias);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_a_plain_product_on_odd_shapes() {
        let mut r = rand::rngs::StdRng::seed_from_u64(5);
        for (m, k, n) in [
            (1, 7, 5),
            (7, 64, 33),
            (32, 512, 1536),
            (33, 100, 129),
            (128, 17, 40),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| r.random_range(-1.0..1.0)).collect();
            let wt: Vec<f32> = (0..k * n).map(|_| r.random_range(-1.0..1.0)).collect();
            let bias: Vec<f32> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
            let layer = PackedLinear::new(&wt, k, n, Some(&bias));
            let got = layer.forward(&a, m, Epilogue::NoBias).unwrap();
            let fused = layer.forward(&a, m, Epilogue::BiasQuickGelu).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| a[i * k + t] as f64 * wt[t * n + j] as f64)
                        .sum();
                    let diff = (got[i * n + j] as f64 - want).abs();
                    assert!(
                        diff < 1e-4 * (k as f64).sqrt(),
                        "{m}x{k}x{n} at ({i},{j}): {diff}"
                    );
                    let z = want + bias[j] as f64;
                    let act = z / (1.0 + (-1.702 * z).exp());
                    let diff = (fused[i * n + j] as f64 - act).abs();
                    assert!(diff < 1e-4 * (k as f64).sqrt(), "gelu {m}x{k}x{n}: {diff}");
                }
            }
        }
    }

    #[test]
    fn refuses_a_wrong_width_and_a_missing_bias() {
        let w = PackedLinear::new(&[0.0; 6], 3, 2, None);
        assert!(w.forward(&[0.0; 4], 1, Epilogue::NoBias).is_err());
        assert!(w.forward(&[0.0; 3], 1, Epilogue::BiasQuickGelu).is_err());
        assert_eq!(
            w.forward(&[0.0; 3], 1, Epilogue::NoBias).unwrap(),
            vec![0.0; 2]
        );
    }
}
