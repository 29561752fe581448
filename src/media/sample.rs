//! Which frames to keep, decided from presentation timestamps alone (MV-Adapter spec section 10).
//!
//! Two steps, both CLIP4Clip's convention: (1) one candidate per 1/fps interval: for each whole
//! second k (at fps = 1) the *first* frame whose timestamp is at or after k seconds. A frame that
//! lands past several targets (a gap in the stream) stands for the first of them only, so no frame
//! is taken twice; (2) if there are more than F candidates, keep `linspace(0, n-1, F)` rounded down.
//! Fewer than F candidates are all kept and the rest of the F slots are padded and masked.
//! Owns no decoding: callers decode only up to the last chosen frame.

/// Tolerance for "at or after" so that float noise in timescale conversion does not skip a frame.
const EPS: f64 = 1e-6;

/// Indices into `pts` (sorted presentation times in seconds, first frame at 0) of one frame per
/// `1/fps` interval: the first frame at or after each target time `k / fps`.
pub fn candidates(pts: &[f64], fps: f64) -> Vec<usize> {
    let mut out = Vec::new();
    let mut next_target = 0.0f64;
    for (i, &t) in pts.iter().enumerate() {
        if t + EPS >= next_target {
            out.push(i);
            // The next target is the first whole interval after this frame's own interval.
            next_target = (((t + EPS) * fps).floor() + 1.0) / fps;
        }
    }
    out
}

/// numpy's `linspace(0, n - 1, f).astype(int)`: `f` indices into `0..n`, or all of `0..n` when
/// `n <= f`.
pub fn uniform(n: usize, f: usize) -> Vec<usize> {
    if n <= f {
        return (0..n).collect();
    }
    if f == 1 {
        return vec![0];
    }
    let stop = (n - 1) as f64;
    let step = stop / (f - 1) as f64;
    (0..f)
        .map(|j| {
            if j == f - 1 {
                n - 1
            } else {
                (j as f64 * step) as usize
            }
        })
        .collect()
}

/// The chosen frames: indices into the sorted `pts`, ascending, at most `frames` of them.
pub fn choose(pts: &[f64], fps: f64, frames: usize) -> Vec<usize> {
    let cand = candidates(pts, fps);
    uniform(cand.len(), frames)
        .into_iter()
        .map(|i| cand[i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(n: usize, fps: f64) -> Vec<f64> {
        (0..n).map(|i| i as f64 / fps).collect()
    }

    #[test]
    fn one_per_second_ntsc() {
        // 29.97 fps: frame 30 is at 1.001 s, the first at or after 1 s.
        let p: Vec<f64> = (0..330).map(|i| i as f64 * 1001.0 / 30000.0).collect();
        let c = candidates(&p, 1.0);
        assert_eq!(&c[..4], &[0, 30, 60, 90]);
        assert_eq!(c.len(), 11);
    }

    #[test]
    fn exact_grid_is_inclusive() {
        let c = candidates(&pts(75, 25.0), 1.0);
        assert_eq!(c, vec![0, 25, 50]);
    }

    #[test]
    fn gaps_do_not_duplicate() {
        let p = [0.0, 0.5, 3.2, 3.9, 4.0, 7.5];
        assert_eq!(candidates(&p, 1.0), vec![0, 2, 4, 5]);
    }

    #[test]
    fn linspace_matches_numpy() {
        // np.linspace(0, 15, 12).astype(int)
        assert_eq!(
            uniform(16, 12),
            vec![0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 15]
        );
        // np.linspace(0, 10, 12) has n <= f: everything.
        assert_eq!(uniform(11, 12), (0..11).collect::<Vec<_>>());
        assert_eq!(uniform(5, 1), vec![0]);
        assert_eq!(uniform(0, 12), Vec::<usize>::new());
    }

    #[test]
    fn choose_short_and_long() {
        assert_eq!(choose(&pts(36, 30.0), 1.0, 12), vec![0, 30]);
        let long = choose(&pts(16 * 30, 30.0), 1.0, 12);
        assert_eq!(long.len(), 12);
        assert_eq!(long[11], 15 * 30);
    }
}
