//! CLIP's vision tower: patch embedding, pre-LN, encoder, post-LN on CLS, visual projection.

use super::encoder::{load_layer_norm, BlockHook, Encoder, EncoderDims};
use super::ops::{LayerNorm, Linear};
use super::weights::Weights;
use super::{LoadResult, VisionConfig};
use candle_core::{Module, Result, Tensor};

/// What one forward pass of a tower returns.
pub struct TowerOutput {
    /// The projected embedding, not normalised: (N, projection_dim).
    pub embeds: Tensor,
    /// Pooled feature before the projection (post-LN CLS or EOT): (N, D).
    pub pooled: Tensor,
    /// Last encoder output: vision without post-LN, text after the final LN (HF conventions).
    /// Only with `keep_hidden` or a hook: otherwise the last block runs for the pooled token only
    /// (see [`super::encoder::Encoder::forward_picked`]).
    pub last_hidden: Option<Tensor>,
    /// Embeddings then every block's output, when asked for.
    pub hidden_states: Vec<Tensor>,
}

impl TowerOutput {
    /// The output of a pass whose last block ran for the pooled rows only: no hidden states.
    pub(super) fn pooled_only(pooled: Tensor, projection: &Linear) -> Result<Self> {
        Ok(Self {
            embeds: projection.forward(&pooled)?,
            pooled,
            last_hidden: None,
            hidden_states: Vec::new(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct VisionTower {
    /// The patch convolution as a matrix: stride equals kernel, so it is one GEMM over patches.
    patch: Linear,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: LayerNorm,
    pub encoder: Encoder,
    post_ln: LayerNorm,
    projection: Linear,
    pub config: VisionConfig,
}

impl VisionTower {
    pub fn load(w: &mut Weights, c: &VisionConfig, projection_dim: usize) -> LoadResult<Self> {
        let d = c.hidden_size;
        let p = c.patch_size;
        let grid = c.image_size / p;
        let patch_w = w.take(
            "vision_model.embeddings.patch_embedding.weight",
            &[d, 3, p, p],
        )?;
        let dims = EncoderDims {
            width: d,
            inner: c.intermediate_size,
            heads: c.num_attention_heads,
            layers: c.num_hidden_layers,
            eps: c.layer_norm_eps,
            act: super::encoder::Activation::parse(&c.hidden_act)?,
        };
        Ok(Self {
            patch: Linear::frozen(patch_w.reshape((d, 3 * p * p))?, None)?,
            class_embedding: w.take("vision_model.embeddings.class_embedding", &[d])?,
            position_embedding: w.take(
                "vision_model.embeddings.position_embedding.weight",
                &[grid * grid + 1, d],
            )?,
            pre_ln: load_layer_norm(w, "vision_model.pre_layrnorm", d, c.layer_norm_eps)?,
            encoder: Encoder::load(w, "vision_model.encoder", &dims)?,
            post_ln: load_layer_norm(w, "vision_model.post_layernorm", d, c.layer_norm_eps)?,
            projection: Linear::frozen(
                w.take("visual_projection.weight", &[projection_dim, d])?,
                None,
            )?,
            config: c.clone(),
        })
    }

    pub fn dtype(&self) -> candle_core::DType {
        self.class_embedding.dtype()
    }

    /// Token embeddings of a batch of images: (N, 3, S, S) -> (N, 1 + P, D), before pre-LN.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = pixels.dims4()?;
        let s = self.config.image_size;
        if c != 3 || h != s || w != s {
            candle_core::bail!(
                "vision input must be (N, 3, {s}, {s}), got {:?}",
                pixels.dims()
            );
        }
        let p = self.config.patch_size;
        let g = s / p;
        let d = self.config.hidden_size;
        // (N, 3, g, p, g, p) -> (N, g, g, 3, p, p): each row is one patch in the conv weight's order.
        let patches = pixels
            .reshape((n, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n, g * g, 3 * p * p))?;
        let tokens = self.patch.forward(&patches)?; // (N, P, D)
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((n, 1, d))?;
        Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.position_embedding)
    }

    /// pixels: (N, 3, S, S) preprocessed images. `keep_hidden` also returns every block's output
    /// and the whole last one (parity checks); an embedding pass leaves it off.
    pub fn forward(
        &self,
        pixels: &Tensor,
        hook: Option<&dyn BlockHook>,
        keep_hidden: bool,
    ) -> Result<TowerOutput> {
        super::on_pool(|| self.forward_here(pixels, hook, keep_hidden))
    }

    /// [`Self::forward`] on the calling thread.
    fn forward_here(
        &self,
        pixels: &Tensor,
        hook: Option<&dyn BlockHook>,
        keep_hidden: bool,
    ) -> Result<TowerOutput> {
        let x = self.pre_ln.forward(&self.embed(pixels)?)?;
        if hook.is_none() && !keep_hidden {
            let cls = self.encoder.forward_picked(&x, None, &vec![0; x.dim(0)?])?;
            return TowerOutput::pooled_only(self.post_ln.forward(&cls)?, &self.projection);
        }
        let mut hidden = keep_hidden.then(|| vec![x.clone()]);
        let last_hidden = self.encoder.forward(&x, None, hook, hidden.as_mut())?;
        let pooled = self
            .post_ln
            .forward(&last_hidden.narrow(1, 0, 1)?.squeeze(1)?)?;
        let embeds = self.projection.forward(&pooled)?;
        Ok(TowerOutput {
            embeds,
            pooled,
            last_hidden: Some(last_hidden),
            hidden_states: hidden.unwrap_or_default(),
        })
    }
}
