//! The order of training pairs: each epoch's shuffle, drawn from (seed, epoch) so that a resumed
//! run needs no saved generator, cut into batches in which no video appears twice (a video's
//! second caption would be a false negative of its first).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::{HashSet, VecDeque};

/// The batches of epoch `epoch`: the pairs (given by their video) in an order drawn from
/// (seed, epoch), cut into batches of `batch` in which no video appears twice (a pair whose
/// video is already in the batch waits for the next one). Batches of fewer than 2 pairs (only
/// possible at the end) are dropped: they have no negatives.
pub fn plan_batches(videos: &[usize], batch: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mix = seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix);
    let mut order: Vec<usize> = (0..videos.len()).collect();
    order.shuffle(&mut rng);
    let mut pending: VecDeque<usize> = order.into();
    let mut out = Vec::new();
    while !pending.is_empty() {
        let (mut cur, mut seen, mut waiting) = (Vec::new(), HashSet::new(), Vec::new());
        while cur.len() < batch {
            let Some(p) = pending.pop_front() else { break };
            if seen.insert(videos[p]) {
                cur.push(p);
            } else {
                waiting.push(p);
            }
        }
        for p in waiting.into_iter().rev() {
            pending.push_front(p);
        }
        if cur.len() < 2 {
            break;
        }
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_the_pairs_without_repeating_a_video() {
        // 10 videos, video 3 with 4 captions, video 5 with 2.
        let videos = [0, 1, 2, 3, 3, 3, 3, 4, 5, 5, 6, 7, 8, 9];
        let plan = plan_batches(&videos, 4, 7, 0);
        let mut all: Vec<usize> = plan.concat();
        for b in &plan {
            assert!(b.len() >= 2 && b.len() <= 4);
            let vs: HashSet<usize> = b.iter().map(|&p| videos[p]).collect();
            assert_eq!(vs.len(), b.len(), "a video twice in {b:?}");
        }
        all.sort();
        all.dedup();
        assert!(
            all.len() >= videos.len() - 1,
            "{} of {}",
            all.len(),
            videos.len()
        );
        // Reproducible per (seed, epoch); other epochs and seeds give other orders.
        assert_eq!(plan, plan_batches(&videos, 4, 7, 0));
        assert_ne!(plan, plan_batches(&videos, 4, 7, 1));
        assert_ne!(plan, plan_batches(&videos, 4, 8, 0));
        // One video only: no batch can be formed.
        assert!(plan_batches(&[2, 2, 2], 4, 0, 0).is_empty());
    }
}
