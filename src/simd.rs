//! Which of the crate's hand-compiled SIMD copies this CPU runs: the one place that decides it.
//!
//! The build targets baseline x86-64 (SSE2) so that one binary runs everywhere; loops that matter
//! (`vmath`, the served text adapter) are compiled again inside `target_feature` functions for
//! AVX2+FMA and for AVX-512F, and [`level`] picks one at run time. An AVX2 machine left on the
//! baseline copy would run 4-wide loops where it has 8-wide ones.
//!
//! The `avx512` cargo feature (default) compiles the AVX-512 paths in, here and in `gemm` (its
//! `x86-v4` micro-kernels). A build without it (`--no-default-features`) runs on an AVX-512 CPU
//! exactly the code an AVX2-only CPU runs, which is how the benchmarks measure that case on a
//! machine that has AVX-512 (rten's int8 and packed f32 kernels still detect the CPU
//! themselves).

/// A family of SIMD copies, widest last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The build's own target (SSE2 on x86-64), and every other architecture.
    Baseline,
    /// AVX2 with FMA (x86-64-v3's vector half).
    Avx2Fma,
    /// AVX-512F.
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2Fma => "avx2+fma",
            Level::Avx512 => "avx512f",
        }
    }
}

/// The widest copy this CPU can run and this build holds. The standard library caches the CPUID
/// answers, so this is a few atomic loads.
#[inline]
pub fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Level::Avx2Fma;
        }
    }
    Level::Baseline
}

/// Whether this CPU (and build) runs `level`'s copies.
#[inline]
pub fn runs(level: Level) -> bool {
    level <= self::level()
}

/// Every level this CPU can run and this build holds, narrowest first: what tests run each copy
/// at.
pub fn available() -> Vec<Level> {
    [Level::Baseline, Level::Avx2Fma, Level::Avx512]
        .into_iter()
        .filter(|l| runs(*l))
        .collect()
}

/// Partial sums kept by [`dot`] (and the served text adapter's row sums): independent
/// accumulators the compiler keeps in vector registers, where a plain `sum()` is one dependent
/// chain of adds.
pub const LANES: usize = 16;

/// `a · b` over the shorter length, as [`LANES`] partial sums over fixed chunks so that LLVM
/// vectorises it. Inlined on purpose: a caller compiled for a wider [`Level`] (a `target_feature`
/// copy) gets it in that ISA. The one body the store's search and the served text adapter share.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Runs a body through the copy of it compiled for a [`Level`]: `at_level!(level, |a: &[f32], n:
/// usize| -> f32 { ... })` defines the body once as a function of the listed arguments, compiles
/// it again inside an AVX2+FMA and an AVX-512 `target_feature` function, and calls the one for
/// `level` with the caller's variables of the same names. The expansion calls `unsafe` functions:
/// the caller wraps it in `unsafe` and guarantees the CPU runs `level` ([`runs`]).
macro_rules! at_level {
    ($level:expr, |$($arg:ident: $ty:ty),*| -> $ret:ty $body:block) => {{
        #[inline(always)]
        fn body($($arg: $ty),*) -> $ret $body
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512($($arg: $ty),*) -> $ret {
            body($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2($($arg: $ty),*) -> $ret {
            body($($arg),*)
        }
        match $level {
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Level::Avx512 => avx512($($arg),*),
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Level::Avx2Fma => avx2($($arg),*),
            _ => body($($arg),*),
        }
    }};
}
pub(crate) use at_level;
