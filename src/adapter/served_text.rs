//! A served text adapter's work in one block as a single routine over plain f32 rows: what a
//! query (a text or two, at most [`MAX_ROWS`] tokens in all) runs in each of the text tower's
//! blocks.
//!
//! The math is `modules::TextAdapter::forward`'s (spec sections 3 and 5), which stays the
//! reference (training, a GPU, batches of many texts) and which the tests hold this to. As candle
//! ops, one block's adapter is ~20 ops on (T, 64) matrices, each allocating a tensor and checking
//! layouts, some handing a few thousand values to rayon: perf put ~40% of a query's adapter time
//! outside the matrix products. Here the products run on the layers' packed weights
//! ([`Linear::packed_product`]) and everything between them is a loop over rows; from
//! [`SPLIT_ROWS`] rows on, each half of the rows runs on its own thread (one hand-off before the
//! attention, one after it). Hand-written because it is the adapter itself, not a general kernel.

use crate::backbone::kernels::Epilogue::{self, NoBias};
use crate::backbone::ops::{LayerNorm, Linear};
use crate::backbone::packed::MAX_ROWS;
use crate::backbone::vmath::{quick_gelu_in_place, softmax_in_place};
use crate::simd::{self, dot, Level, LANES};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let c = a.chunks_exact(LANES);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for (s, x) in acc.iter_mut().zip(x) {
            *s += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Adds `bias` (w,) to every w-wide row of `x`.
#[inline(always)]
fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `x += y + bias` row by row: a residual sum with the branch's bias (the tensor path's
/// `x + (y + b)`).
#[inline(always)]
fn add_residual(x: &mut [f32], y: &[f32], bias: &[f32]) {
    let w = bias.len();
    for (xr, yr) in x.chunks_exact_mut(w).zip(y.chunks_exact(w)) {
        for ((v, y), b) in xr.iter_mut().zip(yr).zip(bias) {
            *v += y + b;
        }
    }
}

/// A LayerNorm's parameters as plain values.
#[derive(Clone, Debug)]
struct RowNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl RowNorm {
    fn of(ln: &LayerNorm) -> Result<Self> {
        Ok(Self {
            weight: ln.weight.to_vec1()?,
            bias: ln.bias.to_vec1()?,
            eps: ln.eps as f32,
        })
    }

    /// Normalises every row of `x` (rows as wide as the weight) in place.
    #[inline(always)]
    fn apply(&self, x: &mut [f32]) {
        let w = self.weight.len();
        let mut centred = vec![0f32; w];
        for row in x.chunks_exact_mut(w) {
            let mean = sum(row) / w as f32;
            for (c, v) in centred.iter_mut().zip(row.iter()) {
                *c = v - mean;
            }
            let inv = 1.0 / (dot(&centred, &centred) / w as f32 + self.eps).sqrt();
            for (((v, c), g), b) in row
                .iter_mut()
                .zip(&centred)
                .zip(&self.weight)
                .zip(&self.bias)
            {
                *v = c * inv * g + b;
            }
        }
    }
}

/// What [`ServedText::new`] takes from a prepacked `TextAdapter`: every linear layer with its
/// packed copy (`down` and `up` as served: the tied W_down, the up-projection scaled by s).
pub(super) struct Parts<'a> {
    pub down: &'a Linear,
    pub down_bias: &'a Tensor,
    /// (words, w)
    pub pos: &'a Tensor,
    pub ln_pre: &'a LayerNorm,
    pub ln_1: &'a LayerNorm,
    pub in_proj: &'a Linear,
    pub out_proj: &'a Linear,
    pub ln_2: &'a LayerNorm,
    pub fc1: &'a Linear,
    pub fc2: &'a Linear,
    pub up: &'a Linear,
    pub heads: usize,
}

/// One block's served text adapter. The linear layers are clones of the adapter's (their weights
/// and packed copies are shared, not copied); biases, norms and the positional table are copied
/// out as plain values (~20 KB per block).
#[derive(Clone, Debug)]
pub(super) struct ServedText {
    down: Linear,
    down_bias: Vec<f32>,
    /// (words, w), row-major.
    pos: Vec<f32>,
    ln_pre: RowNorm,
    ln_1: RowNorm,
    in_proj: Linear,
    in_bias: Vec<f32>,
    out_proj: Linear,
    out_bias: Vec<f32>,
    ln_2: RowNorm,
    /// Its bias is applied in the product's epilogue (with QuickGELU).
    fc1: Linear,
    fc2: Linear,
    fc2_bias: Vec<f32>,
    up: Linear,
    up_bias: Vec<f32>,
    heads: usize,
    /// Adapter width (64) and backbone width (512).
    w: usize,
    d: usize,
    words: usize,
}

fn bias_of(l: &Linear, what: &str) -> Result<Vec<f32>> {
    match &l.bias {
        Some(b) => b.to_vec1(),
        None => candle_core::bail!("a served text adapter's {what} has no bias"),
    }
}

impl ServedText {
    pub fn new(p: Parts) -> Result<Self> {
        let (words, w) = p.pos.dims2()?;
        let d = p.down.weight()?.dim(1)?;
        let layers = [p.down, p.in_proj, p.out_proj, p.fc1, p.fc2, p.up];
        if !layers.iter().all(|l| l.has_packed()) || w % p.heads != 0 {
            candle_core::bail!("a served text adapter needs packed layers and whole heads");
        }
        Ok(Self {
            down: p.down.clone(),
            down_bias: p.down_bias.to_vec1()?,
            pos: p.pos.flatten_all()?.to_vec1()?,
            ln_pre: RowNorm::of(p.ln_pre)?,
            ln_1: RowNorm::of(p.ln_1)?,
            in_proj: p.in_proj.clone(),
            in_bias: bias_of(p.in_proj, "in_proj")?,
            out_proj: p.out_proj.clone(),
            out_bias: bias_of(p.out_proj, "out_proj")?,
            ln_2: RowNorm::of(p.ln_2)?,
            fc1: p.fc1.clone(),
            fc2: p.fc2.clone(),
            fc2_bias: bias_of(p.fc2, "fc2")?,
            up: p.up.clone(),
            up_bias: bias_of(p.up, "up")?,
            heads: p.heads,
            w,
            d,
            words,
        })
    }

    /// `s * A(f)` for the MLP output f (N, T, d) when this routine serves it: f32 on the CPU,
    /// untracked, contiguous, N*T at most [`MAX_ROWS`]. `None` sends the caller to the tensor
    /// path.
    pub fn forward(&self, f: &Tensor) -> Result<Option<Tensor>> {
        self.forward_at(simd::level(), f)
    }

    /// [`Self::forward`] through `level`'s SIMD copy (how the tests check each); an error when
    /// this CPU cannot run it.
    pub fn forward_at(&self, level: Level, f: &Tensor) -> Result<Option<Tensor>> {
        if !simd::runs(level) {
            candle_core::bail!("this CPU (or build) cannot run the {} copy", level.name());
        }
        let (n, t, d) = f.dims3()?;
        let served = n * t <= MAX_ROWS
            && d == self.d
            && t <= self.words
            && f.dtype() == DType::F32
            && f.device().is_cpu()
            && f.is_contiguous()
            && !f.track_op();
        if !served {
            return Ok(None);
        }
        f.apply_op1_no_bwd(&AtLevel {
            routine: self,
            level,
        })
        .map(Some)
    }

    fn product(&self, l: &Linear, a: &[f32], rows: usize, e: Epilogue) -> Result<Vec<f32>> {
        l.packed_product(a, rows, e).unwrap_or_else(|| {
            candle_core::bail!("a served text adapter's layer has no packed copy for {rows} rows")
        })
    }

    /// f: (N*T, d) rows of N texts of T tokens -> `s * A(f)`, (N*T, d) through `level`'s copy.
    ///
    /// Everything but the attention is per row, and the attention only reads the QKV rows, so the
    /// block runs in two stages, each over two halves of the rows on two threads when there are
    /// [`SPLIT_ROWS`] or more (a 32-token query): in, from the input to the biased QKV; out, from
    /// the attention of its rows to the up-projection. The products alone took one core's peak.
    ///
    /// # Safety
    /// The CPU must run `level` ([`simd::runs`]).
    unsafe fn run_at(&self, level: Level, f: &[f32], n: usize, t: usize) -> Result<Vec<f32>> {
        let rows = n * t;
        let split = rows >= SPLIT_ROWS && rayon::current_num_threads() > 1;
        if !split {
            // SAFETY: the caller guarantees the CPU runs `level`.
            let (mut x, qkv) = unsafe { self.rows_in_at(level, f, 0, rows, t)? };
            return unsafe { self.rows_out_at(level, &mut x, &qkv, 0, rows, t) };
        }
        let half = rows / 2;
        // SAFETY (all four calls): as above.
        let (a, b) = rayon::join(
            || unsafe { self.rows_in_at(level, f, 0, half, t) },
            || unsafe { self.rows_in_at(level, f, half, rows - half, t) },
        );
        let ((mut xa, qa), (mut xb, qb)) = (a?, b?);
        let qkv = [qa, qb].concat();
        let (a, b) = rayon::join(
            || unsafe { self.rows_out_at(level, &mut xa, &qkv, 0, half, t) },
            || unsafe { self.rows_out_at(level, &mut xb, &qkv, half, rows - half, t) },
        );
        let mut out = a?;
        out.extend_from_slice(&b?);
        Ok(out)
    }

    /// [`Self::rows_in`] through `level`'s copy.
    ///
    /// # Safety
    /// The CPU must run `level` ([`simd::runs`]).
    unsafe fn rows_in_at(
        &self,
        level: Level,
        f: &[f32],
        first: usize,
        count: usize,
        t: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = self;
        // SAFETY: the caller guarantees the CPU runs `level`.
        unsafe {
            simd::at_level!(level, |s: &ServedText,
                                    f: &[f32],
                                    first: usize,
                                    count: usize,
                                    t: usize|
             -> Result<(Vec<f32>, Vec<f32>)> {
                s.rows_in(f, first, count, t)
            })
        }
    }

    /// [`Self::rows_out`] through `level`'s copy.
    ///
    /// # Safety
    /// The CPU must run `level` ([`simd::runs`]).
    unsafe fn rows_out_at(
        &self,
        level: Level,
        x: &mut [f32],
        qkv: &[f32],
        first: usize,
        count: usize,
        t: usize,
    ) -> Result<Vec<f32>> {
        let s = self;
        // SAFETY: the caller guarantees the CPU runs `level`.
        unsafe {
            simd::at_level!(level, |s: &ServedText,
                                    x: &mut [f32],
                                    qkv: &[f32],
                                    first: usize,
                                    count: usize,
                                    t: usize|
             -> Result<Vec<f32>> {
                s.rows_out(x, qkv, first, count, t)
            })
        }
    }

    /// Rows `first..first + count` of f (N*T, d), rows of texts of T tokens: the TRM's input x
    /// (count, w) and the biased QKV (count, 3w).
    #[inline(always)]
    fn rows_in(
        &self,
        f: &[f32],
        first: usize,
        count: usize,
        t: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (w, d) = (self.w, self.d);
        // Down, its bias and the positional table, then LN: the TRM's input.
        let mut x = self.product(&self.down, &f[first * d..][..count * d], count, NoBias)?;
        for (i, row) in x.chunks_exact_mut(w).enumerate() {
            let pos = &self.pos[((first + i) % t) * w..][..w];
            for ((v, b), p) in row.iter_mut().zip(&self.down_bias).zip(pos) {
                *v = *v + b + p;
            }
        }
        self.ln_pre.apply(&mut x);
        // TRM, attention half: LN1 and the QKV projection.
        let mut a = x.clone();
        self.ln_1.apply(&mut a);
        let mut qkv = self.product(&self.in_proj, &a, count, NoBias)?;
        add_rows(&mut qkv, &self.in_bias);
        Ok((x, qkv))
    }

    /// Rows `first..first + count` from their TRM input x (count, w), given the QKV of every row
    /// (N*T, 3w): `s * A(f)` of those rows, (count, d).
    #[inline(always)]
    fn rows_out(
        &self,
        x: &mut [f32],
        qkv: &[f32],
        first: usize,
        count: usize,
        t: usize,
    ) -> Result<Vec<f32>> {
        // TRM: x = x + MHA(LN1(x)), causal.
        let ctx = causal_attention(qkv, first, count, t, self.w, self.heads);
        let o = self.product(&self.out_proj, &ctx, count, NoBias)?;
        add_residual(x, &o, &self.out_bias);
        // TRM: x = x + MLP(LN2(x)), fc1's bias and QuickGELU in its product's epilogue.
        let mut a = x.to_vec();
        self.ln_2.apply(&mut a);
        let m = self.product(&self.fc1, &a, count, Epilogue::BiasQuickGelu)?;
        let y = self.product(&self.fc2, &m, count, NoBias)?;
        add_residual(x, &y, &self.fc2_bias);
        // QuickGELU, then the scaled up-projection.
        quick_gelu_in_place(x);
        let mut out = self.product(&self.up, x, count, NoBias)?;
        add_rows(&mut out, &self.up_bias);
        Ok(out)
    }
}

/// Rows from which a block's routine runs on two threads. Twelve text hooks, in a pool of two,
/// two halves against one thread: 16 rows 1.43x, 24 rows 1.51x, 32 rows 1.53x faster
/// (BENCHMARKS.md, "The served routine on two threads"). Shorter inputs were not tried split: the
/// whole of their twelve hooks is 0.3-0.4 ms.
const SPLIT_ROWS: usize = 16;

/// Causal multi-head attention of rows `first..first + count` from the biased QKV rows of every
/// text (N*T, 3w) (q, k, v side by side, heads side by side within each): their merged context,
/// (count, w).
#[inline(always)]
fn causal_attention(
    qkv: &[f32],
    first: usize,
    count: usize,
    t: usize,
    w: usize,
    heads: usize,
) -> Vec<f32> {
    let hd = w / heads;
    let scale = (hd as f32).powf(-0.5);
    let at =
        |row: usize, which: usize, head: usize| &qkv[row * 3 * w + which * w + head * hd..][..hd];
    let mut ctx = vec![0f32; count * w];
    let mut p = vec![0f32; t];
    for (r, out_row) in (first..first + count).zip(ctx.chunks_exact_mut(w)) {
        // The text's first row, and this row's place in it: it sees rows start..=r.
        let start = r - r % t;
        for h in 0..heads {
            let q = at(r, 0, h);
            let scores = &mut p[..=r - start];
            for (j, sc) in scores.iter_mut().enumerate() {
                *sc = dot(q, at(start + j, 1, h)) * scale;
            }
            softmax_in_place(scores);
            let out = &mut out_row[h * hd..][..hd];
            for (j, &pj) in scores.iter().enumerate() {
                for (o, v) in out.iter_mut().zip(at(start + j, 2, h)) {
                    *o += pj * v;
                }
            }
        }
    }
    ctx
}

/// The routine as a candle op, through one level's copy (checked by [`ServedText::forward_at`]).
struct AtLevel<'a> {
    routine: &'a ServedText,
    level: Level,
}

impl CustomOp1 for AtLevel<'_> {
    fn name(&self) -> &'static str {
        "served-text-adapter"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, t, d) = l.shape().dims3()?;
        let f = match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("{}: needs contiguous f32 input", self.name()),
        };
        // SAFETY: `forward_at` checked that this CPU runs `level`.
        let out = unsafe { self.routine.run_at(self.level, f, n, t)? };
        Ok((CpuStorage::F32(out), Shape::from((n, t, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_match_plain_sums_on_odd_lengths() {
        for len in [1, 15, 16, 17, 64, 77] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-5, "dot {len}");
            let want: f64 = a.iter().map(|x| *x as f64).sum();
            assert!((sum(&a) as f64 - want).abs() < 1e-5, "sum {len}");
        }
    }
}
