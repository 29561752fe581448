//! The encoder's f32 matrix kernels on the CPU for inference: `x W^T` straight into the `gemm`
//! crate against weights kept transposed since load, and self-attention fused per (sample, head).
//!
//! candle's matmul would also reach `gemm`, but attention through it is two batched products of
//! N x H tiny matrices (50 x 64 for ViT-B/32), each one a separate rayon-parallel `gemm` call,
//! plus copies for the head split and the head merge. Here one rayon task per (sample, head)
//! gathers its q, k and v (adding the QKV bias on the way), runs both products single-threaded
//! while they are in L1/L2, and writes its context straight into the (N, T, D) layout the output
//! projection reads. Only the order of the arithmetic inside `gemm` differs from candle's path.
//!
//! The `gemm` crate chooses its micro-kernel at run time from the CPU's features (AVX-512 when
//! present and the build has the `avx512` feature, which compiles those kernels in through
//! gemm's `x86-v4`; AVX2+FMA otherwise); [`gemm_kernel`] names the one it takes here.
//!
//! These kernels have no backward pass: `ops` routes tracked tensors (adapter training) and other
//! devices to candle's differentiable operations.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape};
use gemm::Parallelism;
use rayon::prelude::*;

/// The f32 micro-kernel family `gemm` runs on this CPU, detected the way `gemm` (through `pulp`)
/// detects it: `"avx512f"` (x86-64-v4), `"avx2+fma"` (x86-64-v3) or `"generic"`.
pub fn gemm_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        let v3 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("bmi1")
            && is_x86_feature_detected!("bmi2")
            && is_x86_feature_detected!("lzcnt");
        let v4 = v3
            && cfg!(feature = "avx512")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512cd")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl");
        if v4 {
            return "avx512f";
        }
        if v3 {
            return "avx2+fma";
        }
    }
    "generic"
}

/// Spread a product over rayon's threads only when it is big enough to pay for the split.
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m * n * k >= 1 << 18 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `dst (m x n) = a (m x k) · B`, all row-major and contiguous, where `b` holds B (k x n) or,
/// when `b_transposed`, B^T (n x k) (a PyTorch weight: read with swapped strides, not copied).
pub fn matmul(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    b_transposed: bool,
) {
    assert!(dst.len() == m * n);
    // SAFETY: `dst` is an exclusive slice of exactly m * n values.
    unsafe { matmul_raw(dst.as_mut_ptr(), a, b, m, k, n, b_transposed) }
}

/// [`matmul`] into raw memory.
///
/// # Safety
/// `dst` must be valid for writes of m * n values and must not overlap `a` or `b`.
unsafe fn matmul_raw(
    dst: *mut f32,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    b_transposed: bool,
) {
    assert!(a.len() == m * k && b.len() == k * n);
    let (b_cs, b_rs) = match b_transposed {
        false => (1, n as isize),
        true => (k as isize, 1),
    };
    // One block of columns `cols` of the product: dst[.., cols] = a · B[.., cols].
    let block = |dst: *mut f32, cols: std::ops::Range<usize>, par: Parallelism| {
        // SAFETY: `a` and `b` hold exactly the (m, k) and (k, n) matrices the strides describe;
        // column j of B starts at `j * b_cs` and of dst at `j`, all inside the buffers, and the
        // caller guarantees `dst` is m * n writable values apart from `a` and `b`.
        unsafe {
            gemm::gemm(
                m,
                cols.len(),
                k,
                dst.add(cols.start),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr().offset(cols.start as isize * b_cs),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    };
    let threads = rayon::current_num_threads();
    if threads > 1 && m < SHORT_M && n >= threads * MIN_SPLIT_COLS {
        // `gemm` splits its work by row blocks, so a product with few rows (a text query's 32
        // tokens) ran on one thread; here each thread takes a share of the columns instead.
        let out = SharedOut(dst);
        let per = n.div_ceil(threads);
        (0..threads).into_par_iter().for_each(|t| {
            let cols = (t * per).min(n)..((t + 1) * per).min(n);
            if !cols.is_empty() {
                block(out.at(0), cols, Parallelism::None);
            }
        });
    } else {
        block(dst, 0..n, parallelism(m, n, k));
    }
}

/// Products with fewer rows than this are split by columns across threads (see `matmul_raw`).
const SHORT_M: usize = 64;
/// The fewest columns a thread takes in such a split.
const MIN_SPLIT_COLS: usize = 128;

fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: inputs must be contiguous");
    };
    Ok(&v[start..end])
}

/// `x (.., k) -> x W^T (.., n)`: a linear layer without its bias. The weight is W^T `(k, n)` when
/// `transposed` (a frozen layer), else PyTorch's `(n, k)`.
pub struct LinearNoBias {
    pub transposed: bool,
}

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            f32_slice(self.name(), s1, l1)?,
            f32_slice(self.name(), s2, l2)?,
        );
        let (k, n) = match (self.transposed, l2.shape().dims2()?) {
            (true, (k, n)) => (k, n),
            (false, (n, k)) => (k, n),
        };
        let dims = l1.dims();
        if dims.last() != Some(&k) {
            candle_core::bail!(
                "linear-no-bias: {dims:?} against a weight of {:?}",
                l2.dims()
            );
        }
        let m = x.len() / k.max(1);
        let out = matmul_new(x, w, m, k, n, !self.transposed);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = n;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// [`matmul`] into a new buffer that is never zeroed: the GEMM overwrites all of it, and zeroing
/// 7 MB (fc1's output at batch 12) first is a full extra pass over memory.
fn matmul_new(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, b_transposed: bool) -> Vec<f32> {
    if k == 0 {
        return vec![0f32; m * n];
    }
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: `out` has room for m * n values; with k > 0 and beta = 0 the GEMM writes every
    // element of dst without reading it, so all m * n are initialised before `set_len`.
    unsafe {
        matmul_raw(out.as_mut_ptr(), a, b, m, k, n, b_transposed);
        out.set_len(m * n);
    }
    out
}

/// `x (.., k) -> quick_gelu(x W^T + bias) (.., n)`: the MLP's first layer with its bias and
/// activation applied in place on the GEMM's output, one pass and no second buffer.
pub struct LinearBiasQuickGelu {
    pub transposed: bool,
}

impl CustomOp3 for LinearBiasQuickGelu {
    fn name(&self) -> &'static str {
        "linear-bias-quick-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (storage, shape) = LinearNoBias {
            transposed: self.transposed,
        }
        .cpu_fwd(s1, l1, s2, l2)?;
        let bias = f32_slice(CustomOp3::name(self), s3, l3)?;
        let CpuStorage::F32(mut out) = storage else {
            unreachable!("linear-no-bias returns f32");
        };
        let n = bias.len();
        if shape.dims().last() != Some(&n) || n == 0 {
            candle_core::bail!("linear-bias-quick-gelu: a bias of {n} for {shape:?}");
        }
        bias_quick_gelu_in_place(&mut out, bias);
        Ok((CpuStorage::F32(out), shape))
    }
}

/// `out (.., n) = quick_gelu(out + bias)` row by row, in parallel; `bias` is (n,), n > 0.
pub(super) fn bias_quick_gelu_in_place(out: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    // Blocks of about 16k values keep rayon's per-task overhead negligible.
    let rows = (16384 / n.max(1)).max(1);
    out.par_chunks_mut(rows * n).for_each(|block| {
        for row in block.chunks_exact_mut(n) {
            super::vmath::bias_quick_gelu_row_in_place(row, bias);
        }
    });
}

/// What a frozen layer's own CPU product applies after the GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// `x W^T`: the caller adds the bias elsewhere (fused into a residual sum or attention).
    NoBias,
    /// `quick_gelu(x W^T + b)`: fc1.
    BiasQuickGelu,
}

/// A frozen linear layer's weight in a form that owns its CPU product (int8, or f32 prepacked
/// for short products): `x (m, k) -> (m, n)`, then the epilogue. Keeps its own copy of the bias.
pub trait FrozenProduct: Send + Sync {
    /// The candle op's name, for errors.
    fn name(&self) -> &'static str;
    /// Input features.
    fn k(&self) -> usize;
    /// Output features.
    fn n(&self) -> usize;
    fn forward(
        &self,
        x: &[f32],
        m: usize,
        epilogue: Epilogue,
    ) -> std::result::Result<Vec<f32>, String>;
}

/// A [`FrozenProduct`] as a candle op on a contiguous f32 CPU tensor `(.., k)`.
pub struct FrozenProductOp<'a> {
    pub layer: &'a dyn FrozenProduct,
    pub epilogue: Epilogue,
}

impl CustomOp1 for FrozenProductOp<'_> {
    fn name(&self) -> &'static str {
        self.layer.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.layer.name(), s, l)?;
        let dims = l.dims();
        let k = self.layer.k();
        if dims.last() != Some(&k) {
            candle_core::bail!("{}: {dims:?} against {k} input features", self.layer.name());
        }
        let m = x.len() / k.max(1);
        let out = self
            .layer
            .forward(x, m, self.epilogue)
            .map_err(candle_core::Error::Msg)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = self.layer.n();
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// Multi-head self-attention from the raw QKV projection: `(N, T, 3D)` without its bias, the
/// `(3D,)` bias, an optional additive `(T, T)` mask, to the merged context `(N, T, D)`. q (with
/// its bias) is multiplied by `q_scale`: 1 for the backbone, whose q weights carry the softmax
/// scale since load, 1/sqrt(head_dim) for an adapter's trainable layer.
pub struct FusedAttention {
    pub heads: usize,
    pub q_scale: f32,
}

/// A raw pointer that rayon tasks may share because each writes a disjoint part of the buffer.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    /// Taking `self` whole makes closures capture the `Sync` wrapper, not the bare pointer.
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer the pointer came from.
        unsafe { self.0.add(offset) }
    }
}
// SAFETY: see `FusedAttention::run`: every task writes only its own (sample, head) columns.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl FusedAttention {
    fn run(&self, qkv: &[f32], l: &Layout, bias: &[f32], mask: Option<&[f32]>) -> Result<Vec<f32>> {
        let (n, t, d3) = l.shape().dims3()?;
        let h = self.heads;
        let d = d3 / 3;
        let hd = d / h.max(1);
        if h == 0 || hd * h * 3 != d3 || bias.len() != d3 {
            candle_core::bail!(
                "fused-attention: {h} heads do not split {d3} (bias {})",
                bias.len()
            );
        }
        if mask.is_some_and(|m| m.len() != t * t) {
            candle_core::bail!("fused-attention: the mask must be ({t}, {t})");
        }
        let mut out = vec![0f32; n * t * d];
        let dst = SharedOut(out.as_mut_ptr());
        (0..n * h).into_par_iter().for_each_init(
            || vec![0f32; 3 * t * hd + t * t],
            |buf, task| {
                let (sample, head) = (task / h, task % h);
                let (q, rest) = buf.split_at_mut(t * hd);
                let (k, rest) = rest.split_at_mut(t * hd);
                let (v, s) = rest.split_at_mut(t * hd);
                for tok in 0..t {
                    let row = &qkv[(sample * t + tok) * d3..][..d3];
                    for (which, buf) in [&mut *q, &mut *k, &mut *v].into_iter().enumerate() {
                        let col = which * d + head * hd;
                        let scale = if which == 0 { self.q_scale } else { 1.0 };
                        for ((o, &x), &b) in buf[tok * hd..(tok + 1) * hd]
                            .iter_mut()
                            .zip(&row[col..col + hd])
                            .zip(&bias[col..col + hd])
                        {
                            *o = (x + b) * scale;
                        }
                    }
                }
                // SAFETY for both products: q, k, v and s are this task's own (t, hd) and (t, t)
                // row-major buffers; reading k with swapped strides is k^T. The context goes to
                // rows `sample * t ..` and columns `head * hd .. + hd` of `out` (row stride d),
                // which no other task writes, and `out` outlives the parallel loop.
                unsafe {
                    gemm::gemm(
                        t,
                        t,
                        hd,
                        s.as_mut_ptr(),
                        1,
                        t as isize,
                        false,
                        q.as_ptr(),
                        1,
                        hd as isize,
                        k.as_ptr(),
                        hd as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                for (i, row) in s.chunks_exact_mut(t).enumerate() {
                    if let Some(m) = mask {
                        for (x, &m) in row.iter_mut().zip(&m[i * t..(i + 1) * t]) {
                            *x += m;
                        }
                    }
                    super::vmath::softmax_in_place(row);
                }
                unsafe {
                    gemm::gemm(
                        t,
                        hd,
                        t,
                        dst.at(sample * t * d + head * hd),
                        1,
                        d as isize,
                        false,
                        s.as_ptr(),
                        1,
                        t as isize,
                        v.as_ptr(),
                        1,
                        hd as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            },
        );
        Ok(out)
    }
}

impl FusedAttention {
    /// Both ops' forward: the storages of qkv, bias and (for the masked op) the mask.
    fn forward(
        &self,
        name: &str,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        mask: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(name, s1, l1)?;
        let bias = f32_slice(name, s2, l2)?;
        let mask = mask.map(|(s, l)| f32_slice(name, s, l)).transpose()?;
        let (n, t, d3) = l1.shape().dims3()?;
        let out = self.run(qkv, l1, bias, mask)?;
        Ok((CpuStorage::F32(out), Shape::from((n, t, d3 / 3))))
    }
}

impl CustomOp2 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(CustomOp2::name(self), (s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention-masked"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(CustomOp3::name(self), (s1, l1), (s2, l2), Some((s3, l3)))
    }
}

/// A large square sgemm through the same `gemm` entry point as the encoder, for the benchmark's
/// machine reference: the best GFLOP/s of `iters` runs of an `n x n x n` product on all of
/// rayon's threads.
pub fn sgemm_gflops(n: usize, iters: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0f32; n * n];
    let mut best = f64::MAX;
    for i in 0..=iters {
        let t0 = std::time::Instant::now();
        matmul(&mut c, &a, &b, n, n, n, false);
        if i > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&c);
    2.0 * (n as f64).powi(3) / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::super::ops::tests::max_diff;
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn linear_no_bias_matches_candle_in_both_layouts() {
        let x = Tensor::randn(0f32, 1.0, (3, 7, 40), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (24, 40), &Device::Cpu).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        for (weight, transposed) in [(&wt, true), (&w, false)] {
            let got = x
                .apply_op2_no_bwd(weight, &LinearNoBias { transposed })
                .unwrap();
            assert_eq!(got.dims(), &[3, 7, 24]);
            assert!(max_diff(&got, &want) < 1e-4);
        }
    }

    #[test]
    fn linear_bias_quick_gelu_matches_the_composite_in_both_layouts() {
        let x = Tensor::randn(0f32, 1.0, (2, 5, 40), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.5, (24, 40), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 24, &Device::Cpu).unwrap();
        let z = x
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let want = (&z * candle_nn::ops::sigmoid(&(&z * 1.702).unwrap()).unwrap()).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        for (weight, transposed) in [(&wt, true), (&w, false)] {
            let got = x
                .apply_op3_no_bwd(weight, &b, &LinearBiasQuickGelu { transposed })
                .unwrap();
            assert!(max_diff(&got, &want) < 1e-4);
        }
    }

    /// The composite reference: bias, head split, q k^T, mask, softmax, p v, head merge.
    fn attention_reference(
        qkv: &Tensor,
        bias: &Tensor,
        heads: usize,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let (n, t, d3) = qkv.dims3().unwrap();
        let hd = d3 / 3 / heads;
        let x = qkv
            .broadcast_add(bias)
            .unwrap()
            .reshape((n, t, 3, heads, hd))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap()
            .contiguous()
            .unwrap();
        let (q, k, v) = (x.get(0).unwrap(), x.get(1).unwrap(), x.get(2).unwrap());
        let mut s = q.matmul(&k.t().unwrap()).unwrap();
        if let Some(m) = mask {
            s = s.broadcast_add(m).unwrap();
        }
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        p.matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((n, t, d3 / 3))
            .unwrap()
    }

    #[test]
    fn fused_attention_matches_the_composite_with_and_without_a_mask() {
        let (n, t, heads, hd) = (3, 9, 4, 8);
        let qkv = Tensor::randn(0f32, 1.0, (n, t, 3 * heads * hd), &Device::Cpu).unwrap();
        let bias = Tensor::randn(0f32, 0.5, 3 * heads * hd, &Device::Cpu).unwrap();
        let op = FusedAttention {
            heads,
            q_scale: 1.0,
        };
        let plain = qkv.apply_op2_no_bwd(&bias, &op).unwrap();
        let d = max_diff(&plain, &attention_reference(&qkv, &bias, heads, None));
        assert!(d < 1e-5, "unmasked {d}");
        let mask =
            crate::backbone::text::causal_mask(t, candle_core::DType::F32, &Device::Cpu).unwrap();
        let masked = qkv.apply_op3_no_bwd(&bias, &mask, &op).unwrap();
        let d = max_diff(
            &masked,
            &attention_reference(&qkv, &bias, heads, Some(&mask)),
        );
        assert!(d < 1e-5, "causal {d}");
        // The mask matters: the first token sees only itself, so its context is its own v.
        assert!(max_diff(&masked, &plain) > 1e-3);
        // q_scale scales q with its bias: the same as scaling q's part of both inputs.
        let op = FusedAttention {
            heads,
            q_scale: 0.3,
        };
        let scaled = qkv.apply_op3_no_bwd(&bias, &mask, &op).unwrap();
        let d = heads * hd;
        let q_only = Tensor::cat(
            &[
                Tensor::full(0.3f32, d, &Device::Cpu).unwrap(),
                Tensor::ones(2 * d, candle_core::DType::F32, &Device::Cpu).unwrap(),
            ],
            0,
        )
        .unwrap();
        let want = attention_reference(
            &qkv.broadcast_mul(&q_only).unwrap(),
            &(&bias * &q_only).unwrap(),
            heads,
            Some(&mask),
        );
        let diff = max_diff(&scaled, &want);
        assert!(diff < 1e-5, "q_scale {diff}");
        assert!(max_diff(&scaled, &masked) > 1e-3);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let qkv = Tensor::zeros((1, 4, 30), candle_core::DType::F32, &Device::Cpu).unwrap();
        let bias = Tensor::zeros(30, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(qkv
            .apply_op2_no_bwd(
                &bias,
                &FusedAttention {
                    heads: 4,
                    q_scale: 1.0
                }
            )
            .is_err());
        let w = Tensor::zeros((7, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(qkv
            .apply_op2_no_bwd(&w, &LinearNoBias { transposed: true })
            .is_err());
    }
}
