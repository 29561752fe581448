//! Moments: a long video stored as overlapping segments, one record per segment, in whichever
//! backend holds the task (the scheme uses nothing but [`VectorStore`]'s records, so Milvus needs
//! no schema of its own for it).
//!
//! Owns the record scheme and the rules around it:
//! - segment 0 *is* the video's record (its id, its blobs, its stored fields), so GET, the
//!   thumbnail, the stored upload and re-embedding find a segmented video where they find any
//!   other; segment `i >= 1` is the record `"<id>\u{1f}<i>"`. User ids never hold a control
//!   character (the edge refuses them), so no user id is a segment key;
//! - the video's record carries the layout (`segments: {upload, spans}`); every segment carries
//!   its `moment: {start_s, end_s}`, its `video`, the `upload` it belongs to, and the user `meta`
//!   and `media` (so filters apply to it and a hit renders from it alone); only a segment has a
//!   top-level `video` field (the Milvus backend counts videos by it);
//! - a segment is current only while its `upload` is the video record's: a re-upload with fewer
//!   segments replaces the video record and its first segments in one atomic `add_records`, so
//!   the leftovers are invisible at once and removed right after ([`stale_keys`]);
//! - the video's record goes first on delete, which hides its segments the same instant.
//!
//! Does not own how spans are embedded (the server's upload and re-embedding paths).

use super::{BlobVersion, NewRecord, StoreError, VectorStore};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Between a video id and a segment index in a segment's key.
pub const SEP: char = '\u{1f}';

/// The key of segment `index` of `video` (segment 0 is the video's own record).
pub fn segment_key(video: &str, index: usize) -> String {
    match index {
        0 => video.to_string(),
        i => format!("{video}{SEP}{i}"),
    }
}

/// The video a stored key belongs to (itself for a video record).
pub fn video_of(key: &str) -> &str {
    key.split_once(SEP).map_or(key, |(v, _)| v)
}

/// Whether `key` is a segment record other than a video's own.
pub fn is_segment_key(key: &str) -> bool {
    key.contains(SEP)
}

/// The spans of a video of `duration_s` cut into `seconds`-long segments overlapping by half:
/// starts at 0, `seconds / 2`, ... until a segment reaches the end (the last one is cut there).
pub fn spans(duration_s: f64, seconds: f64) -> Vec<(f64, f64)> {
    let hop = seconds / 2.0;
    let mut out = Vec::new();
    let mut start = 0.0f64;
    loop {
        let end = (start + seconds).min(duration_s);
        out.push((start, end));
        if start + seconds >= duration_s || hop <= 0.0 {
            return out;
        }
        start += hop;
    }
}

/// How one upload of a video was cut: its token (which its segments carry) and the spans.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub upload: String,
    pub spans: Vec<(f64, f64)>,
}

impl Layout {
    /// A layout for a new upload, with a token no other upload picks.
    pub fn new(spans: Vec<(f64, f64)>) -> Layout {
        Layout {
            upload: format!("{:016x}", rand::random::<u64>()),
            spans,
        }
    }

    /// The layout a video record's stored fields carry; `None` for an unsegmented video.
    pub fn of(stored: &Value) -> Option<Layout> {
        let s = stored.get("segments")?;
        let upload = s.get("upload")?.as_str()?.to_string();
        let spans = s
            .get("spans")?
            .as_array()?
            .iter()
            .map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Layout { upload, spans })
    }

    fn to_value(&self) -> Value {
        let spans: Vec<Value> = self.spans.iter().map(|(s, e)| json!([s, e])).collect();
        json!({"upload": self.upload, "spans": spans})
    }
}

/// A segment's time span, from its stored fields.
pub fn moment_of(stored: &Value) -> Option<(f64, f64)> {
    let m = stored.get("moment")?;
    Some((m.get("start_s")?.as_f64()?, m.get("end_s")?.as_f64()?))
}

fn moment((start_s, end_s): (f64, f64)) -> Value {
    json!({"start_s": start_s, "end_s": end_s})
}

/// The records of a segmented video: `vectors[i]` for `layout.spans[i]`; the first is the video's
/// own record, with `stored` (its usual fields), the layout, and `blobs`.
pub fn records(
    video: &str,
    mut stored: Value,
    blobs: BlobVersion,
    layout: &Layout,
    vectors: Vec<Vec<f32>>,
) -> Vec<NewRecord> {
    debug_assert_eq!(vectors.len(), layout.spans.len());
    let user = stored.get("meta").cloned().unwrap_or(Value::Null);
    let media = stored.get("media").cloned().unwrap_or(Value::Null);
    if let Some(o) = stored.as_object_mut() {
        o.insert("segments".into(), layout.to_value());
        o.insert("moment".into(), moment(layout.spans[0]));
    }
    let mut out = Vec::with_capacity(vectors.len());
    for (i, vector) in vectors.into_iter().enumerate() {
        if i == 0 {
            out.push(NewRecord {
                id: video.to_string(),
                vector,
                meta: stored.clone(),
                blobs,
            });
            continue;
        }
        out.push(NewRecord {
            id: segment_key(video, i),
            vector,
            meta: json!({
                "meta": user,
                "media": media,
                "video": video,
                "upload": layout.upload,
                "moment": moment(layout.spans[i]),
            }),
            blobs: BlobVersion::UNVERSIONED,
        });
    }
    out
}

/// Keys of the segments the video record `old` had that a new upload of `new_count` segments
/// (1 for an unsegmented one) does not replace.
pub fn stale_keys(video: &str, old: Option<&Value>, new_count: usize) -> Vec<String> {
    let old_count = old.and_then(Layout::of).map_or(1, |l| l.spans.len());
    (new_count.max(1)..old_count)
        .map(|i| segment_key(video, i))
        .collect()
}

/// Whether a hit with stored fields `hit` is part of the video whose record holds `video`: the
/// video's own record always is; another segment only while it belongs to the current upload.
pub fn is_current(key: &str, hit: &Value, video: &Value) -> bool {
    if !is_segment_key(key) {
        return true;
    }
    match (hit.get("upload"), Layout::of(video)) {
        (Some(Value::String(u)), Some(l)) => *u == l.upload,
        _ => false,
    }
}

/// The segment keys among `ids`, grouped by their video.
pub fn segments_by_video(ids: Vec<String>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in ids.into_iter().filter(|k| is_segment_key(k)) {
        out.entry(video_of(&id).to_string()).or_default().push(id);
    }
    out
}

/// Which of `keys` (segment keys of one video) no upload owns any more, given the video's
/// stored fields (`None`: no such video). A crash between a commit and its clean-up leaves
/// them: a re-upload with fewer segments, or a delete, writes the video record first and
/// removes the segments after. A segment below the current layout's count was rewritten by
/// the same atomic write as the video record, so it is current; every other one is not.
pub fn orphaned(video: Option<&Value>, keys: &[String]) -> Vec<String> {
    let count = video.and_then(Layout::of).map_or(1, |l| l.spans.len());
    keys.iter()
        .filter(|k| {
            let index = k.split_once(SEP).and_then(|(_, i)| i.parse::<usize>().ok());
            index.is_none_or(|i| i >= count)
        })
        .cloned()
        .collect()
}

/// Deletes a video and all its segments; `Ok(false)` when it was not there. The video's record
/// goes first: its segments are no longer current from that instant, whatever happens next.
pub fn delete_video(store: &dyn VectorStore, id: &str) -> Result<bool, StoreError> {
    let old = store.get(id)?;
    let existed = store.delete(id)?;
    for key in stale_keys(id, old.as_ref().map(|r| &r.meta), 1) {
        store.delete(&key)?;
    }
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_overlap_by_half_and_cover_the_end() {
        assert_eq!(spans(5.0, 12.0), vec![(0.0, 5.0)]);
        assert_eq!(
            spans(30.0, 12.0),
            vec![(0.0, 12.0), (6.0, 18.0), (12.0, 24.0), (18.0, 30.0)]
        );
        assert_eq!(spans(31.0, 12.0).last(), Some(&(24.0, 31.0)));
    }

    #[test]
    fn keys_and_layouts() {
        assert_eq!(segment_key("a", 0), "a");
        assert_eq!(video_of(&segment_key("a#1", 3)), "a#1");
        assert!(is_segment_key(&segment_key("a", 2)));
        let l = Layout::new(vec![(0.0, 12.0), (6.0, 18.0), (12.0, 20.0)]);
        let recs = records(
            "v",
            json!({"meta": {"x": 1}, "media": {}}),
            BlobVersion::fresh(),
            &l,
            vec![vec![1.0]; 3],
        );
        assert_eq!(Layout::of(&recs[0].meta), Some(l.clone()));
        assert_eq!(recs[2].id, segment_key("v", 2));
        assert_eq!(moment_of(&recs[2].meta), Some((12.0, 20.0)));
        assert_eq!(recs[1].meta["meta"], json!({"x": 1}));
        assert!(is_current(&recs[1].id, &recs[1].meta, &recs[0].meta));
        let other = Layout::new(l.spans.clone());
        let newer = records(
            "v",
            json!({}),
            BlobVersion::fresh(),
            &other,
            vec![vec![1.0]; 3],
        );
        assert!(!is_current(&recs[1].id, &recs[1].meta, &newer[0].meta));
        assert_eq!(
            stale_keys("v", Some(&recs[0].meta), 2),
            vec![segment_key("v", 2)]
        );
        assert!(stale_keys("v", None, 1).is_empty());
    }

    #[test]
    fn orphaned_segments_are_those_past_the_current_layout() {
        let keys: Vec<String> = (1..5).map(|i| segment_key("v", i)).collect();
        let mut ids = keys.clone();
        ids.extend(["v".to_string(), "w".to_string(), segment_key("w", 1)]);
        let groups = segments_by_video(ids);
        assert_eq!(groups["v"].len(), 4);
        assert_eq!(groups["w"], vec![segment_key("w", 1)]);
        // No video record (a delete cut short): every segment is orphaned.
        assert_eq!(orphaned(None, &keys), keys);
        // Re-uploaded with 3 segments: 1 and 2 are current, 3 and 4 are left over.
        let l = Layout::new(vec![(0.0, 12.0), (6.0, 18.0), (12.0, 20.0)]);
        let v = records("v", json!({}), BlobVersion::fresh(), &l, vec![vec![1.0]; 3]);
        assert_eq!(orphaned(Some(&v[0].meta), &keys), keys[2..].to_vec());
        // Re-uploaded unsegmented: all of them; a key that is not a number is never current.
        assert_eq!(orphaned(Some(&json!({"meta": null})), &keys), keys);
        let odd = vec![format!("v{SEP}x")];
        assert_eq!(orphaned(Some(&v[0].meta), &odd), odd);
    }
}
