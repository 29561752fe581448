//! Synthetic captioned videos whose captions need motion and order to be told apart: coloured
//! shapes that move, appear, vanish, grow or shrink, two events per clip joined by "then"
//! ("a red circle moves left, then a blue square appears").
//!
//! Owns the generator: planning clips in minimal contrast groups from a seed ([`scene`]),
//! rendering RGB frames ([`render`]), H.264/MP4 encoding ([`mux`]) and the output folder
//! (`videos/NNNNN.mp4` + `captions.jsonl` in the generic jsonl of `eval::data`). Everything is a
//! function of [`SynthSpec`]: the same spec gives the same captions, frames and file bytes.
//!
//! ```no_run
//! let spec = mvserve::synth::SynthSpec { n: 64, seed: 1, ..Default::default() };
//! let clips = mvserve::synth::generate(&spec, "synth".as_ref())?;
//! # Ok::<(), mvserve::synth::SynthError>(())
//! ```

pub mod mux;
pub mod render;
pub mod scene;

pub use scene::{ClipPlan, Colour, Event, EventKind, Object, Shape};

use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What to generate. Defaults suit the tiny test backbone: 64 clips of 96x96 pixels, 4 fps,
/// 8 s (1-fps sampling gives 8 frames).
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSpec {
    /// Number of clips (in contrast groups of four; the last group may be cut short).
    pub n: usize,
    pub seed: u64,
    /// Frame size in pixels: even, at least 16.
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Clip length; the clip has `fps * seconds` frames.
    pub seconds: u32,
    /// H.264 quantiser (0 best, 51 worst).
    pub qp: u8,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            n: 64,
            seed: 0,
            width: 96,
            height: 96,
            fps: 4,
            seconds: 8,
            qp: 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("bad synth spec: {0}")]
    Spec(String),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("clip {index}: {source}")]
    Encode {
        index: usize,
        #[source]
        source: mux::MuxError,
    },
}

/// One written clip.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthClip {
    /// The path as written in captions.jsonl (relative to the output folder).
    pub video: String,
    pub caption: String,
    pub group: usize,
    pub bytes: u64,
}

impl SynthSpec {
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::Spec(m));
        if self.n == 0 {
            return bad("n must be at least 1".into());
        }
        if !self.width.is_multiple_of(2)
            || !self.height.is_multiple_of(2)
            || self.width < 16
            || self.height < 16
        {
            return bad(format!(
                "frame size {}x{} must have even sides of at least 16 px",
                self.width, self.height
            ));
        }
        if self.width > 1920 || self.height > 1080 {
            return bad("frames larger than 1920x1080 are not needed for synthetic clips".into());
        }
        if self.fps == 0 || self.fps > 60 || self.seconds == 0 || self.seconds > 600 {
            return bad(format!(
                "fps must be 1..=60 and seconds 1..=600, got {} and {}",
                self.fps, self.seconds
            ));
        }
        if self.qp > 51 {
            return bad(format!("qp must be 0..=51, got {}", self.qp));
        }
        Ok(())
    }

    /// The clip plans: captions, objects and events, without rendering anything.
    pub fn plan(&self) -> Result<Vec<ClipPlan>, SynthError> {
        self.validate()?;
        scene::plan(self.n, self.seed).map_err(SynthError::Spec)
    }

    /// The frames of one planned clip.
    pub fn render(&self, plan: &ClipPlan) -> Vec<image::RgbImage> {
        render::clip(plan, self.width, self.height, self.fps, self.seconds)
    }
}

/// The file name of clip `i`.
pub fn video_name(i: usize) -> String {
    format!("videos/{i:05}.mp4")
}

/// Writes `out/videos/NNNNN.mp4` for every clip and `out/captions.jsonl` (one
/// `{"video", "caption", "group"}` per clip, in order), creating `out` as needed. Clips are
/// rendered and encoded in parallel; files are written whole (temporary name, then rename).
pub fn generate(spec: &SynthSpec, out: &Path) -> Result<Vec<SynthClip>, SynthError> {
    let plans = spec.plan()?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    let videos = out.join("videos");
    std::fs::create_dir_all(&videos).map_err(io(&videos))?;
    let clips = plans
        .par_iter()
        .enumerate()
        .map(|(i, plan)| {
            let bytes = mux::encode_mp4(&spec.render(plan), spec.fps, spec.qp)
                .map_err(|source| SynthError::Encode { index: i, source })?;
            let video = video_name(i);
            write_atomic(&out.join(&video), &bytes)?;
            Ok(SynthClip {
                video,
                caption: plan.caption.clone(),
                group: plan.group,
                bytes: bytes.len() as u64,
            })
        })
        .collect::<Result<Vec<_>, SynthError>>()?;
    let mut jsonl = Vec::new();
    for c in &clips {
        // Written by hand to keep the key order (serde_json's map sorts keys).
        let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
        writeln!(
            jsonl,
            "{{\"video\": {}, \"caption\": {}, \"group\": {}}}",
            q(&c.video),
            q(&c.caption),
            c.group
        )
        .expect("writing to a Vec");
    }
    write_atomic(&out.join("captions.jsonl"), &jsonl)?;
    Ok(clips)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    let tmp = path.with_extension("tmp");
    let err = |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
