//! The adapter's configuration (serialised as JSON into every adapter file), the backbone
//! dimensions it was built for, and parameter counting.
//!
//! It owns what an adapter *is* (sizes, which layers, which tying) and whether that fits a
//! backbone. It does not own tensors (`modules`, `task`) or files (`file`).

use super::AdapterError;
use crate::backbone::ClipConfig;
use serde::{Deserialize, Serialize};

/// How the down-projections of the tied layers share a cross-modal factor (spec section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tying {
    /// `beta = f_C M_S + c_S` (n = backbone width) scales W_down's input channels (paper default).
    DownIn,
    /// The same with n = adapter width, scaling W_down's output channels (authors' MSR-VTT config).
    DownOut,
    /// `W_down = sum_i kron(S_i, M_i)`, `S_i` shared: our reading of the paper's first version.
    Kronecker,
    /// No cross-modality tying.
    None,
}

impl Tying {
    pub const ALL: [Self; 4] = [Self::DownIn, Self::DownOut, Self::Kronecker, Self::None];

    /// The name in files (serde) and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::DownIn => "down_in",
            Self::DownOut => "down_out",
            Self::Kronecker => "kronecker",
            Self::None => "none",
        }
    }

    /// A name, with `-` or a space accepted for `_`.
    pub fn parse(s: &str) -> Result<Self, AdapterError> {
        let wanted = s.replace(['-', ' '], "_");
        Self::ALL
            .into_iter()
            .find(|t| t.name() == wanted)
            .ok_or_else(|| {
                AdapterError::BadConfig(format!(
                    "unknown tying {s:?} (down_in, down_out, kronecker or none)"
                ))
            })
    }
}

/// `--tying` on the command line: the names of [`Tying::name`], parsed by [`Tying::parse`].
impl clap::ValueEnum for Tying {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
    fn from_str(input: &str, _ignore_case: bool) -> Result<Self, String> {
        Self::parse(input).map_err(|e| e.to_string())
    }
}

/// The backbone shape an adapter is built for (recorded in the file, checked on load).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackboneDims {
    pub vision_width: usize,
    pub vision_layers: usize,
    pub text_width: usize,
    pub text_layers: usize,
}

impl BackboneDims {
    pub fn of(c: &ClipConfig) -> Self {
        Self {
            vision_width: c.vision_config.hidden_size,
            vision_layers: c.vision_config.num_hidden_layers,
            text_width: c.text_config.hidden_size,
            text_layers: c.text_config.num_hidden_layers,
        }
    }
}

fn d_width() -> usize {
    64
}
fn d_heads() -> usize {
    2
}
fn d_scale() -> f64 {
    0.1
}
fn d_true() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn d_factor_dim() -> usize {
    32
}
fn d_kron_n() -> usize {
    4
}
fn d_calib_dim() -> usize {
    16
}

/// Upper bounds on every size in a config, checked by [`AdapterConfig::validate`] before any
/// tensor shape is computed or allocated, so a hostile file cannot ask for a billion frames or
/// make a shape product overflow. Each leaves ample headroom over real use.
pub mod limits {
    /// Frames per video (real use 12; 64 for long-video datasets). Every upload to the task is
    /// decoded to this many frames, so it also bounds the work of one upload.
    pub const MAX_FRAMES: usize = 256;
    /// Padded text length: CLIP's text context is 77 tokens (real use 32 or 64).
    pub const MAX_WORDS: usize = 77;
    /// Adapter width d' (real use 64).
    pub const MAX_WIDTH: usize = 1024;
    /// Heads of the adapter's transformer (real use 2).
    pub const MAX_HEADS: usize = 64;
    /// f_C length, Kronecker rank and calibration width (real use 32, 4, 16).
    pub const MAX_FACTOR_DIM: usize = 1024;
    pub const MAX_KRON_N: usize = 64;
    pub const MAX_CALIB_DIM: usize = 1024;
    /// Backbone width and depth (ViT-bigG/14 is 1664 wide and 48 deep).
    pub const MAX_BACKBONE_WIDTH: usize = 8192;
    pub const MAX_BACKBONE_LAYERS: usize = 128;
}

/// Everything that fixes an adapter's architecture. JSON field names are stable (file format).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// Adapter width d' (64).
    #[serde(default = "d_width")]
    pub width: usize,
    /// Heads of the small transformer inside each adapter (2).
    #[serde(default = "d_heads")]
    pub heads: usize,
    /// Multiplies the whole adapter output, up bias included (0.1).
    #[serde(default = "d_scale")]
    pub scale: f64,
    /// Frames per video F (the temporal positional table has 2F+1 rows).
    pub frames: usize,
    /// Padded text length L (the text positional table has L rows).
    pub words: usize,
    /// Vision blocks that carry a video adapter.
    pub vision_layers: Vec<usize>,
    /// Text blocks that carry a text adapter.
    pub text_layers: Vec<usize>,
    /// Blocks whose down-projections are tied across modalities (must carry both adapters).
    pub tied_layers: Vec<usize>,
    pub tying: Tying,
    /// Per-frame calibration of the CLS up-projection (Temporal Adaptation); off for ablations.
    #[serde(default = "d_true")]
    pub temporal: bool,
    /// The video adapter's cross-frame part: the `cc` token, the (2F+1)-row positional table,
    /// `ln_pre` and the TRM over `[cc; CLS_1..F; patch-mean_1..F]`. Off, the video adapter is
    /// per-frame down/up only (the paper's "down/up only" ablation), so a meanP video embedding
    /// does not depend on frame order; needs `temporal` off too. Written only when false, so
    /// files without the field (and their bytes) are unchanged.
    #[serde(default = "d_true", skip_serializing_if = "is_true")]
    pub video_trm: bool,
    /// Length of the shared factor f_C (32).
    #[serde(default = "d_factor_dim")]
    pub factor_dim: usize,
    /// Kronecker rank n (4), only for `tying = "kronecker"`.
    #[serde(default = "d_kron_n")]
    pub kron_n: usize,
    /// Hidden width of the calibration MLP (16, hard-coded by the authors).
    #[serde(default = "d_calib_dim")]
    pub calib_dim: usize,
    /// The backbone shape the tensors were made for.
    pub backbone: BackboneDims,
}

impl AdapterConfig {
    /// The authors' setting: adapters in every block, tying in the last two, 64 wide, 2 heads.
    pub fn standard(dims: BackboneDims, frames: usize, words: usize, tying: Tying) -> Self {
        let last = dims.vision_layers.min(dims.text_layers);
        let tied = if tying == Tying::None {
            vec![]
        } else {
            (last.saturating_sub(2)..last).collect()
        };
        Self {
            width: 64,
            heads: 2,
            scale: 0.1,
            frames,
            words,
            vision_layers: (0..dims.vision_layers).collect(),
            text_layers: (0..dims.text_layers).collect(),
            tied_layers: tied,
            tying,
            temporal: true,
            video_trm: true,
            factor_dim: 32,
            kron_n: 4,
            calib_dim: 16,
            backbone: dims,
        }
    }

    /// Internal consistency (does not look at a backbone).
    pub fn validate(&self) -> Result<(), AdapterError> {
        let bad = |m: String| Err(AdapterError::BadConfig(m));
        // Bounds first: everything below (and every shape computed from the config) may then
        // multiply sizes without overflow.
        let b = &self.backbone;
        for (what, value, max) in [
            ("frames", self.frames, limits::MAX_FRAMES),
            ("words", self.words, limits::MAX_WORDS),
            ("width", self.width, limits::MAX_WIDTH),
            ("heads", self.heads, limits::MAX_HEADS),
            ("factor_dim", self.factor_dim, limits::MAX_FACTOR_DIM),
            ("kron_n", self.kron_n, limits::MAX_KRON_N),
            ("calib_dim", self.calib_dim, limits::MAX_CALIB_DIM),
            (
                "backbone.vision_width",
                b.vision_width,
                limits::MAX_BACKBONE_WIDTH,
            ),
            (
                "backbone.text_width",
                b.text_width,
                limits::MAX_BACKBONE_WIDTH,
            ),
            (
                "backbone.vision_layers",
                b.vision_layers,
                limits::MAX_BACKBONE_LAYERS,
            ),
            (
                "backbone.text_layers",
                b.text_layers,
                limits::MAX_BACKBONE_LAYERS,
            ),
        ] {
            if value > max {
                return bad(format!("{what} is {value}, above the limit of {max}"));
            }
        }
        if self.width == 0 || self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return bad(format!(
                "adapter width {} is not divisible by {} heads",
                self.width, self.heads
            ));
        }
        if self.frames == 0 || self.words == 0 {
            return bad("frames and words must be positive".into());
        }
        if !self.scale.is_finite() {
            return bad("scale must be finite".into());
        }
        for (what, layers, n) in [
            ("vision", &self.vision_layers, b.vision_layers),
            ("text", &self.text_layers, b.text_layers),
        ] {
            if let Some(l) = layers.iter().find(|&&l| l >= n) {
                return bad(format!("{what} layer {l} does not exist ({n} layers)"));
            }
            if !is_strictly_increasing(layers) {
                return bad(format!("{what}_layers must be sorted without repeats"));
            }
        }
        if !is_strictly_increasing(&self.tied_layers) {
            return bad("tied_layers must be sorted without repeats".into());
        }
        for l in &self.tied_layers {
            if !self.vision_layers.contains(l) || !self.text_layers.contains(l) {
                return bad(format!(
                    "tied layer {l} must carry both a video and a text adapter"
                ));
            }
        }
        if self.tying == Tying::None && !self.tied_layers.is_empty() {
            return bad("tying is none but tied_layers is not empty".into());
        }
        if self.tying != Tying::None && self.factor_dim == 0 {
            return bad("factor_dim must be positive".into());
        }
        if self.tying == Tying::Kronecker && !self.tied_layers.is_empty() {
            let n = self.kron_n;
            for d in [self.width, b.vision_width, b.text_width] {
                if n == 0 || !d.is_multiple_of(n) {
                    return bad(format!("kron_n {n} does not divide width {d}"));
                }
            }
        }
        if self.temporal && !self.video_trm {
            return bad(
                "temporal calibration reads the video TRM's output: it needs video_trm".into(),
            );
        }
        if self.temporal && self.calib_dim == 0 {
            return bad("calib_dim must be positive".into());
        }
        Ok(())
    }

    /// Whether the adapter fits this backbone's shape.
    pub fn check_fits(&self, dims: &BackboneDims) -> Result<(), AdapterError> {
        if &self.backbone != dims {
            return Err(AdapterError::ConfigMismatch(format!(
                "the adapter was made for {:?}, the backbone is {:?}",
                self.backbone, dims
            )));
        }
        Ok(())
    }

    pub fn is_tied(&self, layer: usize) -> bool {
        self.tying != Tying::None && self.tied_layers.contains(&layer)
    }

    /// Parameters of one video adapter (layer `layer`, tying parts excluded).
    fn video_params(&self, layer: usize) -> usize {
        let (d, w) = (self.backbone.vision_width, self.width);
        // ln_pre, TRM, positional table and cc exist only with the cross-frame part.
        let cross_frame = if self.video_trm {
            2 * w + trm_params(w) + (2 * self.frames + 1) * w + w
        } else {
            0
        };
        self.down_params(d, layer)
            + (w * d + d)
            + cross_frame
            + if self.temporal {
                (w * w + w) + (2 * w * self.calib_dim + self.calib_dim) + self.calib_dim * w
            } else {
                0
            }
    }

    fn text_params(&self, layer: usize) -> usize {
        let (d, w) = (self.backbone.text_width, self.width);
        self.down_params(d, layer) + (w * d + d) + 2 * w + trm_params(w) + self.words * w
    }

    /// W_down and b_down (or the per-modality Kronecker factors) plus the modality's CMT projection.
    fn down_params(&self, d: usize, layer: usize) -> usize {
        let w = self.width;
        let k = self.factor_dim;
        if !self.is_tied(layer) {
            return w * d + w;
        }
        match self.tying {
            Tying::DownIn => w * d + w + (k * d + d),
            Tying::DownOut => w * d + w + (k * w + w),
            Tying::Kronecker => w * d / self.kron_n + w,
            Tying::None => unreachable!("is_tied is false without tying"),
        }
    }

    /// Parameters shared across modalities in one tied layer.
    fn shared_params(&self) -> usize {
        match self.tying {
            Tying::DownIn | Tying::DownOut => self.factor_dim,
            Tying::Kronecker => self.kron_n.pow(3),
            Tying::None => 0,
        }
    }

    /// Total trainable parameters (shared factors counted once).
    pub fn param_count(&self) -> usize {
        self.vision_layers
            .iter()
            .map(|&l| self.video_params(l))
            .sum::<usize>()
            + self
                .text_layers
                .iter()
                .map(|&l| self.text_params(l))
                .sum::<usize>()
            + self.tied_layers.len() * self.shared_params()
    }
}

fn is_strictly_increasing(v: &[usize]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

/// One pre-LN transformer layer of width w with a 4w MLP.
fn trm_params(w: usize) -> usize {
    (3 * w * w + 3 * w) + (w * w + w) + 4 * w + (4 * w * w + 4 * w) + (4 * w * w + w)
}

/// Parameters of a CLIP model with this config (weights and biases, logit scale included).
pub fn clip_param_count(c: &ClipConfig) -> usize {
    let v = &c.vision_config;
    let t = &c.text_config;
    let block =
        |d: usize, inner: usize| 4 * (d * d + d) + 4 * d + (inner * d + inner) + (d * inner + d);
    let g = v.image_size / v.patch_size;
    let vd = v.hidden_size;
    let td = t.hidden_size;
    let vision = vd * 3 * v.patch_size * v.patch_size
        + vd
        + (g * g + 1) * vd
        + 4 * vd
        + v.num_hidden_layers * block(vd, v.intermediate_size)
        + c.projection_dim * vd;
    let text = t.vocab_size * td
        + t.max_position_embeddings * td
        + t.num_hidden_layers * block(td, t.intermediate_size)
        + 2 * td
        + c.projection_dim * td;
    vision + text + 1
}
