#![allow(dead_code)] // each benchmark uses part of this file
//! The vectors the store benchmarks search: reproducible unit vectors in 512-d, uniform on the
//! sphere or clustered like real embeddings, and recall against a ground truth. Shared by
//! `benches/store.rs` and `benches/milvus.rs` so both measure the same data.

use std::collections::HashSet;

pub const DIM: usize = 512;
pub const K: usize = 10;

/// splitmix64 plus Box-Muller: reproducible data without extra dependencies.
pub struct Rng(pub u64);
impl Rng {
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit_f64(&mut self) -> f64 {
        ((self.u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn gauss(&mut self) -> f32 {
        let (u, v) = (self.unit_f64(), self.unit_f64());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

pub fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

/// Uniform on the unit sphere (normalised Gaussians): no structure for HNSW to exploit.
pub fn uniform(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * DIM];
    for row in out.chunks_exact_mut(DIM) {
        row.iter_mut().for_each(|x| *x = rng.gauss());
        normalise(row);
    }
    out
}

/// Like real embeddings: `n / 50` cluster centres (2,000 at 100k) drawn from N(0, I) in a random
/// 64-d subspace (basis entries N(0, 1/512)); a point is its centre plus N(0, 0.35^2 I) inside
/// the subspace, mapped to 512-d, plus N(0, 0.02^2 I) in all 512 dimensions (about 5% of the
/// norm), normalised.
pub struct Clustered {
    basis: Vec<f32>,
    centres: Vec<f32>,
}
const SUB: usize = 64;
impl Clustered {
    pub fn new(rng: &mut Rng, n: usize) -> Self {
        let basis = (0..SUB * DIM)
            .map(|_| rng.gauss() / (DIM as f32).sqrt())
            .collect();
        let centres = (0..(n / 50).max(1) * SUB).map(|_| rng.gauss()).collect();
        Clustered { basis, centres }
    }
    pub fn sample(&self, rng: &mut Rng, n: usize) -> Vec<f32> {
        let nc = self.centres.len() / SUB;
        let mut out = vec![0.0; n * DIM];
        let mut z = [0.0f32; SUB];
        for row in out.chunks_exact_mut(DIM) {
            let c = (rng.u64() % nc as u64) as usize;
            for (j, zj) in z.iter_mut().enumerate() {
                *zj = self.centres[c * SUB + j] + 0.35 * rng.gauss();
            }
            for (d, x) in row.iter_mut().enumerate() {
                let mut s = 0.02 * rng.gauss();
                for (j, zj) in z.iter().enumerate() {
                    s += zj * self.basis[j * DIM + d];
                }
                *x = s;
            }
            normalise(row);
        }
        out
    }
}

/// Recall@K of `got` against `truth`, both as row numbers.
pub fn recall(got: &[Vec<u32>], truth: &[Vec<u32>]) -> f64 {
    let mut hit = 0;
    for (g, t) in got.iter().zip(truth) {
        let t: HashSet<_> = t.iter().collect();
        hit += g.iter().filter(|x| t.contains(x)).count();
    }
    hit as f64 / (truth.len() * K) as f64
}
