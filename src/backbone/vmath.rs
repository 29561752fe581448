//! Element-wise math of the encoder's CPU kernels written so the compiler vectorises it: `exp`,
//! bias + QuickGELU over a row and an in-place softmax, each compiled three times (baseline
//! x86-64, AVX2+FMA, AVX-512) and chosen at run time ([`simd::level`]).
//!
//! `f32::exp` is a call into libm per element, which no compiler vectorises: profiled on
//! ViT-B/32 (batch 12), the bias + QuickGELU pass over fc1's (600, 3072) output took about 6 ms
//! per layer, as long as the out-projection GEMM. [`exp`] is a range reduction plus a polynomial
//! in plain arithmetic, so a loop over it becomes SIMD code; its relative error is a few ulp.
//! The build targets baseline x86-64 (SSE2), so the wider copies come from `target_feature`
//! functions that inline the same generic bodies.

use crate::simd::{self, Level};

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cody-Waite) so `x - n ln2` loses no bits for the `n` that occur.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to an integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x for f32, vectorisable. Inputs are clamped to [-87.3, 88.3], where e^x is a normal f32, so
/// far-negative inputs (a masked softmax's -inf) give about 1e-38 instead of 0, which no sum or
/// product downstream can tell apart. NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let y = x * LOG2E + ROUND_MAGIC;
    let n = y - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r to degree 7 on |r| <= ln2 / 2: truncation error below 1e-8.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // n is in [-126, 127] after the clamp, so 2^n is a normal f32 built from its exponent bits,
    // taken straight from y's: y's ulp is 1, so its low mantissa bits hold n and the shift drops
    // everything above them. `n as i32` is a saturating conversion, which the compiler did one
    // lane at a time (perf: the bias + QuickGELU pass ran at ~1.3 ns per value with it).
    let scale = f32::from_bits(y.to_bits().wrapping_add(127) << 23);
    p * scale
}

const QUICK_GELU_ALPHA: f32 = 1.702;

/// `x * sigmoid(1.702 x)`.
#[inline(always)]
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-QUICK_GELU_ALPHA * x))
}

#[inline(always)]
fn bias_quick_gelu_body(out: &mut [f32], x: &[f32], bias: &[f32]) {
    for ((o, &x), &b) in out.iter_mut().zip(x).zip(bias) {
        *o = quick_gelu(x + b);
    }
}

#[inline(always)]
fn bias_quick_gelu_in_place_body(x: &mut [f32], bias: &[f32]) {
    for (x, &b) in x.iter_mut().zip(bias) {
        *x = quick_gelu(*x + b);
    }
}

/// Sixteen partial sums (one AVX-512 register) so the reductions vectorise; the order of the
/// additions differs from a left-to-right sum only by rounding.
#[inline(always)]
fn quick_gelu_in_place_body(x: &mut [f32]) {
    for x in x.iter_mut() {
        *x = quick_gelu(*x);
    }
}

const LANES: usize = 16;

#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in max.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let tail_max = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let max = max.iter().copied().fold(tail_max, f32::max);
    let mut sum = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, x) in sum.iter_mut().zip(c) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let mut total = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        total += *x;
    }
    let total = sum.iter().sum::<f32>() + total;
    let inv = 1.0 / total;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// Defines `pub fn $name` running `$body` through the copy compiled for [`simd::level`], and
/// `unsafe fn $at` running it through a given level's copy (what the tests use to check each).
macro_rules! dispatched {
    ($(#[$doc:meta])* $name:ident, $at:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            // SAFETY: `simd::level()` is a level this CPU runs.
            unsafe { $at(simd::level(), $($arg),*) }
        }

        /// The same through `level`'s copy.
        ///
        /// # Safety
        /// The CPU must run `level` ([`simd::runs`]).
        #[inline(always)]
        unsafe fn $at(level: Level, $($arg: $ty),*) {
            // SAFETY: the caller guarantees the CPU runs `level`.
            unsafe { simd::at_level!(level, |$($arg: $ty),*| -> () { $body($($arg),*) }) }
        }
    };
}

dispatched!(
    /// `out[i] = quick_gelu(x[i] + bias[i])` over one row (or as much of it as the shortest slice).
    bias_quick_gelu_row,
    bias_quick_gelu_row_at,
    bias_quick_gelu_body,
    (out: &mut [f32], x: &[f32], bias: &[f32])
);

dispatched!(
    /// `x[i] = quick_gelu(x[i] + bias[i])` over one row, in place.
    bias_quick_gelu_row_in_place,
    bias_quick_gelu_row_in_place_at,
    bias_quick_gelu_in_place_body,
    (x: &mut [f32], bias: &[f32])
);

dispatched!(
    /// `x[i] = quick_gelu(x[i])` over a slice, in place.
    quick_gelu_in_place,
    quick_gelu_in_place_at,
    quick_gelu_in_place_body,
    (x: &mut [f32])
);

dispatched!(
    /// Softmax of one row in place: max, exp, sum, scale.
    softmax_in_place,
    softmax_in_place_at,
    softmax_body,
    (row: &mut [f32])
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm_over_the_useful_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn rows_match_the_scalar_reference_at_every_level() {
        let levels = simd::available();
        assert!(levels.contains(&simd::level()));
        for level in levels {
            rows_match_the_scalar_reference(level);
        }
    }

    fn rows_match_the_scalar_reference(level: Level) {
        let x: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) * 0.37).collect();
        let b: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let mut out = vec![0f32; 100];
        let mut inplace = x.clone();
        let mut no_bias: Vec<f32> = x.iter().zip(&b).map(|(x, b)| x + b).collect();
        // SAFETY: `level` is one of `simd::available()`.
        unsafe {
            bias_quick_gelu_row_at(level, &mut out, &x, &b);
            bias_quick_gelu_row_in_place_at(level, &mut inplace, &b);
            quick_gelu_in_place_at(level, &mut no_bias);
        }
        for i in 0..100 {
            let z = (x[i] + b[i]) as f64;
            let want = z / (1.0 + (-1.702 * z).exp());
            assert!(
                (out[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{level:?} {i}"
            );
            assert_eq!(out[i], inplace[i]);
            assert_eq!(out[i], no_bias[i]);
        }
        // Lengths around the 16-lane width, with a -inf (masked) entry.
        for len in [1, 15, 16, 17, 50, 77] {
            let mut row: Vec<f32> = (0..len)
                .map(|i| ((i * 37) % 11) as f32 * 0.9 - 4.0)
                .collect();
            if len > 2 {
                row[1] = f32::NEG_INFINITY;
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let den: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let want: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp() / den).collect();
            // SAFETY: as above.
            unsafe { softmax_in_place_at(level, &mut row) };
            for (g, w) in row.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() < 1e-6,
                    "{level:?} len {len}: {g} vs {w}"
                );
            }
        }
    }
}
