//! The graph's f16 copy of a vector and the dot product it walks with.
//!
//! Owns rounding to IEEE half precision, the bound on how far an f16 dot product of unit vectors
//! can be from the f32 one ([`F16_DOT_ERROR`], which `index` uses to decide what to rescore), and
//! the choice of the dot product's kernel at run time. Hand-written because it is the inner loop
//! of every graph walk and build (half of a search's time, BENCHMARKS.md "The graph's copy in
//! f16"), and the crates that offer f16 dot products either choose their kernel at build time or
//! bring a C build with them.
//!
//! f16 rather than bf16 or i8: unit vectors' components are small (~0.04 for 512-d), and f16's
//! 11-bit significand keeps a dot product within ~1e-3 of f32, where bf16's 8 bits would not.

use half::slice::HalfFloatSliceExt;

/// How far the f16 dot product of two unit vectors can be from the f32 one. Rounding each
/// component to f16 moves it by at most 2^-11 of itself (2^-25 absolutely below f16's normal
/// range), so a product moves by at most ~2^-10 of |a_i b_i|, and Σ|a_i b_i| <= |a||b| = 1
/// (Cauchy-Schwarz); f32 accumulation adds ~3e-5 at 512-d. 1.1e-3 covers 2^-10 = 9.8e-4 and both.
pub(crate) const F16_DOT_ERROR: f32 = 1.1e-3;

/// A dot product of two f16 vectors (as bits) of the same length, accumulated in f32.
pub(crate) type Dot = fn(&[u16], &[u16]) -> f32;

/// The bits of `v` rounded to IEEE half precision.
pub(crate) fn halves(v: &[f32]) -> Vec<u16> {
    let mut h = vec![half::f16::ZERO; v.len()];
    h.convert_from_f32_slice(v);
    h.iter().map(|x| x.to_bits()).collect()
}

/// The f16 dot product for this CPU, chosen once per graph. AVX2+FMA+F16C only: an AVX-512F copy
/// (16 lanes, `vcvtph2ps zmm`) ran at 0.47-0.64x faiss against this one's 0.54-0.81x in
/// alternating runs on a Zen 4 (BENCHMARKS.md "The graph's copy in f16") and answered as many
/// queries on a full-width Zen 5 ("On an AMD Zen 5", under the store); a distance waits on
/// memory, not on arithmetic.
pub(crate) fn dot_for_cpu() -> Dot {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU features `dot_avx2` is compiled for were just detected.
        return |a, b| unsafe { dot_avx2(a, b) };
    }
    dot_scalar
}

/// `a · b`, one component at a time (the fallback, and the reference in tests).
pub(crate) fn dot_scalar(a: &[u16], b: &[u16]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| half::f16::from_bits(x).to_f32() * half::f16::from_bits(y).to_f32())
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(a: &[u16], b: &[u16]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, the length of both slices; unaligned loads.
        unsafe {
            let a0 = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i).cast()));
            let b0 = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i).cast()));
            let a1 = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i + 8).cast()));
            let b1 = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i + 8).cast()));
            s0 = _mm256_fmadd_ps(a0, b0, s0);
            s1 = _mm256_fmadd_ps(a1, b1, s1);
        }
        i += 16;
    }
    let s = _mm256_add_ps(s0, s1);
    let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    _mm_cvtss_f32(q) + dot_scalar(&a[i..n], &b[i..n])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pseudo-random unit vector (xorshift), the same for the same seed.
    pub(crate) fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    /// The AVX2 f16 dot product agrees with the scalar one (tails of every length included), and
    /// on unit vectors both agree with the f32 dot product to within f16 rounding.
    #[test]
    fn the_f16_dot_product_matches_f32_to_within_rounding() {
        for dim in [1, 7, 15, 16, 17, 31, 32, 33, 100, 512] {
            let (a, b) = (unit(dim as u64, dim), unit(dim as u64 + 999, dim));
            let (ha, hb) = (halves(&a), halves(&b));
            let scalar = dot_scalar(&ha, &hb);
            let f32_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (scalar - f32_dot).abs() <= F16_DOT_ERROR,
                "dim {dim}: {scalar} vs {f32_dot}"
            );
            assert!((dot_for_cpu()(&ha, &hb) - scalar).abs() < 1e-5, "dim {dim}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                // SAFETY: the features it is compiled for were just detected.
                let simd = unsafe { dot_avx2(&ha, &hb) };
                assert!(
                    (simd - scalar).abs() < 1e-5,
                    "dim {dim}: {simd} vs {scalar}"
                );
            }
        }
    }
}
