//! Retrieval metrics of a caption x video similarity matrix (MV-Adapter spec section 13,
//! CLIP4Clip's conventions): 1-based ranks, R@1/5/10 in percent, median and mean rank, both ways.
//!
//! Rules:
//! - text-to-video: every caption is a query; its rank is the place of its own video among all
//!   videos.
//! - video-to-text: every video is a query; the candidates are the videos' caption sets, each
//!   scored by its best caption for the query video, and the rank is the place of the query's own
//!   set. With one caption per video this is the usual rank of the video's caption among all
//!   captions.
//! - ties count against the query: rank = 1 + the number of other candidates scoring at least
//!   as much as the correct one. A model that scores everything alike gets the worst rank, never
//!   the best. NaN scores are an error.
//! - MdR is the median rank (the mean of the two middle ranks for an even count, as numpy's
//!   `median`), MnR the mean rank.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Recall at 1, 5 and 10 (percent of queries), median and mean 1-based rank.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
    pub mdr: f64,
    pub mnr: f64,
}

/// Both directions of one evaluation, with the size of the test set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub t2v: RetrievalMetrics,
    pub v2t: RetrievalMetrics,
    pub videos: usize,
    pub captions: usize,
}

/// Cosine similarities, (captions, videos) row-major: `data[c * videos + v]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SimilarityMatrix {
    pub captions: usize,
    pub videos: usize,
    pub data: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("similarity matrix of {captions} x {videos} has {len} values")]
    Shape {
        captions: usize,
        videos: usize,
        len: usize,
    },
    #[error("{0} captions but {1} caption-to-video labels")]
    Labels(usize, usize),
    #[error("caption {caption} belongs to video {video}, but there are {videos} videos")]
    LabelRange {
        caption: usize,
        video: usize,
        videos: usize,
    },
    #[error("video {0} has no caption")]
    Uncaptioned(usize),
    #[error("the similarity matrix has {0} NaN values")]
    NaN(usize),
    #[error("nothing to evaluate: no videos or no captions")]
    Empty,
}

impl SimilarityMatrix {
    pub fn new(captions: usize, videos: usize, data: Vec<f32>) -> Result<Self, MetricsError> {
        if data.len() != captions * videos {
            return Err(MetricsError::Shape {
                captions,
                videos,
                len: data.len(),
            });
        }
        Ok(Self {
            captions,
            videos,
            data,
        })
    }

    pub fn row(&self, caption: usize) -> &[f32] {
        &self.data[caption * self.videos..(caption + 1) * self.videos]
    }

    pub fn get(&self, caption: usize, video: usize) -> f32 {
        self.data[caption * self.videos + video]
    }
}

/// 1 + the number of candidates other than `correct` scoring at least `scores[correct]`.
fn rank_of(scores: &[f32], correct: usize) -> usize {
    let s = scores[correct];
    1 + scores
        .iter()
        .enumerate()
        .filter(|&(j, &x)| j != correct && x >= s)
        .count()
}

/// Text-to-video ranks, one per caption: `owner[c]` is caption c's video.
pub fn t2v_ranks(sim: &SimilarityMatrix, owner: &[usize]) -> Vec<usize> {
    (0..sim.captions)
        .into_par_iter()
        .map(|c| rank_of(sim.row(c), owner[c]))
        .collect()
}

/// Video-to-text ranks, one per video: each candidate video's caption set scores its best
/// caption against the query video.
pub fn v2t_ranks(sim: &SimilarityMatrix, owner: &[usize]) -> Vec<usize> {
    (0..sim.videos)
        .into_par_iter()
        .map(|q| {
            let mut best = vec![f32::NEG_INFINITY; sim.videos];
            for (c, &v) in owner.iter().enumerate() {
                best[v] = best[v].max(sim.get(c, q));
            }
            rank_of(&best, q)
        })
        .collect()
}

impl RetrievalMetrics {
    /// The statistics of 1-based ranks (at least one).
    pub fn from_ranks(ranks: &[usize]) -> Self {
        let n = ranks.len() as f64;
        let recall = |k: usize| 100.0 * ranks.iter().filter(|&&r| r <= k).count() as f64 / n;
        let mut sorted = ranks.to_vec();
        sorted.sort_unstable();
        let m = sorted.len();
        let mdr = if m % 2 == 1 {
            sorted[m / 2] as f64
        } else {
            (sorted[m / 2 - 1] + sorted[m / 2]) as f64 / 2.0
        };
        Self {
            r1: recall(1),
            r5: recall(5),
            r10: recall(10),
            mdr,
            mnr: ranks.iter().sum::<usize>() as f64 / n,
        }
    }
}

/// Both directions for `sim`, whose caption c belongs to video `owner[c]`.
pub fn evaluate(sim: &SimilarityMatrix, owner: &[usize]) -> Result<EvalReport, MetricsError> {
    if sim.captions == 0 || sim.videos == 0 {
        return Err(MetricsError::Empty);
    }
    if owner.len() != sim.captions {
        return Err(MetricsError::Labels(sim.captions, owner.len()));
    }
    let mut captioned = vec![false; sim.videos];
    for (c, &v) in owner.iter().enumerate() {
        if v >= sim.videos {
            return Err(MetricsError::LabelRange {
                caption: c,
                video: v,
                videos: sim.videos,
            });
        }
        captioned[v] = true;
    }
    if let Some(v) = captioned.iter().position(|&c| !c) {
        return Err(MetricsError::Uncaptioned(v));
    }
    let nan = sim.data.iter().filter(|x| x.is_nan()).count();
    if nan > 0 {
        return Err(MetricsError::NaN(nan));
    }
    Ok(EvalReport {
        t2v: RetrievalMetrics::from_ranks(&t2v_ranks(sim, owner)),
        v2t: RetrievalMetrics::from_ranks(&v2t_ranks(sim, owner)),
        videos: sim.videos,
        captions: sim.captions,
    })
}

impl std::fmt::Display for EvalReport {
    /// A fixed-width table, one row per direction.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} videos, {} captions", self.videos, self.captions)?;
        writeln!(
            f,
            "{:<12} {:>7} {:>7} {:>7} {:>7} {:>8}",
            "direction", "R@1", "R@5", "R@10", "MdR", "MnR"
        )?;
        for (name, m) in [("text->video", &self.t2v), ("video->text", &self.v2t)] {
            writeln!(
                f,
                "{:<12} {:>7.2} {:>7.2} {:>7.2} {:>7.1} {:>8.2}",
                name, m.r1, m.r5, m.r10, m.mdr, m.mnr
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(rows: &[&[f32]]) -> SimilarityMatrix {
        let data = rows.iter().flat_map(|r| r.iter().copied()).collect();
        SimilarityMatrix::new(rows.len(), rows[0].len(), data).unwrap()
    }

    #[test]
    fn one_caption_per_video_by_hand() {
        // Rows are captions 0..3 of videos 0..3.
        let s = sim(&[
            &[0.9, 0.1, 0.2], // own video first: rank 1
            &[0.8, 0.5, 0.7], // 0.8 and 0.7 above 0.5: rank 3
            &[0.1, 0.6, 0.3], // 0.6 above: rank 2
        ]);
        let owner = [0, 1, 2];
        assert_eq!(t2v_ranks(&s, &owner), vec![1, 3, 2]);
        // v2t, video q's column: video 0 [0.9, 0.8, 0.1] -> 1; video 1 [0.1, 0.5, 0.6] -> 2;
        // video 2 [0.2, 0.7, 0.3] -> 2.
        assert_eq!(v2t_ranks(&s, &owner), vec![1, 2, 2]);
        let r = evaluate(&s, &owner).unwrap();
        let third = 100.0 / 3.0;
        assert_eq!(r.t2v.r1, third);
        assert_eq!(r.t2v.r5, 100.0);
        assert_eq!(r.t2v.mdr, 2.0);
        assert_eq!(r.t2v.mnr, 2.0);
        assert_eq!(r.v2t.r1, third);
        assert_eq!(r.v2t.mdr, 2.0);
        assert!((r.v2t.mnr - 5.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn ties_count_against_the_query() {
        // Caption 0 ties with one other video, caption 1 with both: ranks 2 and 3.
        let s = sim(&[&[0.5, 0.5, 0.1], &[0.4, 0.4, 0.4]]);
        let owner = [0, 1];
        // Video 2 has no caption: refused.
        assert!(matches!(
            evaluate(&s, &owner),
            Err(MetricsError::Uncaptioned(2))
        ));
        assert_eq!(t2v_ranks(&s, &owner), vec![2, 3]);
        // A constant matrix gives every query the worst rank.
        let flat = sim(&[&[0.3; 4], &[0.3; 4], &[0.3; 4], &[0.3; 4]]);
        let r = evaluate(&flat, &[0, 1, 2, 3]).unwrap();
        assert_eq!(r.t2v.r1, 0.0);
        assert_eq!(r.t2v.mdr, 4.0);
        assert_eq!(r.v2t.mnr, 4.0);
    }

    #[test]
    fn multi_caption_rules() {
        // Video 0 has captions 0 and 1, video 1 has caption 2, video 2 has captions 3 and 4.
        let owner = [0, 0, 1, 2, 2];
        let s = sim(&[
            &[0.9, 0.2, 0.1], // rank 1
            &[0.3, 0.6, 0.2], // rank 2
            &[0.1, 0.8, 0.7], // rank 1
            &[0.1, 0.5, 0.4], // rank 2
            &[0.2, 0.1, 0.3], // rank 1
        ]);
        assert_eq!(t2v_ranks(&s, &owner), vec![1, 2, 1, 2, 1]);
        // v2t: best caption of each set per query video.
        // q=0: set0 max(0.9,0.3)=0.9, set1 0.1, set2 max(0.1,0.2)=0.2 -> rank 1
        // q=1: set0 max(0.2,0.6)=0.6, set1 0.8, set2 max(0.5,0.1)=0.5 -> rank 1
        // q=2: set0 max(0.1,0.2)=0.2, set1 0.7, set2 max(0.4,0.3)=0.4 -> rank 2
        assert_eq!(v2t_ranks(&s, &owner), vec![1, 1, 2]);
        let r = evaluate(&s, &owner).unwrap();
        assert_eq!(r.captions, 5);
        assert_eq!(r.videos, 3);
        assert_eq!(r.t2v.r1, 60.0);
        assert_eq!(r.t2v.mdr, 1.0);
        assert!((r.t2v.mnr - 1.4).abs() < 1e-12);
        assert!((r.v2t.r1 - 200.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn recall_cutoffs_and_even_median() {
        let m = RetrievalMetrics::from_ranks(&[1, 5, 6, 10, 11, 40]);
        assert!((m.r1 - 100.0 / 6.0).abs() < 1e-12);
        assert!((m.r5 - 200.0 / 6.0).abs() < 1e-12);
        assert!((m.r10 - 400.0 / 6.0).abs() < 1e-12);
        assert_eq!(m.mdr, 8.0); // (6 + 10) / 2
        assert!((m.mnr - 73.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(SimilarityMatrix::new(2, 2, vec![0.0; 3]).is_err());
        let s = sim(&[&[0.1, f32::NAN], &[0.2, 0.3]]);
        assert!(matches!(evaluate(&s, &[0, 1]), Err(MetricsError::NaN(1))));
        let s = sim(&[&[0.1, 0.2], &[0.2, 0.3]]);
        assert!(matches!(
            evaluate(&s, &[0]),
            Err(MetricsError::Labels(2, 1))
        ));
        assert!(matches!(
            evaluate(&s, &[0, 2]),
            Err(MetricsError::LabelRange { .. })
        ));
    }

    #[test]
    fn json_shape() {
        let r = evaluate(&sim(&[&[1.0, 0.0], &[0.0, 1.0]]), &[0, 1]).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        for dir in ["t2v", "v2t"] {
            for k in ["r1", "r5", "r10", "mdr", "mnr"] {
                assert!(v[dir][k].is_number(), "{dir}.{k}");
            }
        }
        assert_eq!(v["t2v"]["r1"], 100.0);
    }
}
