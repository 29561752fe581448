//! The few tensor operations the backbone needs beyond candle's basics, each fast on the CPU for
//! inference and still differentiable for adapter training.
//!
//! candle's fused layer norm and softmax have no backward pass, and its QuickGELU costs three passes
//! over memory. Here each operation takes the fused path when nothing asks for gradients and the
//! composite (differentiable) path when the input is tracked, so the same forward code serves
//! serving and training. Row-major folding of `(batch, tokens)` into GEMM rows also lives here.
//!
//! The hand-written kernels (bias + QuickGELU, `add3`, the QKV head split) exist for the CPU only;
//! on any other device (CUDA) every operation takes its composite path of candle ops, which candle
//! runs on the GPU. [`with_composite_ops`] forces that route on the CPU too, so tests can check it
//! against the fused one without a GPU.

use super::int8::QuantizedLinear;
use super::kernels::{Epilogue, FrozenProduct, FrozenProductOp};
use super::packed::{self, PackedLinear};
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor, D,
};
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::Arc;

thread_local! {
    static FUSED_CPU_KERNELS: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with the hand-written CPU kernels turned off on this thread: every operation of this
/// module takes the composite route it takes on a GPU. For tests and `mvserve bench parity`; the
/// result must match the fused route to float rounding.
pub fn with_composite_ops<R>(f: impl FnOnce() -> R) -> R {
    with_fused_kernels(false, f)
}

/// Whether the hand-written CPU kernels are on for this thread.
pub(super) fn fused_kernels_here() -> bool {
    FUSED_CPU_KERNELS.with(|c| c.get())
}

/// Runs `f` with the hand-written CPU kernels on or off on this thread, restoring the setting
/// after (also when `f` panics). `super::on_pool` carries the caller's setting to the pool thread.
pub(super) fn with_fused_kernels<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FUSED_CPU_KERNELS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FUSED_CPU_KERNELS.with(|c| c.replace(on)));
    f()
}

/// Whether `x` may go through a hand-written CPU kernel: it lives on the CPU and the kernels are
/// not turned off on this thread. Each caller also checks dtype, contiguity and tracking.
pub(super) fn cpu_kernels_for(x: &Tensor) -> bool {
    x.device().is_cpu() && fused_kernels_here()
}

/// A linear layer `y = x W^T + b` whose leading dimensions are folded into the GEMM rows, so a
/// batch of 12 images x 50 tokens is one 600-row matrix product rather than 12 small ones.
///
/// A frozen layer (the backbone's, [`Linear::frozen`]) keeps its weight transposed, `(in, out)`
/// and contiguous, from load on: the layout the GEMM reads its right-hand side in, so no call
/// gathers it through a strided view again. Trainable layers (adapters) keep PyTorch's layout, so
/// a weight updated in place is read as it is.
///
/// A frozen layer may also carry an int8 copy of its weight ([`Linear::quantize_int8`]): then
/// its CPU products without gradients go through `int8`, and everything else (composite ops, a
/// GPU, tracked inputs) still uses the f32 weight, which is kept. It may carry an f32 copy
/// prepacked for short products ([`Linear::prepack`], see [`super::packed`]): products of at most
/// [`packed::MAX_ROWS`] rows go through it when there is no int8 copy.
#[derive(Clone, Debug)]
pub struct Linear {
    /// (out, in) as stored by PyTorch, or W^T (in, out) contiguous when `transposed`.
    w: Tensor,
    transposed: bool,
    /// (out,)
    pub bias: Option<Tensor>,
    /// W^T in int8, shared by the clones of a tower.
    int8: Option<Arc<QuantizedLinear>>,
    /// W^T packed for short f32 products, shared by the clones of a tower.
    packed: Option<Arc<PackedLinear>>,
}

impl Linear {
    /// `weight` is (out, in), as stored by PyTorch; used as it is.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            w: weight,
            transposed: false,
            bias,
            int8: None,
            packed: None,
        }
    }

    /// A layer whose weight never changes: stored transposed once, here.
    pub fn frozen(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            w: weight.t()?.contiguous()?,
            transposed: true,
            bias,
            int8: None,
            packed: None,
        })
    }

    /// Adds the int8 copy of a frozen f32 CPU layer's weight (see [`super::int8`]).
    pub fn quantize_int8(&mut self) -> Result<()> {
        let f = self.frozen_f32("an int8 path")?;
        let q = QuantizedLinear::new(&f.w, f.k, f.n, f.bias.as_deref());
        self.int8 = Some(Arc::new(q));
        Ok(())
    }

    pub fn has_int8(&self) -> bool {
        self.int8.is_some()
    }

    /// Drops the int8 copy (if any): f32 products again.
    pub fn drop_int8(&mut self) {
        self.int8 = None;
    }

    /// The f32 CPU weights, as W^T (k, n), that a layer hands to a copy of itself. Only a layer
    /// whose weight never changes may have a copy: a frozen layer, or a served adapter's (plain
    /// tensors, never a `Var`).
    fn frozen_f32(&self, what: &str) -> Result<FrozenF32> {
        if self.w.dtype() != DType::F32 || !self.w.device().is_cpu() || self.w.is_variable() {
            candle_core::bail!("only an f32 layer on the CPU that never changes has {what}");
        }
        let wt = match self.transposed {
            true => self.w.clone(),
            false => self.w.t()?.contiguous()?,
        };
        let (k, n) = wt.dims2()?;
        Ok(FrozenF32 {
            k,
            n,
            w: wt.flatten_all()?.to_vec1()?,
            bias: self.bias.as_ref().map(|b| b.to_vec1()).transpose()?,
        })
    }

    /// Adds a copy of the weight packed for short products (see [`super::packed`]); the layer
    /// keeps its own weight for everything else.
    pub fn prepack(&mut self) -> Result<()> {
        let f = self.frozen_f32("a packed copy")?;
        let packed = PackedLinear::new(&f.w, f.k, f.n, f.bias.as_deref());
        self.packed = Some(Arc::new(packed));
        Ok(())
    }

    pub fn has_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// Drops the packed copy (if any).
    pub fn drop_packed(&mut self) {
        self.packed = None;
    }

    /// The layer's own CPU product for `x`, if the fused CPU route is open: the int8 copy when
    /// there is one, else the packed copy when `x` has few enough rows.
    fn frozen_product_for(&self, x: &Tensor) -> Option<&dyn FrozenProduct> {
        let ok =
            cpu_kernels_for(x) && x.dtype() == DType::F32 && x.is_contiguous() && !x.track_op();
        if !ok {
            return None;
        }
        if let Some(q) = self.int8.as_deref() {
            return Some(q);
        }
        let p = self.packed.as_deref()?;
        let rows = x.elem_count() / p.k().max(1);
        (rows <= packed::MAX_ROWS).then_some(p as &dyn FrozenProduct)
    }

    /// `a (m, k) · W^T -> (m, n)` on plain f32 rows through the packed copy, then the epilogue:
    /// for a caller that runs a chain of small layers over its own buffers (a served text
    /// adapter's per-block routine). `None` without a packed copy or above [`packed::MAX_ROWS`].
    pub fn packed_product(
        &self,
        a: &[f32],
        m: usize,
        epilogue: Epilogue,
    ) -> Option<Result<Vec<f32>>> {
        let p = self.packed.as_deref().filter(|_| m <= packed::MAX_ROWS)?;
        Some(p.forward(a, m, epilogue).map_err(candle_core::Error::Msg))
    }

    /// The weight as (out, in) (a transposed view for a frozen layer).
    pub fn weight(&self) -> Result<Tensor> {
        match self.transposed {
            true => self.w.t(),
            false => Ok(self.w.clone()),
        }
    }

    /// x W^T without the bias: (.., in) -> (.., out).
    pub fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(layer) = self.frozen_product_for(x) {
            let op = FrozenProductOp {
                layer,
                epilogue: Epilogue::NoBias,
            };
            return x.apply_op1_no_bwd(&op);
        }
        let fast = cpu_kernels_for(x)
            && [x, &self.w]
                .iter()
                .all(|t| t.dtype() == DType::F32 && t.is_contiguous() && !t.track_op());
        if fast {
            let op = super::kernels::LinearNoBias {
                transposed: self.transposed,
            };
            return x.apply_op2_no_bwd(&self.w, &op);
        }
        let dims = x.dims();
        let inner = dims[dims.len() - 1];
        let rows = x.elem_count() / inner;
        let (rhs, out) = match self.transposed {
            true => (self.w.clone(), self.w.dim(1)?),
            false => (self.w.t()?, self.w.dim(0)?),
        };
        let y = x.reshape((rows, inner))?.matmul(&rhs)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = out;
        y.reshape(out_dims)
    }
}

/// A frozen layer's W^T (k, n) and bias as plain f32 values.
struct FrozenF32 {
    k: usize,
    n: usize,
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Linear {
    /// `quick_gelu(x W^T + b)`: on the CPU without gradients one GEMM whose output gets its bias
    /// and activation in place, else [`bias_quick_gelu`] after the product.
    pub fn forward_bias_quick_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let bias = self
            .bias
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("bias + QuickGELU needs a bias".into()))?;
        if let Some(layer) = self.frozen_product_for(x) {
            let op = FrozenProductOp {
                layer,
                epilogue: Epilogue::BiasQuickGelu,
            };
            return x.apply_op1_no_bwd(&op);
        }
        let fast = cpu_kernels_for(x)
            && [x, &self.w, bias]
                .iter()
                .all(|t| t.dtype() == DType::F32 && t.is_contiguous() && !t.track_op());
        if fast {
            let op = super::kernels::LinearBiasQuickGelu {
                transposed: self.transposed,
            };
            return x.apply_op3_no_bwd(&self.w, bias, &op);
        }
        bias_quick_gelu(&self.forward_no_bias(x)?, bias)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward_no_bias(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// LayerNorm over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // candle's own layer norm kernel exists for the CPU and CUDA (not ours to turn off).
        let fused_kernel = x.device().is_cpu() || x.device().is_cuda();
        if x.track_op() || !fused_kernel || !x.is_contiguous() {
            let mean = x.mean_keepdim(D::Minus1)?;
            let xc = x.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
                .broadcast_mul(&self.weight)?
                .broadcast_add(&self.bias)
        } else {
            candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
        }
    }
}

/// Softmax over the last dimension: fused when untracked, composite (with backward) otherwise.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() || !x.is_contiguous() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

const QUICK_GELU_ALPHA: f32 = 1.702;

/// QuickGELU, `x * sigmoid(1.702 x)`, the activation of OpenAI CLIP and of every MV-Adapter.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if cpu_kernels_for(x) && x.dtype() == DType::F32 && !x.track_op() {
        let zero = Tensor::zeros(x.dim(D::Minus1)?, DType::F32, x.device())?;
        return x.apply_op2_no_bwd(&zero, &BiasQuickGelu);
    }
    x * candle_nn::ops::sigmoid(&(x * QUICK_GELU_ALPHA as f64)?)?
}

/// `quick_gelu(x + bias)` with bias broadcast over the last dimension: one pass over memory on the
/// CPU instead of four (bias add, scale, sigmoid, multiply).
pub fn bias_quick_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if cpu_kernels_for(x) && x.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        if x.track_op() || bias.track_op() {
            return x.apply_op2(bias, BiasQuickGelu);
        }
        return x.apply_op2_no_bwd(bias, &BiasQuickGelu);
    }
    quick_gelu(&x.broadcast_add(bias)?)
}

/// The values of a contiguous f32 CPU tensor, which is all the fused kernels below accept (their
/// callers route everything else to composite ops).
fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: inputs must be contiguous");
    };
    Ok(&v[start..end])
}

struct BiasQuickGelu;

impl CustomOp2 for BiasQuickGelu {
    fn name(&self) -> &'static str {
        "bias-quick-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (
            f32_slice(self.name(), s1, l1)?,
            f32_slice(self.name(), s2, l2)?,
        );
        let n = b.len();
        if n == 0 || x.len() % n != 0 || l1.dims().last() != Some(&n) {
            candle_core::bail!("bias-quick-gelu: bias does not match the last dimension");
        }
        let mut out = vec![0f32; x.len()];
        // Rows of a few thousand values keep rayon's per-task overhead negligible.
        let rows_per_task = (16384 / n).max(1);
        out.par_chunks_mut(n * rows_per_task)
            .zip(x.par_chunks(n * rows_per_task))
            .for_each(|(o, xs)| {
                for (orow, xrow) in o.chunks_exact_mut(n).zip(xs.chunks_exact(n)) {
                    super::vmath::bias_quick_gelu_row(orow, xrow, b);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d/dz [z * s(a z)] = s + a z s (1 - s), with z = x + b and s = sigmoid(a z).
        let z = x.broadcast_add(bias)?.detach();
        let s = candle_nn::ops::sigmoid(&(&z * QUICK_GELU_ALPHA as f64)?)?;
        let ds = (&s + ((&z * QUICK_GELU_ALPHA as f64)? * &s)?.mul(&(1.0 - &s)?)?)?;
        let gz = grad.mul(&ds)?;
        let rank = gz.rank();
        let mut gb = gz.clone();
        for _ in 0..rank - 1 {
            gb = gb.sum(0)?;
        }
        Ok((Some(gz), Some(gb)))
    }
}

/// `a + b + c` in one pass, where `b` is either `a`'s shape or a bias over the last dimension.
///
/// Residual connections are three-way sums (`x + y W^T + bias`, `h + f + adapter`); candle would
/// make a full pass over memory for each `+`.
pub fn add3(a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    let fusable = cpu_kernels_for(a)
        && [a, b, c]
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.is_contiguous() && !t.track_op())
        && a.dims() == c.dims()
        && (b.dims() == a.dims() || (b.rank() == 1 && a.dims().last() == Some(&b.dim(0)?)));
    if fusable {
        return a.apply_op3_no_bwd(b, c, &Add3);
    }
    a.broadcast_add(b)?.add(c)
}

struct Add3;

impl CustomOp3 for Add3 {
    fn name(&self) -> &'static str {
        "add3"
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
        let a = f32_slice(self.name(), s1, l1)?;
        let b = f32_slice(self.name(), s2, l2)?;
        let c = f32_slice(self.name(), s3, l3)?;
        let mut out = vec![0f32; a.len()];
        if b.len() == a.len() {
            const CHUNK: usize = 16384;
            out.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK))
                .zip(b.par_chunks(CHUNK))
                .zip(c.par_chunks(CHUNK))
                .for_each(|(((o, a), b), c)| {
                    for (((o, a), b), c) in o.iter_mut().zip(a).zip(b).zip(c) {
                        *o = a + b + c;
                    }
                });
        } else {
            let n = b.len();
            let chunk = n * (16384 / n).max(1);
            out.par_chunks_mut(chunk)
                .zip(a.par_chunks(chunk))
                .zip(c.par_chunks(chunk))
                .for_each(|((o, a), c)| {
                    let rows = o
                        .chunks_exact_mut(n)
                        .zip(a.chunks_exact(n))
                        .zip(c.chunks_exact(n));
                    for ((o, a), c) in rows {
                        for (((o, a), b), c) in o.iter_mut().zip(a).zip(b).zip(c) {
                            *o = a + b + c;
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Multi-head self-attention from the raw QKV projection `(N, T, 3D)` (without its bias), the
/// `(3D,)` bias and an optional additive mask broadcastable to `(N, H, T, T)`: the merged context
/// `(N, T, D)`, before the output projection. q (with its bias) is scaled by `q_scale`.
///
/// On the CPU without gradients, with no mask or a `(T, T)` one, this is one fused kernel
/// ([`super::kernels::FusedAttention`]); otherwise candle's differentiable ops (a GPU, training,
/// the video adapter's per-sample key mask).
pub fn self_attention(
    raw: &Tensor,
    bias: &Tensor,
    heads: usize,
    q_scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, t, d3) = raw.dims3()?;
    let fused = cpu_kernels_for(raw)
        && [raw, bias]
            .iter()
            .all(|x| x.dtype() == DType::F32 && x.is_contiguous() && !x.track_op())
        && mask.is_none_or(|m| {
            m.dtype() == DType::F32 && m.is_contiguous() && !m.track_op() && m.dims() == [t, t]
        });
    if fused {
        let op = super::kernels::FusedAttention {
            heads,
            q_scale: q_scale as f32,
        };
        return match mask {
            None => raw.apply_op2_no_bwd(bias, &op),
            Some(m) => raw.apply_op3_no_bwd(bias, m, &op),
        };
    }
    // (N, T, 3D) -> (3, N, H, T, hd), one copy so q, k and v are each contiguous.
    let qkv = split_qkv_heads(raw, bias, heads)?;
    let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
    let q = match q_scale {
        1.0 => q,
        s => (q * s)?,
    };
    let scores = q.matmul(&k.t()?)?; // (N, H, T, T)
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let ctx = softmax_last_dim(&scores)?.matmul(&v)?; // (N, H, T, hd)
    ctx.transpose(1, 2)?.reshape((n, t, d3 / 3))
}

/// Adds the QKV bias and splits heads in one copy: (N, T, 3D) + (3D,) -> (3, N, H, T, D/H), each
/// of q, k and v contiguous for the attention matrix products.
pub fn split_qkv_heads(qkv: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
    let (n, t, d3) = qkv.dims3()?;
    let hd = d3 / 3 / heads;
    let fusable = cpu_kernels_for(qkv)
        && [qkv, bias]
            .iter()
            .all(|x| x.dtype() == DType::F32 && x.is_contiguous() && !x.track_op());
    if fusable {
        return qkv.apply_op2_no_bwd(bias, &SplitHeads { heads });
    }
    qkv.broadcast_add(bias)?
        .reshape((n, t, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()
}

struct SplitHeads {
    heads: usize,
}

impl CustomOp2 for SplitHeads {
    fn name(&self) -> &'static str {
        "split-qkv-heads"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (
            f32_slice(self.name(), s1, l1)?,
            f32_slice(self.name(), s2, l2)?,
        );
        let (n, t, d3) = l1.shape().dims3()?;
        let h = self.heads;
        let hd = d3 / 3 / h;
        if b.len() != d3 || hd * 3 * h != d3 {
            candle_core::bail!("split-qkv-heads: bias or heads do not match {d3}");
        }
        let mut out = vec![0f32; x.len()];
        // One task per (which, sample, head): a contiguous (T, hd) block of the output.
        out.par_chunks_mut(t * hd).enumerate().for_each(|(blk, o)| {
            let head = blk % h;
            let sample = (blk / h) % n;
            let which = blk / (h * n);
            let col = which * h * hd + head * hd;
            let bias = &b[col..col + hd];
            for tok in 0..t {
                let src = &x[(sample * t + tok) * d3 + col..][..hd];
                for ((o, &v), &bb) in o[tok * hd..(tok + 1) * hd].iter_mut().zip(src).zip(bias) {
                    *o = v + bb;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((3, n, h, t, hd))))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// max |a - b| over all elements (also used by `kernels`' tests).
    pub(in crate::backbone) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn reference(x: &Tensor, b: &Tensor) -> Tensor {
        let z = x.broadcast_add(b).unwrap();
        (&z * candle_nn::ops::sigmoid(&(&z * 1.702).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn fused_bias_quick_gelu_matches_the_composite() {
        let x = Tensor::randn(0f32, 3.0, (5, 7, 33), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 33, &Device::Cpu).unwrap();
        let d = max_diff(&bias_quick_gelu(&x, &b).unwrap(), &reference(&x, &b));
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn composite_mode_takes_the_gpu_route_and_restores_the_kernels() {
        let x = Tensor::randn(0f32, 3.0, (4, 6, 40), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 40, &Device::Cpu).unwrap();
        let want = reference(&x, &b);
        let exact = |t: Tensor| max_diff(&t, &want);
        // The composite route is the very same candle ops as the reference: bit-identical.
        let (gelu, plain) = with_composite_ops(|| {
            assert!(!cpu_kernels_for(&x));
            (
                bias_quick_gelu(&x, &b).unwrap(),
                quick_gelu(&x.broadcast_add(&b).unwrap()).unwrap(),
            )
        });
        assert_eq!(exact(gelu), 0.0);
        assert_eq!(exact(plain), 0.0);
        assert!(
            cpu_kernels_for(&x),
            "the kernels are back on after the closure"
        );
        // A panic inside the closure restores them too.
        let _ = std::panic::catch_unwind(|| with_composite_ops(|| panic!("boom")));
        assert!(cpu_kernels_for(&x));
        // Nested calls keep the outer setting until the outer call ends.
        with_composite_ops(|| {
            with_composite_ops(|| ());
            assert!(!cpu_kernels_for(&x));
        });
    }

    #[test]
    fn fused_bias_quick_gelu_gradients_match_the_composite() {
        let x = Var::randn(0f32, 2.0, (4, 9), &Device::Cpu).unwrap();
        let b = Var::randn(0f32, 1.0, 9, &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 9), &Device::Cpu).unwrap();
        let fused = (bias_quick_gelu(x.as_tensor(), b.as_tensor()).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let plain = (reference(x.as_tensor(), b.as_tensor()) * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &b] {
            let d = max_diff(fused.get(v).unwrap(), plain.get(v).unwrap());
            assert!(d < 1e-4, "{d}");
        }
    }

    #[test]
    fn add3_matches_plain_adds() {
        let a = Tensor::randn(0f32, 1.0, (3, 5, 40), &Device::Cpu).unwrap();
        let c = Tensor::randn(0f32, 1.0, (3, 5, 40), &Device::Cpu).unwrap();
        for b in [
            Tensor::randn(0f32, 1.0, 40, &Device::Cpu).unwrap(),
            Tensor::randn(0f32, 1.0, (3, 5, 40), &Device::Cpu).unwrap(),
        ] {
            let want = a.broadcast_add(&b).unwrap().add(&c).unwrap();
            let d = max_diff(&add3(&a, &b, &c).unwrap(), &want);
            assert!(d < 1e-6, "{d}");
        }
    }

    #[test]
    fn split_qkv_heads_matches_reshape_and_permute() {
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3 * 12), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 36, &Device::Cpu).unwrap();
        let want = x
            .broadcast_add(&b)
            .unwrap()
            .reshape((2, 5, 3, 4, 3))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap();
        let got = split_qkv_heads(&x, &b, 4).unwrap();
        assert_eq!(got.dims(), want.dims());
        let d = max_diff(&got, &want);
        assert_eq!(d, 0.0);
    }

    #[test]
    fn layer_norm_paths_agree() {
        let x = Tensor::randn(0f32, 2.0, (3, 4, 16), &Device::Cpu).unwrap();
        let ln = LayerNorm {
            weight: Tensor::randn(1f32, 0.1, 16, &Device::Cpu).unwrap(),
            bias: Tensor::randn(0f32, 0.1, 16, &Device::Cpu).unwrap(),
            eps: 1e-5,
        };
        let fused = ln.forward(&x).unwrap();
        let v = Var::from_tensor(&x).unwrap();
        let slow = ln.forward(v.as_tensor()).unwrap();
        let d = max_diff(&fused, &slow);
        assert!(d < 1e-5, "{d}");
    }
}
