//! The transformer encoder shared by both CLIP towers, with the adapter hook.
//!
//! A block is pre-LN: `h = x + Attn(LN1(x))`, `f = MLP(LN2(h))`, `out = h + f + hook(f)`. The hook is
//! where MV-Adapter sits (spec section 2): it reads the MLP branch output `f`, not the residual
//! stream, and its result is a third summand. With no hook the block is exactly CLIP's.

use super::ops::{add3, self_attention, softmax_last_dim, split_qkv_heads, LayerNorm, Linear};
use super::weights::Weights;
use super::{BackboneError, LoadResult};
use candle_core::{Module, Result, Tensor};

/// What the backbone asks of an adapter. Implemented by the `adapter` module (one task or a batch
/// that mixes tasks); the backbone knows nothing else about adapters. `Sync` because a tower runs
/// on a thread of rayon's pool, not the caller's (see [`super::on_pool`]).
pub trait BlockHook: Sync {
    /// Given the MLP branch output `f` of block `layer`, (N, T, D) for N samples of T tokens,
    /// returns the term to add to the block output (already scaled), or `None` for plain CLIP.
    fn after_mlp(&self, layer: usize, f: &Tensor) -> Result<Option<Tensor>>;
}

/// Activation of the MLP (OpenAI CLIP uses QuickGELU; some re-trained checkpoints use GELU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    pub fn parse(name: &str) -> LoadResult<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => Err(BackboneError::Config(format!(
                "unsupported hidden_act {other:?} (expected quick_gelu or gelu)"
            ))),
        }
    }
}

/// Multi-head self-attention with one fused QKV projection.
#[derive(Clone, Debug)]
pub struct Attention {
    /// (3D, D): rows are q (pre-scaled by 1/sqrt(head_dim)), k, v.
    qkv: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn load(w: &mut Weights, prefix: &str, dim: usize, heads: usize) -> LoadResult<Self> {
        let head_dim = dim / heads;
        let scale = (head_dim as f64).powf(-0.5);
        let p = |n: &str| format!("{prefix}.self_attn.{n}");
        // Folding the softmax scale into q's weights saves a pass over the scores every layer.
        let qw = (w.take(&p("q_proj.weight"), &[dim, dim])? * scale)?;
        let qb = (w.take(&p("q_proj.bias"), &[dim])? * scale)?;
        let kw = w.take(&p("k_proj.weight"), &[dim, dim])?;
        let kb = w.take(&p("k_proj.bias"), &[dim])?;
        let vw = w.take(&p("v_proj.weight"), &[dim, dim])?;
        let vb = w.take(&p("v_proj.bias"), &[dim])?;
        let qkv = Linear::frozen(
            Tensor::cat(&[qw, kw, vw], 0)?,
            Some(Tensor::cat(&[qb, kb, vb], 0)?),
        )?;
        let out = Linear::frozen(
            w.take(&p("out_proj.weight"), &[dim, dim])?,
            Some(w.take(&p("out_proj.bias"), &[dim])?),
        )?;
        Ok(Self { qkv, out, heads })
    }

    /// x: (N, T, D); mask: (T, T) additive, or None. Returns (N, T, D) before the output bias,
    /// which the caller adds together with the residual.
    fn forward_no_out_bias(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let raw = self.qkv.forward_no_bias(x)?;
        // q's weights already carry the softmax scale (folded at load).
        let ctx = self_attention(&raw, bias(&self.qkv), self.heads, 1.0, mask)?;
        self.out.forward_no_bias(&ctx)
    }
}

/// The position-wise MLP: fc1, activation, fc2.
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn load(
        w: &mut Weights,
        prefix: &str,
        dim: usize,
        inner: usize,
        act: Activation,
    ) -> LoadResult<Self> {
        let p = |n: &str| format!("{prefix}.mlp.{n}");
        Ok(Self {
            fc1: Linear::frozen(
                w.take(&p("fc1.weight"), &[inner, dim])?,
                Some(w.take(&p("fc1.bias"), &[inner])?),
            )?,
            fc2: Linear::frozen(
                w.take(&p("fc2.weight"), &[dim, inner])?,
                Some(w.take(&p("fc2.bias"), &[dim])?),
            )?,
            act,
        })
    }

    /// x: (N, T, D) -> (N, T, D) before fc2's bias, which the caller folds into a sum.
    fn forward_no_out_bias(&self, x: &Tensor) -> Result<Tensor> {
        let h = match self.act {
            Activation::QuickGelu => self.fc1.forward_bias_quick_gelu(x)?,
            Activation::Gelu => self.fc1.forward(x)?.gelu_erf()?,
        };
        self.fc2.forward_no_bias(&h)
    }
}

/// One pre-LN encoder block.
#[derive(Clone, Debug)]
pub struct Block {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    mlp: Mlp,
}

/// Dimensions of one tower's encoder.
#[derive(Clone, Copy, Debug)]
pub struct EncoderDims {
    pub width: usize,
    pub inner: usize,
    pub heads: usize,
    pub layers: usize,
    pub eps: f64,
    pub act: Activation,
}

impl Block {
    fn load(w: &mut Weights, prefix: &str, d: &EncoderDims) -> LoadResult<Self> {
        Ok(Self {
            ln1: load_layer_norm(w, &format!("{prefix}.layer_norm1"), d.width, d.eps)?,
            attn: Attention::load(w, prefix, d.width, d.heads)?,
            ln2: load_layer_norm(w, &format!("{prefix}.layer_norm2"), d.width, d.eps)?,
            mlp: Mlp::load(w, prefix, d.width, d.inner, d.act)?,
        })
    }

    /// x: (N, T, D) -> (N, T, D).
    pub fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        mask: Option<&Tensor>,
        hook: Option<&dyn BlockHook>,
    ) -> Result<Tensor> {
        let attn = self.attn.forward_no_out_bias(&self.ln1.forward(x)?, mask)?;
        let h = add3(&attn, bias(&self.attn.out), x)?;
        let y = self.mlp.forward_no_out_bias(&self.ln2.forward(&h)?)?;
        let fc2_bias = bias(&self.mlp.fc2);
        match hook {
            None => add3(&y, fc2_bias, &h),
            Some(hook) => {
                let f = y.broadcast_add(fc2_bias)?;
                match hook.after_mlp(layer, &f)? {
                    Some(a) => add3(&h, &f, &a),
                    None => h + f,
                }
            }
        }
    }

    /// The block for one token per sample, row `pick[n]` of sample n: (N, T, D) -> (N, D). Every
    /// token still serves as a key and a value, but only the picked rows go on through attention's
    /// queries, the output projection and the MLP: exact, since nothing else reads the other rows
    /// of a tower's last block (without a hook). `mask` is the (T, T) additive mask of
    /// [`Block::forward`]; the picked row of it applies.
    fn forward_picked(&self, x: &Tensor, mask: Option<&Tensor>, pick: &[u32]) -> Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        if pick.len() != n || pick.iter().any(|&p| p as usize >= t) {
            candle_core::bail!("picked rows {pick:?} do not fit ({n}, {t}) tokens");
        }
        let heads = self.attn.heads;
        let hd = d / heads;
        let dev = x.device();
        let raw = self.attn.qkv.forward_no_bias(&self.ln1.forward(x)?)?;
        let qkv = split_qkv_heads(&raw, bias(&self.attn.qkv), heads)?; // (3, N, H, T, hd)
        let (k, v) = (qkv.get(1)?, qkv.get(2)?);
        // Row (sample, head, pick[sample]) of q, flattened to (N*H*T, hd).
        let q_rows: Vec<u32> = (0..n)
            .flat_map(|s| (0..heads).map(move |h| ((s * heads + h) * t) as u32 + pick[s]))
            .collect();
        let q = qkv
            .get(0)?
            .reshape((n * heads * t, hd))?
            .index_select(&Tensor::new(q_rows.as_slice(), dev)?, 0)?
            .reshape((n, heads, 1, hd))?;
        // q's weights carry the softmax scale (folded at load), as in `Attention`.
        let scores = q.matmul(&k.t()?)?; // (N, H, 1, T)
        let scores = match mask {
            Some(m) => {
                let rows = m
                    .index_select(&Tensor::new(pick, dev)?, 0)?
                    .reshape((n, 1, 1, t))?;
                scores.broadcast_add(&rows)?
            }
            None => scores,
        };
        // (N, H, 1, hd) is laid out as (N, 1, H*hd): the heads merge by a reshape.
        let ctx = softmax_last_dim(&scores)?
            .matmul(&v)?
            .contiguous()?
            .reshape((n, 1, d))?;
        let x_rows: Vec<u32> = (0..n).map(|s| (s * t) as u32 + pick[s]).collect();
        let x = x
            .reshape((n * t, d))?
            .index_select(&Tensor::new(x_rows.as_slice(), dev)?, 0)?
            .reshape((n, 1, d))?;
        let attn = self.attn.out.forward_no_bias(&ctx)?;
        let h = add3(&attn, bias(&self.attn.out), &x)?;
        let y = self.mlp.forward_no_out_bias(&self.ln2.forward(&h)?)?;
        add3(&y, bias(&self.mlp.fc2), &h)?.squeeze(1)
    }
}

fn bias(l: &Linear) -> &Tensor {
    l.bias
        .as_ref()
        .expect("CLIP's attention and MLP projections have biases")
}

/// The stack of blocks of one tower.
#[derive(Clone, Debug)]
pub struct Encoder {
    pub blocks: Vec<Block>,
}

impl Encoder {
    /// Gives every block's four linear layers (QKV, attention output, fc1, fc2) their int8 copy
    /// (`--precision int8`); attention itself, the layer norms and the hook stay in f32.
    pub fn quantize_int8(&mut self) -> Result<()> {
        self.linears().try_for_each(Linear::quantize_int8)
    }

    /// Whether the blocks' linear layers have their int8 copies.
    pub fn is_int8(&self) -> bool {
        self.blocks.first().is_some_and(|b| b.attn.qkv.has_int8())
    }

    /// Drops the int8 copies: every product in f32 again.
    pub fn drop_int8(&mut self) {
        self.linears().for_each(Linear::drop_int8)
    }

    /// Gives every block's four linear layers their copy packed for short f32 products (see
    /// `super::packed`): what a text query's pass runs through.
    pub fn prepack(&mut self) -> Result<()> {
        self.linears().try_for_each(Linear::prepack)
    }

    /// Whether the blocks' linear layers have their packed copies.
    pub fn is_prepacked(&self) -> bool {
        self.blocks.first().is_some_and(|b| b.attn.qkv.has_packed())
    }

    /// Drops the packed copies.
    pub fn drop_packed(&mut self) {
        self.linears().for_each(Linear::drop_packed)
    }

    fn linears(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.blocks.iter_mut().flat_map(|b| {
            [
                &mut b.attn.qkv,
                &mut b.attn.out,
                &mut b.mlp.fc1,
                &mut b.mlp.fc2,
            ]
        })
    }

    /// Runs every block with no hook, the last one only for row `pick[n]` of each sample n (the
    /// CLS or EOT token a tower pools): (N, T, D) -> (N, D). The last block's queries, output
    /// projection and MLP for the other rows are about 6% of an image's FLOPs that nothing reads.
    /// With a hook every row of the last block matters (the adapters mix tokens), so hooked passes
    /// take [`Self::forward`].
    pub fn forward_picked(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        pick: &[u32],
    ) -> Result<Tensor> {
        let Some((last, rest)) = self.blocks.split_last() else {
            candle_core::bail!("an encoder without blocks");
        };
        let mut x = x.clone();
        for (i, block) in rest.iter().enumerate() {
            x = block.forward(i, &x, mask, None)?;
        }
        last.forward_picked(&x, mask, pick)
    }

    pub fn load(w: &mut Weights, prefix: &str, d: &EncoderDims) -> LoadResult<Self> {
        let blocks = (0..d.layers)
            .map(|i| Block::load(w, &format!("{prefix}.layers.{i}"), d))
            .collect::<LoadResult<_>>()?;
        Ok(Self { blocks })
    }

    /// Runs every block; when `hidden` is given, pushes the output of each block into it.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        hook: Option<&dyn BlockHook>,
        mut hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(i, &x, mask, hook)?;
            if let Some(h) = hidden.as_deref_mut() {
                h.push(x.clone());
            }
        }
        Ok(x)
    }
}

pub fn load_layer_norm(
    w: &mut Weights,
    prefix: &str,
    dim: usize,
    eps: f64,
) -> LoadResult<LayerNorm> {
    Ok(LayerNorm {
        weight: w.take(&format!("{prefix}.weight"), &[dim])?,
        bias: w.take(&format!("{prefix}.bias"), &[dim])?,
        eps,
    })
}
