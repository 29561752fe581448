//! Checkpoints in the authors' parameter names (`zhangbw17/MV-Adapter`, `BaselineModel.state_dict()`):
//! the one place their names map to ours, reading PyTorch `.bin`/`.pth` (candle's pickle reader)
//! or safetensors, and inferring our config from the tensors.
//!
//! Backbone weights in such a checkpoint are ignored (ours come from the Hugging Face model); the
//! shared CMT factor, which their code stores under three names, must agree wherever it appears.

use super::config::{AdapterConfig, BackboneDims, Tying};
use super::AdapterError;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Their per-adapter suffix -> ours (after `vision.{l}.` / `text.{l}.`).
const SUFFIXES: &[(&str, &str)] = &[
    ("down.weight", "down.weight"),
    ("down.bias", "down.bias"),
    ("up.weight", "up.weight"),
    ("up.bias", "up.bias"),
    ("ln_pre.weight", "ln_pre.weight"),
    ("ln_pre.bias", "ln_pre.bias"),
    ("positional_embedding", "pos"),
    ("cc", "cc"),
    ("block.ln_1.weight", "trm.ln_1.weight"),
    ("block.ln_1.bias", "trm.ln_1.bias"),
    ("block.attn.in_proj_weight", "trm.attn.in_proj.weight"),
    ("block.attn.in_proj_bias", "trm.attn.in_proj.bias"),
    ("block.attn.out_proj.weight", "trm.attn.out_proj.weight"),
    ("block.attn.out_proj.bias", "trm.attn.out_proj.bias"),
    ("block.ln_2.weight", "trm.ln_2.weight"),
    ("block.ln_2.bias", "trm.ln_2.bias"),
    ("block.mlp.c_fc.weight", "trm.mlp.fc1.weight"),
    ("block.mlp.c_fc.bias", "trm.mlp.fc1.bias"),
    ("block.mlp.c_proj.weight", "trm.mlp.fc2.weight"),
    ("block.mlp.c_proj.bias", "trm.mlp.fc2.bias"),
    ("conv_rf_c.g.weight", "calib.g.weight"),
    ("conv_rf_c.g.bias", "calib.g.bias"),
    ("conv_rf_c.a.weight", "calib.a.weight"),
    ("conv_rf_c.a.bias", "calib.a.bias"),
    ("conv_rf_c.b.weight", "calib.b.weight"),
    ("md_proj.weight", "cmt.weight"),
    ("md_proj.bias", "cmt.bias"),
];

/// What one of their names is in ours.
#[derive(Debug, PartialEq, Eq)]
pub enum Mapped {
    /// A tensor of ours.
    Ours(String),
    /// The shared CMT factor of tied layer `layer` (stored once as `cmt.{layer}.shared`).
    SharedFactor { layer: usize },
    /// The k-th shared factor (`prompt.k`): the k-th tied layer.
    Prompt(usize),
    /// Not an adapter tensor (backbone weights, buffers): ignored.
    Ignored,
}

/// Maps one of the authors' names (with or without `module.`/`clip.` prefixes) to ours.
pub fn map_name(theirs: &str) -> Result<Mapped, AdapterError> {
    let mut n = theirs;
    for p in ["module.", "clip."] {
        n = n.strip_prefix(p).unwrap_or(n);
    }
    if let Some(k) = n.strip_prefix("prompt.") {
        return k
            .parse()
            .map(Mapped::Prompt)
            .map_err(|_| AdapterError::Import(format!("unknown tensor {theirs}")));
    }
    let (tower, rest) = if let Some(r) = n.strip_prefix("visual.transformer.resblocks.") {
        ("vision", r)
    } else if let Some(r) = n.strip_prefix("transformer.resblocks.") {
        ("text", r)
    } else {
        return Ok(Mapped::Ignored);
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return Ok(Mapped::Ignored);
    };
    let Some(suffix) = rest.strip_prefix("mlp.adapter.") else {
        return Ok(Mapped::Ignored);
    };
    let layer: usize = layer
        .parse()
        .map_err(|_| AdapterError::Import(format!("bad layer index in {theirs}")))?;
    if suffix == "shared_factor" {
        return Ok(Mapped::SharedFactor { layer });
    }
    match SUFFIXES.iter().find(|(t, _)| *t == suffix) {
        Some((_, ours)) => Ok(Mapped::Ours(format!("{tower}.{layer}.{ours}"))),
        None => Err(AdapterError::Import(format!(
            "unknown adapter tensor {theirs} (options this build does not implement, e.g. \
             'p' calibration, lnin or up-side tying?)"
        ))),
    }
}

/// Reads a checkpoint: safetensors by content, otherwise a PyTorch pickle (`.bin`/`.pth`, also
/// a dict with `state_dict`/`model`). Tensors come back as F32 on the CPU.
pub fn read_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>, AdapterError> {
    let mut head = [0u8; 9];
    let is_st = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .map(|_| head[8] == b'{')
        .unwrap_or(false);
    let raw: Vec<(String, Tensor)> = if is_st {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| AdapterError::Import(format!("{}: {e}", path.display())))?
            .into_iter()
            .collect()
    } else {
        let mut out = Vec::new();
        for key in [None, Some("state_dict"), Some("model")] {
            if let Ok(t) = candle_core::pickle::read_all_with_key(path, key) {
                if !t.is_empty() {
                    out = t;
                    break;
                }
            }
        }
        if out.is_empty() {
            return Err(AdapterError::Import(format!(
                "{}: neither safetensors nor a PyTorch state dict",
                path.display()
            )));
        }
        out
    };
    raw.into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?)))
        .collect()
}

/// Options the tensors cannot tell.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Required when md_proj's output width fits both modes (adapter width == backbone width).
    pub tying: Option<Tying>,
    pub heads: usize,
    pub scale: f64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            tying: None,
            heads: 2,
            scale: 0.1,
        }
    }
}

/// Renames a checkpoint's adapter tensors to ours and infers the config. The result still goes
/// through `AdapterFile::new` (names, shapes, values) before it is written.
pub fn import(
    tensors: Vec<(String, Tensor)>,
    dims: BackboneDims,
    opts: &ImportOptions,
) -> Result<(AdapterConfig, HashMap<String, Tensor>), AdapterError> {
    let mut ours: HashMap<String, Tensor> = HashMap::new();
    let mut shared: BTreeMap<usize, Vec<(String, Tensor)>> = BTreeMap::new();
    let mut prompts: BTreeMap<usize, Tensor> = BTreeMap::new();
    for (name, t) in tensors {
        match map_name(&name)? {
            Mapped::Ours(n) => {
                if ours.insert(n.clone(), t).is_some() {
                    return Err(AdapterError::Import(format!("two tensors map to {n}")));
                }
            }
            Mapped::SharedFactor { layer } => shared.entry(layer).or_default().push((name, t)),
            Mapped::Prompt(k) => {
                prompts.insert(k, t);
            }
            Mapped::Ignored => {}
        }
    }
    let layers = |tower: &str| -> Vec<usize> {
        let mut v: Vec<usize> = ours
            .keys()
            .filter_map(|k| {
                k.strip_prefix(tower)?
                    .strip_prefix('.')?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let vision_layers = layers("vision");
    let text_layers = layers("text");
    if vision_layers.is_empty() && text_layers.is_empty() {
        return Err(AdapterError::Import(
            "no adapter tensors in the checkpoint".into(),
        ));
    }
    let tied_layers: Vec<usize> = shared.keys().copied().collect();
    // The shared factor: one tensor per tied layer, equal wherever their code stored it.
    for (&layer, copies) in &shared {
        let (first_name, first) = &copies[0];
        let mut all = copies.clone();
        if let Some(k) = tied_layers.iter().position(|&l| l == layer) {
            if let Some(p) = prompts.get(&k) {
                all.push((format!("prompt.{k}"), p.clone()));
            }
        }
        for (n, t) in &all[1..] {
            let same = t.dims() == first.dims()
                && (t - first)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
            if !same {
                return Err(AdapterError::Import(format!(
                    "the shared factor differs between {first_name} and {n}"
                )));
            }
        }
        ours.insert(format!("cmt.{layer}.shared"), first.clone());
    }
    let dim = |name: &str, i: usize| -> Result<usize, AdapterError> {
        ours.get(name)
            .ok_or_else(|| AdapterError::Import(format!("missing {name}")))?
            .dim(i)
            .map_err(Into::into)
    };
    let probe = vision_layers
        .first()
        .map(|l| format!("vision.{l}"))
        .unwrap_or_else(|| format!("text.{}", text_layers[0]));
    let width = dim(&format!("{probe}.down.weight"), 0)?;
    // A video adapter without the positional table is per-frame down/up only (no TRM); its
    // frame count is then not recorded in the tensors and the usual 12 is assumed.
    let video_trm = vision_layers
        .first()
        .is_none_or(|l| ours.contains_key(&format!("vision.{l}.pos")));
    let frames = match vision_layers.first() {
        Some(l) if video_trm => (dim(&format!("vision.{l}.pos"), 0)? - 1) / 2,
        _ => 12,
    };
    let words = match text_layers.first() {
        Some(l) => dim(&format!("text.{l}.pos"), 0)?,
        None => 32,
    };
    let temporal = vision_layers
        .first()
        .is_some_and(|l| ours.contains_key(&format!("vision.{l}.calib.a.weight")));
    let calib_dim = match vision_layers.first() {
        Some(l) if temporal => dim(&format!("vision.{l}.calib.a.weight"), 0)?,
        _ => 16,
    };
    let (tying, factor_dim) = match tied_layers.first() {
        None => (Tying::None, 32),
        Some(&l) => {
            let tower = if vision_layers.contains(&l) {
                "vision"
            } else {
                "text"
            };
            let d = if tower == "vision" {
                dims.vision_width
            } else {
                dims.text_width
            };
            let out = dim(&format!("{tower}.{l}.cmt.weight"), 0)?;
            let k = dim(&format!("{tower}.{l}.cmt.weight"), 1)?;
            let inferred = if out == d && out != width {
                Some(Tying::DownIn)
            } else if out == width && out != d {
                Some(Tying::DownOut)
            } else {
                None
            };
            let t = match (opts.tying, inferred) {
                (Some(t), Some(i)) if t != i => {
                    return Err(AdapterError::Import(format!(
                        "--tying {t:?} contradicts the checkpoint's md_proj ({out} outputs: {i:?})"
                    )))
                }
                (Some(t), _) | (None, Some(t)) => t,
                (None, None) => {
                    return Err(AdapterError::Import(
                        "md_proj's width fits both down-in and down-out: say which (--tying)"
                            .into(),
                    ))
                }
            };
            (t, k)
        }
    };
    let config = AdapterConfig {
        width,
        heads: opts.heads,
        scale: opts.scale,
        frames,
        words,
        vision_layers,
        text_layers,
        tied_layers,
        tying,
        temporal,
        video_trm,
        factor_dim,
        kron_n: 4,
        calib_dim,
        backbone: dims,
    };
    config.validate()?;
    Ok((config, ours))
}
