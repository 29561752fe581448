//! Moments on the serving side: whether an upload is cut into segments, embedding the segments of
//! a decoded timeline, and turning the store's nearest vectors (segments among them) into
//! videos ranked by their best segment.
//!
//! The record scheme itself (keys, layouts, which segments are current, deletes) is
//! `store::moments`, shared with re-embedding.

use super::ServeConfig;
use crate::encode::{EncodeError, Encoder, TaskModel};
use crate::media::Timeline;
use crate::registry::Task;
use crate::store::moments::{self, is_current, is_segment_key, moment_of, video_of};
use crate::store::{Filter, Hit, StoreError, VectorStore};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Segments sent to the encoder at once: enough to fill its batches, few enough that their
/// tensors (F frames each) stay small beside the timeline.
const PARALLEL: usize = 4;
/// How long a segment waits before it queues again behind live traffic.
const RETRY: Duration = Duration::from_millis(50);
/// Each store search that finds too few distinct videos asks for this many times more vectors.
const GROWTH: usize = 4;
/// The most vectors one store search asks for (Milvus's own `topk` limit).
const MAX_STORE_K: usize = 16_384;

/// Deletes the segments of `task`'s current generation that a crash left behind
/// ([`moments::orphaned`]: a re-upload with fewer segments or a delete stopped between its commit
/// and its clean-up); returns how many. One video at a time under the task's exclusive write
/// guard, so no upload or delete of that video falls between reading its record and deleting.
pub fn sweep(task: &Task) -> Result<usize, StoreError> {
    let gen = task.current();
    let mut removed = 0;
    for (video, keys) in moments::segments_by_video(gen.store.ids()?) {
        let _alone = task.exclusive_guard();
        if !Arc::ptr_eq(&task.current(), &gen) {
            // Cut over meanwhile: a re-embedded generation is written whole, with no leftovers.
            break;
        }
        let record = gen.store.get(&video)?;
        for key in moments::orphaned(record.as_ref().map(|r| &r.meta), &keys) {
            removed += usize::from(gen.store.delete(&key)?);
        }
    }
    Ok(removed)
}

/// The spans of a video (`info`: what its first decode found) under the server's flags;
/// `None`: it stays one vector (moments off, shorter than `--segment-min-seconds`, not longer
/// than one segment, or its timeline would take more than `--segment-max-mb`).
pub fn plan(config: &ServeConfig, info: &Value, size: usize) -> Option<Vec<(f64, f64)>> {
    let num = |k: &str| info.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let duration_s = num("duration_s");
    if config.segment_seconds == 0 || duration_s < config.segment_min_seconds {
        return None;
    }
    let spans = moments::spans(duration_s, config.segment_seconds as f64);
    if spans.len() < 2 {
        return None;
    }
    let need = timeline_bytes(duration_s, num("width"), num("height"), size);
    if need > config.segment_max_bytes {
        tracing::warn!(
            duration_s,
            need_mib = need >> 20,
            limit_mib = config.segment_max_bytes >> 20,
            "a long video stays one vector: segmenting it would take more than --segment-max-mb"
        );
        return None;
    }
    Some(spans)
}

/// What `media::load_timeline` holds at its peak for a video: every 1-fps candidate as its
/// size x size RGB crop, and the frame being decoded at full size with its resized copy (RGB, 3
/// bytes a pixel each, counted at full size).
fn timeline_bytes(duration_s: f64, width: f64, height: f64, size: usize) -> u64 {
    let frames = (duration_s.ceil() as usize + 1).min(crate::media::MAX_TIMELINE_FRAMES);
    let decoding = 2 * (width * height * 3.0) as u64;
    Timeline::bytes(frames, size as u32).saturating_add(decoding)
}

/// One vector of `model` per span of `timeline`, in order. A full encoder queue is waited out
/// (a long video must not fail half-way because live traffic came in).
pub async fn embed_spans(
    encoder: &Encoder,
    model: &Arc<dyn TaskModel>,
    timeline: &Timeline,
    spans: &[(f64, f64)],
) -> Result<Vec<Vec<f32>>, EncodeError> {
    let frames = model.frames();
    let mut out = Vec::with_capacity(spans.len());
    for chunk in spans.chunks(PARALLEL) {
        let jobs = chunk.iter().map(|&(start, end)| async move {
            let (pixels, mask) = timeline.span(start, end, frames);
            loop {
                let r = encoder
                    .encode_video(model.clone(), pixels.clone(), mask.clone())
                    .await;
                match r {
                    Err(EncodeError::Overloaded(_)) => tokio::time::sleep(RETRY).await,
                    r => return r,
                }
            }
        });
        out.extend(futures_util::future::try_join_all(jobs).await?);
    }
    Ok(out)
}

/// A video among the hits: its best vector's score and stored fields, and its best segments.
pub struct VideoHit {
    pub id: String,
    pub score: f32,
    /// The stored fields of its best vector (the user `meta` and `media` are in every segment).
    pub stored: Value,
    /// `(start_s, end_s, score)` of its best segments, best first; empty for a video stored as
    /// one vector.
    pub moments: Vec<(f64, f64, f32)>,
}

/// The `k` videos nearest to `query` whose meta passes `filter`, each ranked by its best vector,
/// with up to `per_video` of its segments. Several segments of one video can fill the nearest
/// vectors, so the store is asked for more until `k` videos are found or it has no more.
pub fn search(
    store: &dyn VectorStore,
    query: &[f32],
    k: usize,
    per_video: usize,
    filter: Option<&Filter>,
) -> Result<Vec<VideoHit>, StoreError> {
    // A task without segments is answered by the first search, exactly as before moments.
    let mut want = k;
    // Video records read for segments, kept across the growing searches so each is read once.
    let mut records: HashMap<String, Option<Value>> = HashMap::new();
    loop {
        let hits = store.search(query, want, filter)?;
        let exhausted = hits.len() < want || want >= MAX_STORE_K;
        let videos = group(store, hits, k, per_video, &mut records)?;
        if videos.len() >= k || exhausted {
            return Ok(videos);
        }
        want = (want * GROWTH).min(MAX_STORE_K);
    }
}

/// Groups hits (best first) by video, leaving out segments that are not current. `records`:
/// the stored fields of each video's own record, taken from the hits, else read once.
fn group(
    store: &dyn VectorStore,
    hits: Vec<Hit>,
    k: usize,
    per_video: usize,
    records: &mut HashMap<String, Option<Value>>,
) -> Result<Vec<VideoHit>, StoreError> {
    for h in hits.iter().filter(|h| !is_segment_key(&h.id)) {
        records.insert(h.id.clone(), Some(h.meta.clone()));
    }
    let mut out: Vec<VideoHit> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for h in hits {
        let video = video_of(&h.id).to_string();
        if !records.contains_key(&video) {
            let r = store.get(&video)?.map(|r| r.meta);
            records.insert(video.clone(), r);
        }
        let Some(Some(record)) = records.get(&video) else {
            continue;
        };
        if !is_current(&h.id, &h.meta, record) {
            continue;
        }
        let moment = moment_of(&h.meta).map(|(s, e)| (s, e, h.score));
        match at.get(&video) {
            Some(&i) => {
                let v = &mut out[i];
                if let (Some(m), true) = (moment, v.moments.len() < per_video) {
                    v.moments.push(m);
                }
            }
            None if out.len() < k => {
                at.insert(video.clone(), out.len());
                out.push(VideoHit {
                    id: video,
                    score: h.score,
                    stored: h.meta,
                    moments: moment.into_iter().collect(),
                });
            }
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_timeline_over_the_memory_budget_stays_one_vector() {
        let config = ServeConfig {
            segment_seconds: 12,
            ..ServeConfig::default()
        };
        let video = |s: f64, w: u32, h: u32| json!({"duration_s": s, "width": w, "height": h});
        // Frames are kept as 224 px crops (147 KiB each): 30 min at 360p is 1,801 x 150,528
        // bytes + 2 frames = 260 MiB; 10 min at 1080p 98 MiB; the longest timeline (4,096
        // candidates) at 4K 635 MiB: all within the default 1 GiB.
        for (s, w, h) in [(120.0, 640, 360), (1800.0, 640, 360), (600.0, 1920, 1080)] {
            let spans = plan(&config, &video(s, w, h), 224).unwrap();
            assert_eq!(spans.first(), Some(&(0.0, 12.0)));
        }
        assert!(plan(&config, &video(7200.0, 3840, 2160), 224).is_some());
        assert_eq!(
            timeline_bytes(1800.0, 640.0, 360.0, 224),
            1801 * 150_528 + 2 * 691_200
        );
        // A smaller budget: 30 min at 360p no longer fits in 200 MiB; 2 min still does.
        let tight = ServeConfig {
            segment_max_bytes: 200 << 20,
            ..config.clone()
        };
        assert_eq!(plan(&tight, &video(1800.0, 640, 360), 224), None);
        assert!(plan(&tight, &video(120.0, 640, 360), 224).is_some());
        // Short or off: one vector, whatever the budget.
        assert_eq!(plan(&config, &video(30.0, 640, 360), 224), None);
        let off = ServeConfig {
            segment_seconds: 0,
            ..config
        };
        assert_eq!(plan(&off, &video(120.0, 640, 360), 224), None);
    }
}
