//! The frozen CLIP backbone: weights, tokenizer, image preprocessing, and the two towers with a hook
//! for a per-sample adapter after the MLP of every encoder block.
//!
//! It owns everything that is plain CLIP. It does not own adapters (`adapter`), batching (`encode`)
//! or video decoding (`media`). The towers are written here rather than taken from
//! candle-transformers because MV-Adapter needs a hook inside every block, and because the weight
//! loader must refuse a checkpoint with missing or extra tensors.

pub mod device;
pub mod encoder;
pub mod int8;
pub mod kernels;
pub mod ops;
pub mod packed;
pub mod preprocess;
pub mod text;
pub mod tokenizer;
pub mod vision;
pub mod vmath;
pub mod weights;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Runs `f` (a whole tower's forward pass) on a thread of rayon's pool and waits for it.
///
/// Every kernel of a block spreads its work over rayon's pool. Called from a thread outside the
/// pool (the server's encoder thread, a benchmark's main thread), each such call hands its work to
/// the pool and sleeps until it is done: a futex wake-up and two context switches per op, dozens
/// of ops per block. From inside the pool the same calls run on the current thread while the other
/// workers steal, so the hand-off is paid once per pass. Measured on a single query's 12 text
/// adapter hooks: 3.0-3.1 ms from the main thread against 1.5-1.6 ms on a pool thread
/// (BENCHMARKS.md "Adapter overhead (2026-12-02)"). On a pool thread already, `f` runs in place.
///
/// The switch of `ops::with_composite_ops` is per thread, so the caller's setting goes with `f`.
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let fused = ops::fused_kernels_here();
    rayon::scope(|_| ops::with_fused_kernels(fused, f))
}

pub use device::{DeviceError, DeviceSpec};
pub use encoder::BlockHook;
pub use int8::Precision;
pub use text::TextTower;
pub use tokenizer::{ClipTokenizer, TextBatch, TextTokens, DEFAULT_TEXT_LEN};
pub use vision::{TowerOutput, VisionTower};
pub use weights::{ModelFiles, ModelSource, Weights, DEFAULT_MODEL_ID};

#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("model not found: {0}")]
    NotFound(String),
    #[error("reading {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("bad model config: {0}")]
    Config(String),
    #[error("bad weights: {0}")]
    BadWeights(String),
    #[error("the checkpoint lacks weight {0}")]
    MissingWeight(String),
    #[error("weight {name} has shape {found:?}, expected {expected:?}")]
    WeightShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("the checkpoint has weights this CLIP does not use: {}", .0.join(", "))]
    UnexpectedWeights(Vec<String>),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Precision(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Results of building model parts from checkpoint tensors.
pub(crate) type LoadResult<T> = std::result::Result<T, BackboneError>;

fn d_vision_hidden() -> usize {
    768
}
fn d_vision_inner() -> usize {
    3072
}
fn d_text_hidden() -> usize {
    512
}
fn d_text_inner() -> usize {
    2048
}
fn d_layers() -> usize {
    12
}
fn d_vision_heads() -> usize {
    12
}
fn d_text_heads() -> usize {
    8
}
fn d_image_size() -> usize {
    224
}
fn d_patch() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_vocab() -> usize {
    49408
}
fn d_positions() -> usize {
    77
}
fn d_projection() -> usize {
    512
}

/// `vision_config` of a Hugging Face CLIP `config.json` (defaults are transformers' own).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VisionConfig {
    #[serde(default = "d_vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_vision_inner")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_image_size")]
    pub image_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
}

/// `text_config` of a Hugging Face CLIP `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TextConfig {
    #[serde(default = "d_text_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_text_inner")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
}

/// A Hugging Face `CLIPModel` config: the fields this backbone reads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClipConfig {
    pub vision_config: VisionConfig,
    pub text_config: TextConfig,
    #[serde(default = "d_projection")]
    pub projection_dim: usize,
}

impl ClipConfig {
    /// openai/clip-vit-base-patch32.
    pub fn vit_b_32() -> Self {
        serde_json::from_str(r#"{"vision_config": {}, "text_config": {}}"#).expect("defaults parse")
    }

    /// openai/clip-vit-base-patch16.
    pub fn vit_b_16() -> Self {
        let mut c = Self::vit_b_32();
        c.vision_config.patch_size = 16;
        c
    }

    /// openai/clip-vit-large-patch14.
    pub fn vit_l_14() -> Self {
        let mut c = Self::vit_b_32();
        c.vision_config = VisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            patch_size: 14,
            ..c.vision_config
        };
        c.text_config = TextConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            ..c.text_config
        };
        c.projection_dim = 768;
        c
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, BackboneError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| BackboneError::Io(path.to_path_buf(), e))?;
        let c: Self = serde_json::from_str(&text)
            .map_err(|e| BackboneError::Config(format!("{}: {e}", path.display())))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), BackboneError> {
        let v = &self.vision_config;
        let t = &self.text_config;
        let bad = |m: String| Err(BackboneError::Config(m));
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        for (what, width, heads) in [
            ("vision", v.hidden_size, v.num_attention_heads),
            ("text", t.hidden_size, t.num_attention_heads),
        ] {
            if heads == 0 || !width.is_multiple_of(heads) {
                return bad(format!(
                    "{what} width {width} is not divisible by {heads} heads"
                ));
            }
        }
        Ok(())
    }

    /// Tokens per image: CLS plus one per patch.
    pub fn vision_tokens(&self) -> usize {
        let g = self.vision_config.image_size / self.vision_config.patch_size;
        g * g + 1
    }
}

/// Which backbone an adapter belongs to: the model's name and the digest of its weights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackboneId {
    pub name: String,
    pub digest: String,
}

/// The two towers and CLIP's temperature.
pub struct Clip {
    pub config: ClipConfig,
    pub vision: VisionTower,
    pub text: TextTower,
    /// The raw parameter; logits use `exp(logit_scale)`.
    pub logit_scale: f32,
    pub id: BackboneId,
    pub device: Device,
}

impl Clip {
    /// Builds the model, consuming every tensor of `weights` (left-overs are an error).
    pub fn from_weights(
        config: ClipConfig,
        mut weights: Weights,
        name: &str,
        device: &Device,
    ) -> Result<Self, BackboneError> {
        config.validate()?;
        let p = config.projection_dim;
        let vision = VisionTower::load(&mut weights, &config.vision_config, p)?;
        let mut text = TextTower::load(&mut weights, &config.text_config, p)?;
        if device.is_cpu() && text.dtype() == DType::F32 {
            // A query is a short product (<= 32 rows a text): see `packed`.
            text.encoder.prepack()?;
        }
        let logit_scale = weights
            .take("logit_scale", &[])?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        let id = BackboneId {
            name: name.to_string(),
            digest: weights.digest().to_string(),
        };
        weights.finish()?;
        Ok(Self {
            config,
            vision,
            text,
            logit_scale,
            id,
            device: device.clone(),
        })
    }

    /// A model with random weights of the right shapes, for benchmarks (never for serving).
    pub fn random(
        config: ClipConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, BackboneError> {
        let tensors = random_weights(&config, seed, device)?;
        let weights = Weights::from_tensors(tensors, dtype)?;
        Self::from_weights(config, weights, &format!("random-{seed}"), device)
    }

    /// This model computing at `precision`: a copy that shares every f32 weight with `self`
    /// (tensors are reference-counted) plus, for int8, the encoders' int8 weights (about a
    /// quarter of the f32 encoders' size on top of them; the text encoder's f32 copy packed for
    /// short products is dropped, about the size of that encoder), for f32 on a CPU that packed
    /// copy (see [`packed`]). Int8 needs an
    /// f32 model on a CPU with AVX-512 VNNI; anything else is an error that says why.
    pub fn with_precision(&self, precision: Precision) -> Result<Self, BackboneError> {
        let mut vision = self.vision.clone();
        let mut text = self.text.clone();
        if precision == Precision::Int8 {
            if !self.device.is_cpu() {
                return Err(BackboneError::Precision(
                    "--precision int8 is a CPU path; a GPU computes in f32 (or --dtype f16)".into(),
                ));
            }
            if self.vision_dtype() != DType::F32 {
                return Err(BackboneError::Precision(
                    "--precision int8 quantises an f32 model".into(),
                ));
            }
            int8::int8_support().map_err(BackboneError::Precision)?;
            vision.encoder.quantize_int8()?;
            text.encoder.quantize_int8()?;
            // int8 takes every product the packed copies would: they would only cost memory.
            text.encoder.drop_packed();
        } else {
            vision.encoder.drop_int8();
            text.encoder.drop_int8();
            if self.device.is_cpu() && text.dtype() == DType::F32 && !text.encoder.is_prepacked() {
                text.encoder.prepack()?;
            }
        }
        Ok(Self {
            config: self.config.clone(),
            vision,
            text,
            logit_scale: self.logit_scale,
            id: self.id.clone(),
            device: self.device.clone(),
        })
    }

    /// The precision of the encoders' linear layers.
    pub fn precision(&self) -> Precision {
        match self.vision.encoder.is_int8() {
            true => Precision::Int8,
            false => Precision::F32,
        }
    }

    /// The dtype the vision tower computes in (that of its weights).
    pub fn vision_dtype(&self) -> DType {
        self.vision.dtype()
    }
}

/// A loaded backbone: the model and its tokenizer.
pub struct Backbone {
    pub clip: Clip,
    pub tokenizer: ClipTokenizer,
    pub files: ModelFiles,
}

impl Backbone {
    /// Resolves the source, then loads config, weights (strictly) and tokenizer.
    pub fn load(source: &ModelSource, device: &Device) -> Result<Self, BackboneError> {
        let files = source.resolve()?;
        let config = ClipConfig::from_file(&files.config)?;
        let weights = Weights::from_safetensors(&files.weights, DType::F32, device)?;
        let clip = Clip::from_weights(config, weights, &files.name, device)?;
        let tokenizer = ClipTokenizer::from_file(&files.tokenizer)?;
        Ok(Self {
            clip,
            tokenizer,
            files,
        })
    }

    /// Switches the backbone to `precision` (see [`Clip::with_precision`]).
    pub fn set_precision(&mut self, precision: Precision) -> Result<(), BackboneError> {
        self.clip = self.clip.with_precision(precision)?;
        Ok(())
    }

    /// L2-normalised text embeddings, (N, projection_dim), texts of at most `len` tokens (cut
    /// after the batch's longest EOT: see [`Backbone::text_batch`]).
    pub fn embed_texts(
        &self,
        texts: &[&str],
        len: usize,
        hook: Option<&dyn BlockHook>,
    ) -> Result<Tensor, BackboneError> {
        let (ids, eot) = self.text_batch(texts, len)?;
        let out = self.clip.text.forward(&ids, &eot, hook, false)?;
        Ok(l2_normalize(&out.embeds)?)
    }

    /// (N, T) ids and (N,) EOT positions on the model's device, for an embedding pass: T is the
    /// longest row's EOT + 1 (at most `len`), the padding after it is cut (see [`TextBatch`]).
    pub fn text_batch(
        &self,
        texts: &[&str],
        len: usize,
    ) -> Result<(Tensor, Tensor), BackboneError> {
        let rows = texts
            .iter()
            .map(|t| self.tokenizer.encode(t, len))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TextBatch::new(&rows).into_tensors(&self.clip.device)?)
    }

    /// (N, L) ids and (N,) EOT positions on the model's device: the authors' layout, every row
    /// padded to all L positions (what training and the parity fixtures use).
    pub fn tokenize_batch(
        &self,
        texts: &[&str],
        len: usize,
    ) -> Result<(Tensor, Tensor), BackboneError> {
        let mut ids = Vec::with_capacity(texts.len() * len);
        let mut eot = Vec::with_capacity(texts.len());
        for t in texts {
            let tok = self.tokenizer.encode(t, len)?;
            ids.extend(tok.ids);
            eot.push(tok.eot as u32);
        }
        let dev = &self.clip.device;
        Ok((
            Tensor::from_vec(ids, (texts.len(), len), dev)?,
            Tensor::from_vec(eot, texts.len(), dev)?,
        ))
    }
}

/// Rows divided by their L2 norm.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(candle_core::D::Minus1)?.sqrt()?)
}

/// Random tensors under every name and shape a Hugging Face CLIPModel of `config` has.
pub fn random_weights(
    config: &ClipConfig,
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>, BackboneError> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut m = BTreeMap::new();
    let mut put = |name: String, shape: &[usize], kind: Init| -> candle_core::Result<()> {
        let t = match kind {
            Init::Normal(std) => {
                let dist = rand_distr::Normal::new(0f32, std).expect("positive std");
                let n = shape.iter().product::<usize>();
                let v: Vec<f32> = (0..n).map(|_| dist.sample(&mut rng)).collect();
                Tensor::from_vec(v, shape, device)?
            }
            Init::Ones => Tensor::ones(shape, DType::F32, device)?,
            Init::Zeros => Tensor::zeros(shape, DType::F32, device)?,
        };
        m.insert(name, t);
        Ok(())
    };
    enum Init {
        Normal(f32),
        Ones,
        Zeros,
    }
    let v = &config.vision_config;
    let t = &config.text_config;
    let p = config.projection_dim;
    let mut tower =
        |prefix: &str, d: usize, inner: usize, layers: usize| -> candle_core::Result<()> {
            for i in 0..layers {
                let b = format!("{prefix}.encoder.layers.{i}");
                for ln in ["layer_norm1", "layer_norm2"] {
                    put(format!("{b}.{ln}.weight"), &[d], Init::Ones)?;
                    put(format!("{b}.{ln}.bias"), &[d], Init::Zeros)?;
                }
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    put(
                        format!("{b}.self_attn.{proj}.weight"),
                        &[d, d],
                        Init::Normal(0.02),
                    )?;
                    put(
                        format!("{b}.self_attn.{proj}.bias"),
                        &[d],
                        Init::Normal(0.01),
                    )?;
                }
                put(
                    format!("{b}.mlp.fc1.weight"),
                    &[inner, d],
                    Init::Normal(0.02),
                )?;
                put(format!("{b}.mlp.fc1.bias"), &[inner], Init::Normal(0.01))?;
                put(
                    format!("{b}.mlp.fc2.weight"),
                    &[d, inner],
                    Init::Normal(0.02),
                )?;
                put(format!("{b}.mlp.fc2.bias"), &[d], Init::Normal(0.01))?;
            }
            Ok(())
        };
    tower(
        "vision_model",
        v.hidden_size,
        v.intermediate_size,
        v.num_hidden_layers,
    )?;
    tower(
        "text_model",
        t.hidden_size,
        t.intermediate_size,
        t.num_hidden_layers,
    )?;
    let vd = v.hidden_size;
    let td = t.hidden_size;
    let ps = v.patch_size;
    let g = v.image_size / ps;
    for (name, shape, init) in [
        (
            "vision_model.embeddings.patch_embedding.weight",
            vec![vd, 3, ps, ps],
            Init::Normal(0.02),
        ),
        (
            "vision_model.embeddings.class_embedding",
            vec![vd],
            Init::Normal(0.02),
        ),
        (
            "vision_model.embeddings.position_embedding.weight",
            vec![g * g + 1, vd],
            Init::Normal(0.02),
        ),
        ("vision_model.pre_layrnorm.weight", vec![vd], Init::Ones),
        ("vision_model.pre_layrnorm.bias", vec![vd], Init::Zeros),
        ("vision_model.post_layernorm.weight", vec![vd], Init::Ones),
        ("vision_model.post_layernorm.bias", vec![vd], Init::Zeros),
        ("visual_projection.weight", vec![p, vd], Init::Normal(0.02)),
        (
            "text_model.embeddings.token_embedding.weight",
            vec![t.vocab_size, td],
            Init::Normal(0.02),
        ),
        (
            "text_model.embeddings.position_embedding.weight",
            vec![t.max_position_embeddings, td],
            Init::Normal(0.01),
        ),
        ("text_model.final_layer_norm.weight", vec![td], Init::Ones),
        ("text_model.final_layer_norm.bias", vec![td], Init::Zeros),
        ("text_projection.weight", vec![p, td], Init::Normal(0.02)),
    ] {
        put(name.to_string(), &shape, init)?;
    }
    m.insert("logit_scale".into(), Tensor::new(4.6052f32, device)?);
    Ok(m)
}
