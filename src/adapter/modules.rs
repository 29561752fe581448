//! The MV-Adapter layers as candle modules (spec sections 3 to 7): the small transformer (TRM),
//! the down-projection with Cross Modality Tying, the per-frame calibration, the text adapter and
//! the video adapter with Temporal Adaptation.
//!
//! Every parameter is taken from a `VarBuilder` under our stable names (see `adapters/README.md`),
//! so the same code builds an inference model from a file (`VarBuilder::from_tensors`) or a
//! trainable one (`VarBuilder::from_varmap`, parameters are `Var`s). Forward passes use
//! `backbone::ops`, which take fused kernels for inference and differentiable composites when
//! gradients are tracked. Layout is batch-first: (N, T, D). This module does not know about files
//! or hooks.

use super::served_text::{Parts, ServedText};
use crate::backbone::ops::{bias_quick_gelu, quick_gelu, self_attention, LayerNorm, Linear};
use crate::backbone::text::causal_mask;
use crate::simd::Level;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};
use std::sync::OnceLock;

/// How parameters are initialised when the `VarBuilder` creates them (ignored when loading).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterInit {
    /// The authors' init (spec section 7): zero up-projection, so the adapter is the identity.
    Authors,
    /// Like `Authors`, but the up-projections, calibration output and shared factors are random
    /// too, so the adapter visibly changes embeddings (tests, benchmarks, demos).
    Random,
}

const LN_EPS: f64 = 1e-5;

fn uniform(fan_in: usize) -> Init {
    let b = (fan_in as f64).powf(-0.5);
    Init::Uniform { lo: -b, up: b }
}

fn randn(stdev: f64) -> Init {
    Init::Randn { mean: 0.0, stdev }
}

/// `Linear(inp -> out)` with the given weight and bias inits (bias None = no bias).
fn linear(vb: &VarBuilder, inp: usize, out: usize, w: Init, b: Option<Init>) -> Result<Linear> {
    let weight = vb.get_with_hints((out, inp), "weight", w)?;
    let bias = match b {
        Some(b) => Some(vb.get_with_hints(out, "bias", b)?),
        None => None,
    };
    Ok(Linear::new(weight, bias))
}

fn layer_norm(vb: &VarBuilder, dim: usize) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
        bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
        eps: LN_EPS,
    })
}

/// The up-projection: zero at the authors' init (identity adapter).
fn up_linear(vb: &VarBuilder, w: usize, d: usize, init: AdapterInit) -> Result<Linear> {
    match init {
        AdapterInit::Authors => linear(vb, w, d, Init::Const(0.0), Some(Init::Const(0.0))),
        AdapterInit::Random => linear(vb, w, d, randn((w as f64).powf(-0.5)), Some(randn(0.02))),
    }
}

/// `s * (z W_up^T + b_up)` computed as `z (s W_up)^T + s b_up`: the scale touches the small
/// weight instead of the (N, T, d) output.
fn scaled_up(up: &Linear, scale: f64, cache: &Derived, z: &Tensor) -> Result<Tensor> {
    cache.apply(|| scaled_up_layer(up, scale), |l| l.forward(z))
}

/// The layer `s * up`.
fn scaled_up_layer(up: &Linear, scale: f64) -> Result<Linear> {
    let w = (up.weight()? * scale)?;
    let b = match &up.bias {
        Some(b) => Some((b * scale)?),
        None => None,
    };
    Ok(Linear::new(w, b))
}

/// A layer computed from parameters on every forward (a tied W_down, the scaled up-projection),
/// kept after its first use when its parameters are plain tensors: an adapter loaded for serving
/// never changes, and recomputing it cost a dozen small ops per block and query. Parameters that
/// are `Var`s (training) change between steps, so such a layer is recomputed on every call. A
/// module's parameters are all of one kind, so the first call decides.
#[derive(Clone, Debug, Default)]
struct Derived(OnceLock<Option<Linear>>);

impl Derived {
    /// Keeps `l` from now on (an adapter prepared for serving before its first use).
    fn keep(&self, l: Linear) {
        let _ = self.0.set(Some(l));
    }

    fn apply(
        &self,
        make: impl Fn() -> Result<Linear>,
        run: impl Fn(&Linear) -> Result<Tensor>,
    ) -> Result<Tensor> {
        match self.0.get() {
            Some(Some(kept)) => run(kept),
            Some(None) => run(&make()?),
            None => {
                let l = make()?;
                let tracked =
                    l.weight()?.track_op() || l.bias.as_ref().is_some_and(Tensor::track_op);
                if tracked {
                    let _ = self.0.set(None);
                    return run(&l);
                }
                // Kept as made, not transposed into the frozen layout: an untied W_down then
                // shares the parameter's storage, so a served adapter grows only by its scaled
                // up-projections and tied W_downs (~3.5 MB for the standard ViT-B/32 adapter;
                // the frozen layout measured ~6 MB per task and no faster at these sizes).
                run(self.0.get_or_init(|| Some(l)).as_ref().expect("kept"))
            }
        }
    }
}

/// One pre-LN transformer layer of width w (spec section 5):
/// `x = x + MHA(LN1(x)); x = x + MLP(LN2(x))`, MLP w -> 4w -> w with QuickGELU.
#[derive(Clone, Debug)]
pub struct Trm {
    ln_1: LayerNorm,
    /// (3w, w): rows q, k, v (PyTorch's `in_proj_weight` layout).
    in_proj: Linear,
    out_proj: Linear,
    ln_2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Trm {
    /// `backbone_width` sets the authors' init scales (they use the backbone width E, not w).
    pub fn new(vb: VarBuilder, w: usize, heads: usize, backbone_width: usize) -> Result<Self> {
        let e = backbone_width as f64;
        let attn_std = e.powf(-0.5);
        let proj_std = (2.0 * e).powf(-0.5);
        let a = vb.pp("attn");
        Ok(Self {
            ln_1: layer_norm(&vb.pp("ln_1"), w)?,
            in_proj: linear(
                &a.pp("in_proj"),
                w,
                3 * w,
                randn(attn_std),
                Some(Init::Const(0.0)),
            )?,
            out_proj: linear(
                &a.pp("out_proj"),
                w,
                w,
                randn(proj_std),
                Some(Init::Const(0.0)),
            )?,
            ln_2: layer_norm(&vb.pp("ln_2"), w)?,
            fc1: linear(
                &vb.pp("mlp.fc1"),
                w,
                4 * w,
                randn(proj_std),
                Some(uniform(w)),
            )?,
            fc2: linear(
                &vb.pp("mlp.fc2"),
                4 * w,
                w,
                randn(proj_std),
                Some(uniform(4 * w)),
            )?,
            heads,
        })
    }

    /// Gives the four linear layers their copies packed for short products.
    fn prepack(&mut self) -> Result<()> {
        for l in [
            &mut self.in_proj,
            &mut self.out_proj,
            &mut self.fc1,
            &mut self.fc2,
        ] {
            l.prepack()?;
        }
        Ok(())
    }

    /// x: (N, S, w); mask: additive, broadcastable to (N, heads, S, S). Returns (N, S, w).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let w = x.dim(D::Minus1)?;
        let q_scale = ((w / self.heads) as f64).powf(-0.5);
        let raw = self.in_proj.forward_no_bias(&self.ln_1.forward(x)?)?;
        let in_bias = self
            .in_proj
            .bias
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("the TRM's in_proj has a bias".into()))?;
        let ctx = self_attention(&raw, in_bias, self.heads, q_scale, mask)?;
        let x = (x + self.out_proj.forward(&ctx)?)?;
        let m = self.fc1.forward_bias_quick_gelu(&self.ln_2.forward(&x)?)?;
        x + self.fc2.forward(&m)?
    }
}

/// Where a tied layer's cross-modal factor comes from.
#[derive(Clone, Debug)]
enum DownWeight {
    /// An untied layer: W_down (w, d).
    Plain(Tensor),
    /// CMT down-in / down-out: W_down scaled by `beta = proj(shared)`, on its input (d) or output
    /// (w) channels.
    Scaled {
        weight: Tensor,
        /// Linear(factor_dim -> d or w), this modality's M_S and c_S.
        proj: Linear,
        /// f_C (factor_dim,), the same tensor (Var) in both modalities.
        shared: Tensor,
        on_input: bool,
    },
    /// `W_down = sum_i kron(S_i, M_i)`: S (n, n, n) shared, M (n, w/n, d/n) per modality.
    Kron { s: Tensor, m: Tensor },
}

/// The down-projection `x W_down^T + b_down` (w x d weight), with Cross Modality Tying when the
/// layer is tied. Only the weight is modulated, never the bias.
#[derive(Clone, Debug)]
pub struct Down {
    weight: DownWeight,
    /// (w,)
    bias: Tensor,
    /// W_down as a layer, kept for serving (see [`Derived`]).
    layer: Derived,
}

/// What a tied layer needs from the root `VarBuilder` (shared across both modalities).
#[derive(Clone, Copy, Debug)]
pub enum TieSpec {
    None,
    DownIn { factor_dim: usize },
    DownOut { factor_dim: usize },
    Kronecker { n: usize },
}

impl Down {
    /// `vb` is this adapter's builder (`vision.3`), `shared` the tied layer's (`cmt.3`).
    /// `w_init` is the modality's W_down init.
    pub fn new(
        vb: &VarBuilder,
        shared: &VarBuilder,
        d: usize,
        w: usize,
        tie: TieSpec,
        w_init: Init,
        init: AdapterInit,
    ) -> Result<Self> {
        let dv = vb.pp("down");
        let bias = dv.get_with_hints(w, "bias", Init::Const(0.0))?;
        let shared_init = match init {
            AdapterInit::Authors => Init::Const(0.0),
            AdapterInit::Random => randn(1.0),
        };
        let weight = match tie {
            TieSpec::None => DownWeight::Plain(dv.get_with_hints((w, d), "weight", w_init)?),
            TieSpec::DownIn { factor_dim } | TieSpec::DownOut { factor_dim } => {
                let on_input = matches!(tie, TieSpec::DownIn { .. });
                let n = if on_input { d } else { w };
                // PyTorch's default Linear init, which the authors keep for md_proj.
                let u = uniform(factor_dim);
                DownWeight::Scaled {
                    weight: dv.get_with_hints((w, d), "weight", w_init)?,
                    proj: linear(&vb.pp("cmt"), factor_dim, n, u, Some(u))?,
                    shared: shared.get_with_hints(factor_dim, "shared", shared_init)?,
                    on_input,
                }
            }
            TieSpec::Kronecker { n } => {
                let target = match w_init {
                    Init::Randn { stdev, .. } => stdev,
                    Init::Uniform { up, .. } => up / 3f64.sqrt(),
                    _ => (d as f64).powf(-0.5),
                };
                DownWeight::Kron {
                    s: shared.get_with_hints((n, n, n), "kron_s", randn((n as f64).powf(-0.5)))?,
                    m: dv.get_with_hints((n, w / n, d / n), "kron_m", randn(target))?,
                }
            }
        };
        Ok(Self {
            weight,
            bias,
            layer: Derived::default(),
        })
    }

    /// The CMT factor `beta` (n,), for tied down-in/down-out layers.
    pub fn factor(&self) -> Result<Option<Tensor>> {
        match &self.weight {
            DownWeight::Scaled { proj, shared, .. } => {
                Ok(Some(proj.forward(&shared.unsqueeze(0)?)?.squeeze(0)?))
            }
            _ => Ok(None),
        }
    }

    /// The effective W_down, (w, d).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            DownWeight::Plain(w) => Ok(w.clone()),
            DownWeight::Scaled {
                weight, on_input, ..
            } => {
                let beta = self.factor()?.expect("scaled weight has a factor");
                if *on_input {
                    weight.broadcast_mul(&beta.unsqueeze(0)?)
                } else {
                    weight.broadcast_mul(&beta.unsqueeze(1)?)
                }
            }
            DownWeight::Kron { s, m } => {
                let (n, p, q) = m.dims3()?;
                // sum_i S[i,a,c] M[i,b,d] -> W[(a,b),(c,d)]
                let sm = s
                    .reshape((n, n * n))?
                    .t()?
                    .matmul(&m.reshape((n, p * q))?)?;
                sm.reshape((n, n, p, q))?
                    .permute((0, 2, 1, 3))?
                    .reshape((n * p, n * q))
            }
        }
    }

    /// x W_down^T (no bias): (.., d) -> (.., w).
    fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        let make = || Ok(Linear::new(self.weight()?, None));
        self.layer.apply(make, |l| l.forward_no_bias(x))
    }
}

/// Temporal calibration (the authors' TaModuleV1):
/// `alpha = FC2(ReLU(FC1(mask * [x, G(cc)]))) + 1`.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// Linear(w, w)
    g: Linear,
    /// Linear(2w, calib_dim)
    a: Linear,
    /// Linear(calib_dim, w), no bias, zero init (alpha == 1 at init).
    b: Linear,
}

impl Calibration {
    pub fn new(vb: VarBuilder, w: usize, mid: usize, init: AdapterInit) -> Result<Self> {
        let b_init = match init {
            AdapterInit::Authors => Init::Const(0.0),
            AdapterInit::Random => uniform(mid),
        };
        Ok(Self {
            g: linear(&vb.pp("g"), w, w, uniform(w), Some(uniform(w)))?,
            a: linear(
                &vb.pp("a"),
                2 * w,
                mid,
                uniform(2 * w),
                Some(uniform(2 * w)),
            )?,
            b: linear(&vb.pp("b"), mid, w, b_init, None)?,
        })
    }

    /// cc: (B, 1, w); x = cls_t + pm_t: (B, F, w); mask: (B, F). Returns alpha (B, F, w).
    pub fn forward(&self, cc: &Tensor, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let gc = self.g.forward(cc)?.broadcast_as(x.shape())?;
        let u = Tensor::cat(&[x, &gc], D::Minus1)?.broadcast_mul(&mask.unsqueeze(2)?)?;
        self.b.forward(&self.a.forward(&u)?.relu()?)? + 1.0
    }
}

/// The text adapter of one block (spec section 3).
#[derive(Clone, Debug)]
pub struct TextAdapter {
    down: Down,
    /// (L, w)
    pos: Tensor,
    ln_pre: LayerNorm,
    trm: Trm,
    up: Linear,
    /// `scale * up`, kept for serving (see [`Derived`]).
    scaled_up: Derived,
    scale: f64,
    /// The per-block routine a served adapter runs for queries (see [`TextAdapter::prepack`]).
    served: Option<ServedText>,
}

impl TextAdapter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        shared: &VarBuilder,
        d: usize,
        w: usize,
        heads: usize,
        words: usize,
        scale: f64,
        tie: TieSpec,
        init: AdapterInit,
    ) -> Result<Self> {
        let w_init = randn((2.0 * d as f64).powf(-0.5));
        Ok(Self {
            down: Down::new(&vb, shared, d, w, tie, w_init, init)?,
            pos: vb.get_with_hints((words, w), "pos", randn(0.01))?,
            ln_pre: layer_norm(&vb.pp("ln_pre"), w)?,
            trm: Trm::new(vb.pp("trm"), w, heads, d)?,
            up: up_linear(&vb.pp("up"), w, d, init)?,
            scaled_up: Derived::default(),
            scale,
            served: None,
        })
    }

    pub fn down(&self) -> &Down {
        &self.down
    }

    /// Prepares a served adapter (plain f32 tensors on the CPU) for queries: every linear layer
    /// gets a copy of its weight packed once for short products, and the derived layers (the
    /// tied W_down, the scaled up-projection) are built now instead of at the first query.
    ///
    /// A query is a few dozen rows against 64-wide weights: with `gemm` a third of the adapter's
    /// time went into packing those weights again on every call (perf, BENCHMARKS.md "Adapter
    /// overhead (2026-12-02)"). Costs about the adapter's text weights again in memory: ~7 MiB
    /// of resident memory per task for the standard ViT-B/32 adapter, measured. A no-op for
    /// `Var`s (training changes them), other dtypes and other devices.
    pub fn prepack(&mut self) -> Result<()> {
        let b = &self.down.bias;
        if b.is_variable() || !b.device().is_cpu() || b.dtype() != DType::F32 {
            return Ok(());
        }
        let mut down = Linear::new(self.down.weight()?, None);
        down.prepack()?;
        let mut up = scaled_up_layer(&self.up, self.scale)?;
        up.prepack()?;
        self.trm.prepack()?;
        let trm = &self.trm;
        self.served = Some(ServedText::new(Parts {
            down: &down,
            down_bias: &self.down.bias,
            pos: &self.pos,
            ln_pre: &self.ln_pre,
            ln_1: &trm.ln_1,
            in_proj: &trm.in_proj,
            out_proj: &trm.out_proj,
            ln_2: &trm.ln_2,
            fc1: &trm.fc1,
            fc2: &trm.fc2,
            up: &up,
            heads: trm.heads,
        })?);
        self.down.layer.keep(down);
        self.scaled_up.keep(up);
        Ok(())
    }

    /// Whether [`Self::prepack`] gave the layers their packed copies and the served routine.
    pub fn is_prepacked(&self) -> bool {
        self.trm.fc1.has_packed() && self.served.is_some()
    }

    /// f: the MLP output (N, T, d), T at most the configured words. Returns `s * A(f)` (N, T, d).
    ///
    /// The authors pad every text to the words and add the whole positional table; every step
    /// here is per token or causal, so the first T positions' outputs do not depend on the
    /// padding after them, and texts cut after their longest EOT (`TextBatch`) give the same
    /// EOT features with less work.
    pub fn forward(&self, f: &Tensor) -> Result<Tensor> {
        if let Some(served) = &self.served {
            if let Some(a) = served.forward(f)? {
                return Ok(a);
            }
        }
        self.forward_tensors(f)
    }

    /// The served routine alone, through `level`'s SIMD copy: `None` when this adapter has no
    /// routine or it does not serve `f`. How the tests check each copy against the tensor path.
    pub fn forward_served_at(&self, level: Level, f: &Tensor) -> Result<Option<Tensor>> {
        match &self.served {
            Some(served) => served.forward_at(level, f),
            None => Ok(None),
        }
    }

    /// [`Self::forward`] as candle ops: training, a GPU, batches above the served routine's rows.
    pub fn forward_tensors(&self, f: &Tensor) -> Result<Tensor> {
        let (_, l, _) = f.dims3()?;
        let words = self.pos.dim(0)?;
        if l > words {
            candle_core::bail!(
                "the text adapter takes texts of at most {words} tokens (its positional table has \
                 {words} rows), got {l}"
            );
        }
        let z = self
            .down
            .forward_no_bias(f)?
            .broadcast_add(&self.down.bias)?
            .broadcast_add(&self.pos.narrow(0, 0, l)?)?;
        let z = self.ln_pre.forward(&z)?;
        let mask = causal_mask(l, z.dtype(), z.device())?;
        let z = quick_gelu(&self.trm.forward(&z, Some(&mask))?)?;
        scaled_up(&self.up, self.scale, &self.scaled_up, &z)
    }
}

/// The video adapter's cross-frame part (Temporal Adaptation, spec section 4 steps 2 to 6).
#[derive(Clone, Debug)]
struct CrossFrame {
    /// (2F+1, w)
    pos: Tensor,
    /// (w,)
    cc: Tensor,
    ln_pre: LayerNorm,
    trm: Trm,
    calib: Option<Calibration>,
}

/// The video adapter of one block, with Temporal Adaptation (spec section 4), or per-frame
/// down/up only when built without the cross-frame part.
#[derive(Clone, Debug)]
pub struct VideoAdapter {
    down: Down,
    cross: Option<CrossFrame>,
    up: Linear,
    /// `scale * up`, kept for serving (see [`Derived`]).
    scaled_up: Derived,
    scale: f64,
}

impl VideoAdapter {
    /// `cross_frame` false: no `cc`, positional table, `ln_pre`, TRM or calibration (then
    /// `calib_dim` must be None).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        shared: &VarBuilder,
        d: usize,
        w: usize,
        heads: usize,
        frames: usize,
        scale: f64,
        tie: TieSpec,
        cross_frame: bool,
        calib_dim: Option<usize>,
        init: AdapterInit,
    ) -> Result<Self> {
        if !cross_frame && calib_dim.is_some() {
            candle_core::bail!("the calibration needs the video adapter's cross-frame part");
        }
        // Built in the same order as always (down, pos, cc, ln_pre, trm, calib, up).
        let down = Down::new(&vb, shared, d, w, tie, uniform(d), init)?;
        let cross = if cross_frame {
            Some(CrossFrame {
                pos: vb.get_with_hints((2 * frames + 1, w), "pos", randn(0.01))?,
                cc: vb.get_with_hints(w, "cc", randn((w as f64).powf(-0.5)))?,
                ln_pre: layer_norm(&vb.pp("ln_pre"), w)?,
                trm: Trm::new(vb.pp("trm"), w, heads, d)?,
                calib: match calib_dim {
                    Some(mid) => Some(Calibration::new(vb.pp("calib"), w, mid, init)?),
                    None => None,
                },
            })
        } else {
            None
        };
        Ok(Self {
            down,
            cross,
            up: up_linear(&vb.pp("up"), w, d, init)?,
            scaled_up: Derived::default(),
            scale,
        })
    }

    pub fn down(&self) -> &Down {
        &self.down
    }

    /// f: the MLP output (B*F, 1+P, d), video-major; mask: (B, F), 1 for real frames, 0 for
    /// padding. Returns `s * A(f)` (B*F, 1+P, d).
    pub fn forward(&self, f: &Tensor, mask: &Tensor) -> Result<Tensor> {
        Ok(self.forward_traced(f, mask)?.0)
    }

    /// Like `forward`, also returning the calibration weights alpha (B, F, w) when enabled.
    pub fn forward_traced(&self, f: &Tensor, mask: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (n, t, d) = f.dims3()?;
        let (b, fr) = mask.dims2()?;
        let max_frames = match &self.cross {
            Some(c) => (c.pos.dim(0)? - 1) / 2,
            None => usize::MAX,
        };
        if n != b * fr || fr > max_frames || t < 2 {
            candle_core::bail!(
                "the video adapter got {n} images of {t} tokens for a frame mask of {b} x {fr} \
                 (at most {max_frames} frames per video)"
            );
        }
        // 1. Down with QuickGELU on every token.
        let g = bias_quick_gelu(&self.down.forward_no_bias(f)?, &self.down.bias)?; // (N, T, w)
        let Some(cross) = &self.cross else {
            // Per-frame down/up only: every token, CLS included, through the plain bottleneck.
            return Ok((scaled_up(&self.up, self.scale, &self.scaled_up, &g)?, None));
        };
        let w = cross.cc.dim(0)?;
        let mask = mask.to_dtype(f.dtype())?;
        let cls_d = g.narrow(1, 0, 1)?.reshape((b, fr, w))?;
        let patch_d = g.narrow(1, 1, t - 1)?; // (N, P, w)
                                              // 2. Mean of the patches per frame.
        let pm = patch_d.mean(1)?.reshape((b, fr, w))?;
        // 3. [cc; cls_1..F; pm_1..F] + pos, LN.
        let cc = cross.cc.reshape((1, 1, w))?.broadcast_as((b, 1, w))?;
        let seq = Tensor::cat(&[&cc, &cls_d, &pm], 1)?; // (B, 2F+1, w)
        let seq = seq.broadcast_add(&cross.pos.narrow(0, 0, 2 * fr + 1)?)?;
        let seq = cross.ln_pre.forward(&seq)?;
        // 4. TRM: padded frames are masked as keys (-1e6, as the authors), cc always visible.
        let keys = Tensor::cat(
            &[&Tensor::ones((b, 1), f.dtype(), f.device())?, &mask, &mask],
            1,
        )?;
        let key_mask = ((keys - 1.0)? * 1e6)?.reshape((b, 1, 1, 2 * fr + 1))?;
        let seq = quick_gelu(&cross.trm.forward(&seq, Some(&key_mask))?)?;
        let cc_t = seq.narrow(1, 0, 1)?;
        let cls_t = seq.narrow(1, 1, fr)?;
        let pm_t = seq.narrow(1, 1 + fr, fr)?;
        // 5-6. Calibrated CLS up-projection.
        let (cls_in, alpha) = match &cross.calib {
            Some(c) => {
                let alpha = c.forward(&cc_t, &(&cls_t + &pm_t)?, &mask)?;
                ((&alpha * &cls_t)?, Some(alpha))
            }
            None => (cls_t, None),
        };
        // 7. Patches: plain bottleneck on the pre-temporal down features. Both go up in one
        // product, with the scale folded into W_up and b_up (no extra pass over (N, T, d)).
        let z = Tensor::cat(&[&cls_in.reshape((n, 1, w))?, &patch_d], 1)?; // (N, T, w)
        let out = scaled_up(&self.up, self.scale, &self.scaled_up, &z)?;
        debug_assert_eq!(out.dims(), &[n, t, d]);
        Ok((out, alpha))
    }

    pub fn dtype(&self) -> DType {
        self.down.bias.dtype()
    }
}
