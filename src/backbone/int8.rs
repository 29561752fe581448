//! The backbone's reduced-precision CPU path (`--precision int8`): the encoder's four linear
//! layers per block (QKV, attention output, fc1, fc2) as int8 matrix products.
//!
//! It owns the precision setting, the check that the CPU can run it, the quantisation of weights
//! (once, at load) and of activations (per call), and the dequantising epilogue. Everything else
//! of the backbone (layer norms, attention's two products and softmax, the patch embedding, the
//! projections, the adapter hook) stays in f32.
//!
//! Scheme: each weight column (one output channel) is quantised to s8, symmetric, with its own
//! scale; each activation row (one token) to u8 with its own scale and zero point (asymmetric,
//! so a skewed row such as QuickGELU's output uses all 256 levels). The product runs in i32 and
//! the epilogue turns it back into f32 with `row scale x column scale`, adding the bias and, for
//! fc1, applying QuickGELU on the values while they are in cache.
//!
//! The GEMM itself is `rten-gemm`'s u8 x s8 -> i32 kernel (maintained, prepacked right-hand
//! side); the zero points are taken off in the epilogue. It picks its kernel at run time from the CPU's features, and on a
//! CPU with AVX-512 VNNI that is `vpdpbusd` (four products per 32-bit lane, no intermediate
//! saturation). Without VNNI its kernels fall back to `vpmaddubsw`, whose 16-bit pair sums
//! saturate, so this module refuses int8 there instead of computing something else
//! ([`int8_support`]).

use super::kernels::{Epilogue, FrozenProduct};
use super::vmath;
use rayon::prelude::*;
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmUninitOptions, PackedBMatrix};
use rten_tensor::NdTensorView;
use std::fmt;
use std::mem::MaybeUninit;
use std::str::FromStr;

/// The backbone's compute precision on the CPU, as `--precision` spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Every product in f32 (the reference).
    #[default]
    F32,
    /// The encoder's linear layers in int8 (see the module documentation).
    Int8,
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            _ => Err(format!("unknown precision {s:?}: expected f32 or int8")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        })
    }
}

/// Ok when this CPU runs the int8 path at full speed and without saturation, else the reason
/// (which feature is missing). Checked at run time, never assumed from the build.
pub fn int8_support() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    {
        let missing: Vec<&str> = [
            ("avx512f", std::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::is_x86_feature_detected!("avx512bw")),
            ("avx512vl", std::is_x86_feature_detected!("avx512vl")),
            ("avx512vnni", std::is_x86_feature_detected!("avx512vnni")),
        ]
        .into_iter()
        .filter_map(|(name, has)| (!has).then_some(name))
        .collect();
        if missing.is_empty() {
            if EXECUTOR.with(|e| e.may_saturate()) {
                return Err(format!(
                    "--precision int8: the int8 kernel chosen for this CPU ({}) may saturate",
                    kernel_name()
                ));
            }
            return Ok(());
        }
        Err(format!(
            "--precision int8 needs a CPU with AVX-512 VNNI; this one lacks {} (use --precision f32)",
            missing.join(", ")
        ))
    }
    #[cfg(not(target_arch = "x86_64"))]
    Err("--precision int8 needs an x86-64 CPU with AVX-512 VNNI (use --precision f32)".into())
}

thread_local! {
    /// The executor: its kernel is chosen when it is made, from the CPU's features. rten's
    /// executor is not `Send`, so each calling thread has its own; they all pick the same kernel
    /// on one CPU, and a packed weight is checked against the kernel that reads it (rten refuses
    /// a mismatch with an error, never a wrong result).
    static EXECUTOR: GemmExecutor<u8, i8, i32> = GemmExecutor::default();
}

/// The name of the int8 kernel this CPU runs (for the benchmark's report).
pub fn kernel_name() -> String {
    EXECUTOR.with(|e| e.kernel_name().to_string())
}

/// A frozen linear layer's weight in int8: `y = x W^T (+ bias)` for x of `k` columns.
pub struct QuantizedLinear {
    /// W^T (k, n) as s8, prepacked for the executor's kernel.
    packed: PackedBMatrix<i8>,
    /// (n,): column j of W^T is `packed[.., j] * col_scale[j]`.
    col_scale: Vec<f32>,
    /// (n,): the sum of each s8 column, for the activations' zero points (see `forward`).
    col_sum: Vec<i32>,
    /// (n,) or empty: added in the epilogue when the caller asks for it.
    bias: Vec<f32>,
    k: usize,
    n: usize,
}

impl fmt::Debug for QuantizedLinear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuantizedLinear({} -> {})", self.k, self.n)
    }
}

/// s8 per output column: `w_t` is W^T, (k, n) row-major. Returns the values (k, n) and the
/// (n,) scales, so that `w_t[i][j] ~ q[i][j] * scale[j]` within half a step.
pub fn quantize_columns(w_t: &[f32], k: usize, n: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w_t.len(), k * n, "weight is not (k, n)");
    let mut amax = vec![0f32; n];
    for row in w_t.chunks_exact(n) {
        for (m, &v) in amax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    // -127..=127: symmetric, so the zero point is 0 and the kernel needs no column correction.
    let scale: Vec<f32> = amax
        .iter()
        .map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let inv: Vec<f32> = scale.iter().map(|s| 1.0 / s).collect();
    let q = w_t
        .chunks_exact(n)
        .flat_map(|row| {
            row.iter()
                .zip(&inv)
                .map(|(&v, &i)| (v * i).round_ties_even().clamp(-127.0, 127.0) as i8)
        })
        .collect();
    (q, scale)
}

/// One activation row as u8 with `x ~ (q - zero_point) * scale`. The range always contains 0
/// (so an all-zero row is exact and the zero point fits in u8).
fn quantize_row_body(q: &mut [u8], x: &[f32]) -> (f32, u8) {
    // Sixteen running minima and maxima vectorise; a fold over f32::min does not (NaN rules).
    let mut lo = [0f32; 16];
    let mut hi = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    let (mut min, mut max) = (0f32, 0f32);
    for (&l, &h) in lo.iter().zip(&hi) {
        min = min.min(l);
        max = max.max(h);
    }
    for &v in chunks.remainder() {
        min = min.min(v);
        max = max.max(v);
    }
    let range = max - min;
    if !(range > 0.0 && range.is_finite()) {
        // All zeros: exact with any scale. A non-finite range gets a NaN scale, so the row's
        // outputs are NaN as they would be in f32, not silently finite.
        q.fill(0);
        return (if range == 0.0 { 1.0 } else { f32::NAN }, 0);
    }
    let scale = range / 255.0;
    let inv = 1.0 / scale;
    let zero = (-min * inv).round_ties_even().clamp(0.0, 255.0);
    for (o, &v) in q.iter_mut().zip(x) {
        *o = (v * inv + zero).round_ties_even().clamp(0.0, 255.0) as u8;
    }
    (scale, zero as u8)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(q: &mut [u8], x: &[f32]) -> (f32, u8) {
    quantize_row_body(q, x)
}

/// [`quantize_row_body`], through its AVX-512 copy when the CPU has it (it always does when the
/// int8 path runs; the plain copy serves the tests elsewhere).
pub fn quantize_row(q: &mut [u8], x: &[f32]) -> (f32, u8) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has the features the copy was compiled for (checked just above).
        return unsafe { quantize_row_avx512(q, x) };
    }
    quantize_row_body(q, x)
}

/// The epilogue of one output row: raw u8 x s8 sums (stored in the f32 slots, bit for bit) to
/// `(acc - zero * col_sum) * row_scale * col_scale (+ bias)`.
fn dequantize_row_body(
    row: &mut [f32],
    row_scale: f32,
    zero: u8,
    col_scale: &[f32],
    col_sum: &[i32],
    bias: &[f32],
) {
    let z = zero as i32;
    let it = row.iter_mut().zip(col_scale).zip(col_sum);
    if bias.is_empty() {
        for ((v, &c), &cs) in it {
            *v = ((v.to_bits() as i32) - z * cs) as f32 * (row_scale * c);
        }
    } else {
        for (((v, &c), &cs), &b) in it.zip(bias) {
            *v = ((v.to_bits() as i32) - z * cs) as f32 * (row_scale * c) + b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dequantize_row_avx512(
    row: &mut [f32],
    row_scale: f32,
    zero: u8,
    col_scale: &[f32],
    col_sum: &[i32],
    bias: &[f32],
) {
    dequantize_row_body(row, row_scale, zero, col_scale, col_sum, bias)
}

fn dequantize_row(
    row: &mut [f32],
    row_scale: f32,
    zero: u8,
    col_scale: &[f32],
    col_sum: &[i32],
    bias: &[f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { dequantize_row_avx512(row, row_scale, zero, col_scale, col_sum, bias) };
    }
    dequantize_row_body(row, row_scale, zero, col_scale, col_sum, bias)
}

impl QuantizedLinear {
    /// Quantises W^T, `(k, n)` row-major (a frozen layer's layout), and keeps `bias` (n,) for
    /// [`Epilogue::BiasQuickGelu`].
    pub fn new(w_t: &[f32], k: usize, n: usize, bias: Option<&[f32]>) -> Self {
        let (q, col_scale) = quantize_columns(w_t, k, n);
        let mut col_sum = vec![0i32; n];
        for row in q.chunks_exact(n) {
            for (s, &v) in col_sum.iter_mut().zip(row) {
                *s += v as i32;
            }
        }
        let view = NdTensorView::from_data([k, n], q.as_slice());
        let packed = EXECUTOR.with(|e| e.prepack_b(view));
        let bias = bias.map(|b| b.to_vec()).unwrap_or_default();
        assert!(bias.is_empty() || bias.len() == n, "bias is not (n,)");
        Self {
            packed,
            col_scale,
            col_sum,
            bias,
            k,
            n,
        }
    }

    /// `x (m, k) -> (m, n)` through the int8 product; `epilogue` says what follows it.
    pub fn forward(&self, x: &[f32], m: usize, epilogue: Epilogue) -> Result<Vec<f32>, String> {
        let (k, n) = (self.k, self.n);
        if x.len() != m * k {
            return Err(format!(
                "int8 linear: {} values are not ({m}, {k})",
                x.len()
            ));
        }
        if epilogue == Epilogue::BiasQuickGelu && self.bias.len() != n {
            return Err("int8 linear: bias + QuickGELU without a bias".into());
        }
        // Rows of a few thousand values keep rayon's per-task overhead negligible.
        let rows_per_task = (16384 / k.max(1)).max(1);
        let mut qa = vec![0u8; m * k];
        let mut row_scale = vec![0f32; m];
        let mut zero = vec![0u8; m];
        qa.par_chunks_mut(rows_per_task * k)
            .zip(x.par_chunks(rows_per_task * k))
            .zip(row_scale.par_chunks_mut(rows_per_task))
            .zip(zero.par_chunks_mut(rows_per_task))
            .for_each(|(((q, x), s), z)| {
                for (((q, x), s), z) in q
                    .chunks_exact_mut(k)
                    .zip(x.chunks_exact(k))
                    .zip(s.iter_mut())
                    .zip(z.iter_mut())
                {
                    (*s, *z) = quantize_row(q, x);
                }
            });
        // The i32 products go straight into the f32 output buffer (same size and alignment) and
        // are converted in place, so the epilogue reads what the GEMM just wrote, no second buffer.
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        {
            // SAFETY: the spare capacity holds m * n slots of 4 bytes; viewing them as
            // uninitialised i32 is sound (same size and alignment as f32).
            let dst: &mut [MaybeUninit<i32>] = unsafe {
                std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<MaybeUninit<i32>>(), m * n)
            };
            let a = NdTensorView::from_data([m, k], qa.as_slice());
            // The raw u8 x s8 sums; the zero points are taken off in the epilogue
            // (`zero[r] * col_sum[j]`). rten-gemm 0.27 can apply per-row zero points itself
            // (`a_quant`), but measured here it got every row after the kernel's first 8-row tile
            // wrong (m = 64, k = 768), while the plain product was exact on every shape tried.
            let opts = GemmUninitOptions::default();
            let b = GemmInputB::Packed(&self.packed);
            EXECUTOR
                .with(|e| {
                    e.gemm_uninit(dst, GemmInputA::Unpacked(a), b, opts)
                        .map(|_| ())
                })
                .map_err(|e| format!("int8 linear: {e:?}"))?;
        }
        // SAFETY: `gemm_uninit` returned Ok, so it wrote all m * n outputs.
        unsafe { out.set_len(m * n) };
        let bias: &[f32] = match epilogue {
            Epilogue::NoBias => &[],
            Epilogue::BiasQuickGelu => &self.bias,
        };
        let rows_per_task = (16384 / n.max(1)).max(1);
        out.par_chunks_mut(rows_per_task * n)
            .zip(row_scale.par_chunks(rows_per_task))
            .zip(zero.par_chunks(rows_per_task))
            .for_each(|((block, scales), zeros)| {
                for ((row, &s), &z) in block.chunks_exact_mut(n).zip(scales).zip(zeros) {
                    let (cs, sums) = (&self.col_scale, &self.col_sum);
                    match epilogue {
                        Epilogue::NoBias => dequantize_row(row, s, z, cs, sums, bias),
                        Epilogue::BiasQuickGelu => {
                            dequantize_row(row, s, z, cs, sums, &[]);
                            vmath::bias_quick_gelu_row_in_place(row, bias);
                        }
                    }
                }
            });
        Ok(out)
    }
}

impl FrozenProduct for QuantizedLinear {
    fn name(&self) -> &'static str {
        "int8-linear"
    }

    fn k(&self) -> usize {
        self.k
    }

    fn n(&self) -> usize {
        self.n
    }

    fn forward(&self, x: &[f32], m: usize, epilogue: Epilogue) -> Result<Vec<f32>, String> {
        QuantizedLinear::forward(self, x, m, epilogue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(17)
    }

    #[test]
    fn precision_parses_and_prints() {
        assert_eq!("INT8".parse::<Precision>().unwrap(), Precision::Int8);
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        assert!("bf16".parse::<Precision>().is_err());
        assert_eq!(Precision::Int8.to_string(), "int8");
    }

    #[test]
    fn weight_columns_round_trip_within_half_a_step() {
        let (k, n) = (37, 21);
        let mut r = rng();
        let mut w: Vec<f32> = (0..k * n).map(|_| r.random_range(-1.0..1.0)).collect();
        // One all-zero column and one with a single large value.
        for i in 0..k {
            w[i * n + 3] = 0.0;
        }
        w[5 * n + 7] = 40.0;
        let (q, s) = quantize_columns(&w, k, n);
        assert_eq!(s[3], 1.0);
        for i in 0..k {
            for j in 0..n {
                let back = q[i * n + j] as f32 * s[j];
                assert!(
                    (back - w[i * n + j]).abs() <= s[j] * 0.5 + 1e-6,
                    "({i}, {j})"
                );
                assert!(q[i * n + j] >= -127);
            }
        }
        assert_eq!(q[5 * n + 7], 127);
    }

    #[test]
    fn activation_rows_round_trip_within_half_a_step() {
        let mut r = rng();
        for len in [1usize, 3, 15, 16, 17, 64, 100, 3072] {
            for shift in [0.0f32, 0.7, -3.0] {
                let x: Vec<f32> = (0..len)
                    .map(|_| r.random_range(-2.0..2.0) + shift)
                    .collect();
                let mut q = vec![0u8; len];
                let (s, z) = quantize_row(&mut q, &x);
                let mut q2 = vec![0u8; len];
                assert_eq!(quantize_row_body(&mut q2, &x), (s, z), "copies agree");
                assert_eq!(q, q2);
                for (&qi, &xi) in q.iter().zip(&x) {
                    let back = (qi as f32 - z as f32) * s;
                    assert!(
                        (back - xi).abs() <= s * 0.5 + 1e-5,
                        "len {len}: {xi} -> {back}"
                    );
                }
            }
        }
        let mut q = vec![7u8; 5];
        assert_eq!(quantize_row(&mut q, &[0.0; 5]), (1.0, 0));
        assert_eq!(q, vec![0; 5]);
    }

    /// The reference product in i64 of what the kernel sees: `sum_k (qa - za) * qw`.
    fn reference(qa: &[u8], za: &[u8], qw: &[i8], m: usize, k: usize, n: usize) -> Vec<i64> {
        let mut out = vec![0i64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| (qa[i * k + p] as i64 - za[i] as i64) * qw[p * n + j] as i64)
                    .sum();
            }
        }
        out
    }

    #[test]
    fn int8_product_matches_the_integer_reference_on_odd_shapes() {
        if let Err(why) = int8_support() {
            // Without VNNI the path is refused at startup (the kernel there may saturate), so
            // what must hold is that the refusal names what is missing.
            assert!(why.contains("avx512") || why.contains("x86-64"), "{why}");
            return;
        }
        let mut r = rng();
        // m = 1, k not a multiple of 4, n not a multiple of 16 or 32, and a full-size shape.
        for (m, k, n) in [
            (1, 5, 3),
            (7, 13, 17),
            (1, 768, 512),
            (33, 64, 48),
            (50, 131, 96),
            (600, 768, 80),
        ] {
            let w: Vec<f32> = (0..k * n).map(|_| r.random_range(-0.1..0.1)).collect();
            let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-1.0..3.0)).collect();
            let layer = QuantizedLinear::new(&w, k, n, None);
            let got = layer.forward(&x, m, Epilogue::NoBias).unwrap();
            // What the kernel was given, rebuilt here.
            let (qw, ws) = quantize_columns(&w, k, n);
            let mut qa = vec![0u8; m * k];
            let mut za = vec![0u8; m];
            let mut sa = vec![0f32; m];
            for i in 0..m {
                (sa[i], za[i]) =
                    quantize_row_body(&mut qa[i * k..(i + 1) * k], &x[i * k..(i + 1) * k]);
            }
            let want = reference(&qa, &za, &qw, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    // The integer product is exact; only the final f32 multiply rounds.
                    let exact = want[i * n + j] as f64 * sa[i] as f64 * ws[j] as f64;
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - exact).abs() <= 1e-6 * (1.0 + exact.abs()),
                        "({m}x{k}x{n}) [{i},{j}]: {g} vs {exact}"
                    );
                }
            }
            // And the whole is close to the f32 product.
            let mut err = 0f64;
            let mut norm = 0f64;
            for i in 0..m {
                for j in 0..n {
                    let f: f64 = (0..k)
                        .map(|p| x[i * k + p] as f64 * w[p * n + j] as f64)
                        .sum();
                    err += (got[i * n + j] as f64 - f).powi(2);
                    norm += f * f;
                }
            }
            assert!(
                (err / norm).sqrt() < 0.02,
                "{m}x{k}x{n}: relative error {}",
                (err / norm).sqrt()
            );
        }
    }

    #[test]
    fn bias_quick_gelu_epilogue_matches_the_plain_one_plus_activation() {
        let (m, k, n) = (9, 40, 35);
        let mut r = rng();
        let w: Vec<f32> = (0..k * n).map(|_| r.random_range(-0.2..0.2)).collect();
        let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| r.random_range(-0.5..0.5)).collect();
        let layer = QuantizedLinear::new(&w, k, n, Some(&b));
        let plain = layer.forward(&x, m, Epilogue::NoBias).unwrap();
        let fused = layer.forward(&x, m, Epilogue::BiasQuickGelu).unwrap();
        for i in 0..m * n {
            let z = (plain[i] + b[i % n]) as f64;
            let want = z / (1.0 + (-1.702 * z).exp());
            assert!((fused[i] as f64 - want).abs() < 1e-5, "{i}");
        }
        assert!(layer.forward(&x[1..], m, Epilogue::NoBias).is_err());
        let no_bias = QuantizedLinear::new(&w, k, n, None);
        assert!(no_bias.forward(&x, m, Epilogue::BiasQuickGelu).is_err());
    }
}
