//! Readers for retrieval test sets: each turns one annotation file into a [`Dataset`], the list
//! of videos (in file order) with their captions.
//!
//! Formats (see the README, "Evaluation"):
//! - `jsonl`: one `{"video": PATH, "caption": TEXT}` per line; lines naming the same video group
//!   into one entry, captions in order. PATH is relative to the jsonl's folder (or `video_dir`).
//! - `msrvtt-csv`: the JSFusion 1k-A test csv (`key,vid_key,video_id,sentence`, `,` or `;`), or a
//!   train split csv with only `video_id`, whose captions then come from `MSRVTT_data.json` in the
//!   same folder (CLIP4Clip's layout).
//! - `msrvtt-json`: `MSRVTT_data.json` (`{"sentences": [{"video_id", "caption"}]}`) or a list of
//!   `{"video_id", "caption"}` objects (optionally with `"video"`: the file name).
//! - `msvd`: tsv lines `caption, caption, ...<TAB>clip_id`.
//! - `didemo`: the list of `{"video", "description", "times"}` of `test_data.json`.
//! - `activitynet`: `{"v_id": {"timestamps", "sentences"}}` of `val_1.json`.
//!
//! DiDeMo and ActivityNet are paragraph retrieval (spec section 13): a video's captions are joined
//! with spaces, in temporal order, into its one caption. Video files are looked up in `video_dir`
//! (default: the annotation file's folder) under the id as written, then with a video extension
//! (`.mp4`, `.avi`, ...); a missing file is not an error here (see [`Dataset::missing_videos`]).

use serde::de::{MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// File extensions tried, in order, when an annotation names a video without its file.
pub const VIDEO_EXTS: [&str; 7] = ["mp4", "avi", "mkv", "webm", "mov", "m4v", "gif"];

/// One video of a test set and its captions (one or more; one paragraph for DiDeMo/ActivityNet).
#[derive(Clone, Debug, PartialEq)]
pub struct VideoEntry {
    pub id: String,
    pub path: PathBuf,
    pub captions: Vec<String>,
}

/// A test set: videos in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub videos: Vec<VideoEntry>,
}

/// The annotation formats [`load`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetFormat {
    Jsonl,
    MsrVttCsv,
    MsrVttJson,
    MsvdTsv,
    DiDeMo,
    ActivityNet,
}

/// Why an annotation file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `line` is 1-based; 0 when the problem is not on one line.
    #[error("{path}:{line}: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("cannot tell the dataset format of {0}; give one of {names}", names = DatasetFormat::NAMES)]
    UnknownFormat(PathBuf),
    #[error("unknown dataset format {0:?}; expected one of {names}", names = DatasetFormat::NAMES)]
    BadFormatName(String),
    #[error("{0} has no captioned videos")]
    Empty(PathBuf),
}

type Res<T> = Result<T, DataError>;

impl DatasetFormat {
    pub const NAMES: &'static str = "jsonl, msrvtt-csv, msrvtt-json, msvd, didemo, activitynet";
    pub const ALL: [Self; 6] = [
        Self::Jsonl,
        Self::MsrVttCsv,
        Self::MsrVttJson,
        Self::MsvdTsv,
        Self::DiDeMo,
        Self::ActivityNet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::MsrVttCsv => "msrvtt-csv",
            Self::MsrVttJson => "msrvtt-json",
            Self::MsvdTsv => "msvd",
            Self::DiDeMo => "didemo",
            Self::ActivityNet => "activitynet",
        }
    }

    /// Whether a video's captions are joined into one paragraph.
    pub fn is_paragraph(self) -> bool {
        matches!(self, Self::DiDeMo | Self::ActivityNet)
    }

    /// The format of `path`, from its extension and, for `.json` and unknown extensions, from
    /// the shape of its content.
    pub fn detect(path: &Path) -> Res<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl") => Ok(Self::Jsonl),
            Some("tsv") => Ok(Self::MsvdTsv),
            Some("csv") => Ok(Self::MsrVttCsv),
            Some("json") => {
                sniff_json(&parse_json(path, &read(path)?)?).ok_or_else(|| unknown(path))
            }
            _ => {
                let text = read(path)?;
                let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                match serde_json::from_str::<Value>(first) {
                    Ok(v) if v.get("video").is_some() => Ok(Self::Jsonl),
                    _ => Err(unknown(path)),
                }
            }
        }
    }
}

impl FromStr for DatasetFormat {
    type Err = DataError;
    fn from_str(s: &str) -> Res<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s.to_ascii_lowercase())
            .ok_or_else(|| DataError::BadFormatName(s.to_string()))
    }
}

/// `--format` on the command line: the same names as [`DatasetFormat::name`], listed in `--help`.
impl clap::ValueEnum for DatasetFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl std::fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Dataset {
    /// Every (video index, caption) pair, video by video: the training examples.
    pub fn pairs(&self) -> Vec<(usize, String)> {
        self.videos
            .iter()
            .enumerate()
            .flat_map(|(i, v)| v.captions.iter().map(move |c| (i, c.clone())))
            .collect()
    }

    /// All captions flattened, video by video, and the index of each caption's video: the rows
    /// and ground truth of the similarity matrix.
    pub fn captions(&self) -> (Vec<&str>, Vec<usize>) {
        self.videos
            .iter()
            .enumerate()
            .flat_map(|(i, v)| v.captions.iter().map(move |c| (c.as_str(), i)))
            .unzip()
    }

    pub fn num_captions(&self) -> usize {
        self.videos.iter().map(|v| v.captions.len()).sum()
    }

    /// Entries whose video file does not exist.
    pub fn missing_videos(&self) -> Vec<&VideoEntry> {
        self.videos.iter().filter(|v| !v.path.is_file()).collect()
    }
}

/// Reads the annotation file at `path` in `format` (detected when `None`); video files are
/// looked up in `video_dir`, by default the annotation file's folder.
pub fn load(path: &Path, format: Option<DatasetFormat>, video_dir: Option<&Path>) -> Res<Dataset> {
    let format = match format {
        Some(f) => f,
        None => DatasetFormat::detect(path)?,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let dir = video_dir.unwrap_or(base);
    let mut g = Groups::default();
    match format {
        DatasetFormat::Jsonl => read_jsonl(path, dir, &mut g)?,
        DatasetFormat::MsrVttCsv => read_msrvtt_csv(path, dir, &mut g)?,
        DatasetFormat::MsrVttJson => {
            let v = parse_json(path, &read(path)?)?;
            read_msrvtt_json(path, &v, dir, None, &mut g)?
        }
        DatasetFormat::MsvdTsv => read_msvd(path, dir, &mut g)?,
        DatasetFormat::DiDeMo => read_didemo(path, dir, &mut g)?,
        DatasetFormat::ActivityNet => read_activitynet(path, dir, &mut g)?,
    }
    if g.videos.is_empty() {
        return Err(DataError::Empty(path.to_path_buf()));
    }
    let name = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    Ok(Dataset {
        name,
        videos: g.videos,
    })
}

/// Videos in order of first appearance; captions appended to their video.
#[derive(Default)]
struct Groups {
    videos: Vec<VideoEntry>,
    index: HashMap<String, usize>,
}

impl Groups {
    fn add(&mut self, id: &str, path: impl FnOnce() -> PathBuf, caption: &str) -> usize {
        let i = *self.index.entry(id.to_string()).or_insert_with(|| {
            self.videos.push(VideoEntry {
                id: id.to_string(),
                path: path(),
                captions: Vec::new(),
            });
            self.videos.len() - 1
        });
        let c = caption.trim();
        if !c.is_empty() {
            self.videos[i].captions.push(c.to_string());
        }
        i
    }

    /// Every video must have a caption: an uncaptioned video cannot be ranked.
    fn check(&self, path: &Path) -> Res<()> {
        match self.videos.iter().find(|v| v.captions.is_empty()) {
            Some(v) => Err(parse_err(
                path,
                0,
                format!("video {:?} has no caption", v.id),
            )),
            None => Ok(()),
        }
    }
}

fn read(path: &Path) -> Res<String> {
    std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json(path: &Path, text: &str) -> Res<Value> {
    serde_json::from_str(text).map_err(|e| parse_err(path, e.line(), e.to_string()))
}

fn parse_err(path: &Path, line: usize, msg: impl Into<String>) -> DataError {
    DataError::Parse {
        path: path.to_path_buf(),
        line,
        msg: msg.into(),
    }
}

fn unknown(path: &Path) -> DataError {
    DataError::UnknownFormat(path.to_path_buf())
}

/// Which json format a parsed file is, from its shape.
fn sniff_json(v: &Value) -> Option<DatasetFormat> {
    match v {
        Value::Array(items) => {
            let first = items.first()?;
            if first.get("description").is_some() {
                Some(DatasetFormat::DiDeMo)
            } else if first.get("caption").is_some() && first.get("video_id").is_some() {
                Some(DatasetFormat::MsrVttJson)
            } else {
                None
            }
        }
        Value::Object(m) if m.get("sentences").is_some_and(Value::is_array) => {
            Some(DatasetFormat::MsrVttJson)
        }
        Value::Object(m) => m
            .values()
            .next()?
            .get("sentences")
            .map(|_| DatasetFormat::ActivityNet),
        _ => None,
    }
}

/// The file for video `name` in `dir`: the name as written if that file exists, else the name
/// (then its stem) with the first of [`VIDEO_EXTS`] that exists; if none does, the name as written
/// when it has a video extension, else the name with `default_ext`.
pub fn resolve_video(dir: &Path, name: &str, default_ext: &str) -> PathBuf {
    let direct = dir.join(name);
    if direct.is_file() {
        return direct;
    }
    let has_video_ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTS.contains(&e.to_ascii_lowercase().as_str()));
    let mut stems = vec![name.to_string()];
    if has_video_ext {
        if let Some(s) = Path::new(name).file_stem() {
            let parent = Path::new(name).parent().unwrap_or(Path::new(""));
            stems.push(parent.join(s).to_string_lossy().into_owned());
        }
    }
    for stem in &stems {
        for ext in VIDEO_EXTS {
            let p = dir.join(format!("{stem}.{ext}"));
            if p.is_file() {
                return p;
            }
        }
    }
    if has_video_ext {
        direct
    } else {
        dir.join(format!("{name}.{default_ext}"))
    }
}

fn str_field<'a>(v: &'a Value, key: &str, path: &Path, line: usize) -> Res<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| parse_err(path, line, format!("expected a string field {key:?}")))
}

fn read_jsonl(path: &Path, dir: &Path, g: &mut Groups) -> Res<()> {
    for (i, line) in read(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| parse_err(path, i + 1, e.to_string()))?;
        let video = str_field(&v, "video", path, i + 1)?;
        let caption = str_field(&v, "caption", path, i + 1)?;
        if caption.trim().is_empty() {
            return Err(parse_err(path, i + 1, "empty caption"));
        }
        // An absolute path stays as it is (`join` replaces the base).
        g.add(video, || dir.join(video), caption);
    }
    g.check(path)
}

fn read_msrvtt_csv(path: &Path, dir: &Path, g: &mut Groups) -> Res<()> {
    let text = read(path)?;
    let header = text.lines().next().unwrap_or("");
    let delim = if header.contains(';') { b';' } else { b',' };
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .flexible(true)
        .from_reader(text.as_bytes());
    let cols: Vec<String> = rdr
        .headers()
        .map_err(|e| parse_err(path, 1, e.to_string()))?
        .iter()
        .map(|s| s.trim().to_string())
        .collect();
    let col = |name: &str| cols.iter().position(|c| c == name);
    let id_col = col("video_id").ok_or_else(|| parse_err(path, 1, "no video_id column"))?;
    let sentence_col = col("sentence");
    let mut ids = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| parse_err(path, line, e.to_string()))?;
        let id = rec
            .get(id_col)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| parse_err(path, line, "no video_id"))?;
        match sentence_col {
            Some(sc) => {
                // An unquoted sentence holding the delimiter spills into extra fields; the
                // sentence is the last column, so they are put back together.
                let sentence = if sc + 1 == cols.len() && rec.len() > cols.len() {
                    let d = (delim as char).to_string();
                    rec.iter().skip(sc).collect::<Vec<_>>().join(&d)
                } else {
                    rec.get(sc).unwrap_or("").to_string()
                };
                if sentence.trim().is_empty() {
                    return Err(parse_err(path, line, "empty sentence"));
                }
                g.add(id, || resolve_video(dir, id, "mp4"), &sentence);
            }
            None => ids.push(id.to_string()),
        }
    }
    if sentence_col.is_none() {
        // A split list (CLIP4Clip's MSRVTT_train.9k.csv): the captions are in MSRVTT_data.json.
        let data = path.with_file_name("MSRVTT_data.json");
        if !data.is_file() {
            return Err(parse_err(
                path,
                1,
                format!(
                    "no sentence column, and {} (where the captions of a split list are) is missing",
                    data.display()
                ),
            ));
        }
        let v = parse_json(&data, &read(&data)?)?;
        read_msrvtt_json(&data, &v, dir, Some(&ids), g)?;
    }
    g.check(path)
}

/// `only`: keep these video ids, in this order (a split list); `None`: every video in file order.
fn read_msrvtt_json(
    path: &Path,
    v: &Value,
    dir: &Path,
    only: Option<&[String]>,
    g: &mut Groups,
) -> Res<()> {
    let items = match v {
        Value::Array(a) => a,
        Value::Object(m) => m
            .get("sentences")
            .and_then(Value::as_array)
            .ok_or_else(|| parse_err(path, 0, "expected a \"sentences\" list"))?,
        _ => return Err(parse_err(path, 0, "expected a list or an object")),
    };
    if let Some(ids) = only {
        for id in ids {
            g.add(id, || resolve_video(dir, id, "mp4"), "");
        }
    }
    for (i, item) in items.iter().enumerate() {
        let id = str_field(item, "video_id", path, 0)
            .map_err(|_| parse_err(path, 0, format!("item {i}: no \"video_id\"")))?;
        let caption = str_field(item, "caption", path, 0)
            .map_err(|_| parse_err(path, 0, format!("item {i}: no \"caption\"")))?;
        if only.is_some() && !g.index.contains_key(id) {
            continue;
        }
        let file = item.get("video").and_then(Value::as_str).unwrap_or(id);
        g.add(id, || resolve_video(dir, file, "mp4"), caption);
    }
    g.check(path)
}

fn read_msvd(path: &Path, dir: &Path, g: &mut Groups) -> Res<()> {
    for (i, line) in read(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (caps, id) = line
            .rsplit_once('\t')
            .ok_or_else(|| parse_err(path, i + 1, "expected `captions<TAB>clip_id`"))?;
        let id = id.trim();
        if id.is_empty() || caps.trim().is_empty() {
            return Err(parse_err(path, i + 1, "empty clip id or captions"));
        }
        for c in caps.split(',') {
            g.add(id, || resolve_video(dir, id, "avi"), c);
        }
    }
    g.check(path)
}

/// Adds one paragraph per video: `parts` are (start time, sentence), sorted stably by start.
fn add_paragraph(g: &mut Groups, id: &str, path: PathBuf, mut parts: Vec<(f64, String)>) {
    parts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let text: Vec<&str> = parts
        .iter()
        .map(|(_, s)| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    g.add(id, || path, &text.join(" "));
}

fn read_didemo(path: &Path, dir: &Path, g: &mut Groups) -> Res<()> {
    let v = parse_json(path, &read(path)?)?;
    let items = v
        .as_array()
        .ok_or_else(|| parse_err(path, 0, "expected a list of moments"))?;
    let mut order: Vec<String> = Vec::new();
    let mut moments: HashMap<String, Vec<(f64, String)>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let bad = |k: &str| parse_err(path, 0, format!("item {i}: no {k:?}"));
        let video = item
            .get("video")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("video"))?;
        let desc = item
            .get("description")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("description"))?;
        // DiDeMo's `times` are the annotators' [start, end] 5-second segments; the moment's
        // place in the paragraph is the annotators' mean start.
        let starts: Vec<f64> = item
            .get("times")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(|p| p.get(0).and_then(Value::as_f64))
                    .collect()
            })
            .unwrap_or_default();
        let start = if starts.is_empty() {
            0.0
        } else {
            starts.iter().sum::<f64>() / starts.len() as f64
        };
        if !moments.contains_key(video) {
            order.push(video.to_string());
        }
        moments
            .entry(video.to_string())
            .or_default()
            .push((start, desc.to_string()));
    }
    for video in order {
        let parts = moments.remove(&video).unwrap_or_default();
        add_paragraph(g, &video, resolve_video(dir, &video, "mp4"), parts);
    }
    g.check(path)
}

#[derive(Deserialize)]
struct AnetVideo {
    #[serde(default)]
    timestamps: Vec<Vec<f64>>,
    sentences: Vec<String>,
}

/// A json object's entries in file order (serde_json's `Map` sorts them).
struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry()? {
                    out.push(kv);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn read_activitynet(path: &Path, dir: &Path, g: &mut Groups) -> Res<()> {
    let Ordered(videos): Ordered<AnetVideo> =
        serde_json::from_str(&read(path)?).map_err(|e| parse_err(path, e.line(), e.to_string()))?;
    for (id, v) in videos {
        let parts = v
            .sentences
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let start = v.timestamps.get(i).and_then(|t| t.first()).copied();
                (start.unwrap_or(0.0), s)
            })
            .collect();
        add_paragraph(g, &id, resolve_video(dir, &id, "mp4"), parts);
    }
    g.check(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for name in DatasetFormat::NAMES.split(", ") {
            assert_eq!(DatasetFormat::from_str(name).unwrap().name(), name);
        }
        assert!(DatasetFormat::from_str("lsmdc").is_err());
    }

    #[test]
    fn resolve_tries_extensions_then_the_default() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.avi"), b"x").unwrap();
        std::fs::write(d.path().join("b.mp4"), b"x").unwrap();
        assert_eq!(resolve_video(d.path(), "a", "mp4"), d.path().join("a.avi"));
        // DiDeMo names the original upload; the converted file has another extension.
        assert_eq!(
            resolve_video(d.path(), "b.mov", "mp4"),
            d.path().join("b.mp4")
        );
        assert_eq!(resolve_video(d.path(), "c", "avi"), d.path().join("c.avi"));
        assert_eq!(
            resolve_video(d.path(), "c.webm", "mp4"),
            d.path().join("c.webm")
        );
    }
}
