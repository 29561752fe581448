//! CLIP's text tower: token + position embeddings, causal encoder, final LN, feature at EOT,
//! text projection.

use super::encoder::{load_layer_norm, Activation, BlockHook, Encoder, EncoderDims};
use super::ops::{LayerNorm, Linear};
use super::vision::TowerOutput;
use super::weights::Weights;
use super::{LoadResult, TextConfig};
use candle_core::{DType, Device, Module, Result, Tensor};

#[derive(Clone, Debug)]
pub struct TextTower {
    token_embedding: Tensor,
    position_embedding: Tensor,
    pub encoder: Encoder,
    final_ln: LayerNorm,
    projection: Linear,
    pub config: TextConfig,
}

impl TextTower {
    pub fn load(w: &mut Weights, c: &TextConfig, projection_dim: usize) -> LoadResult<Self> {
        let d = c.hidden_size;
        let dims = EncoderDims {
            width: d,
            inner: c.intermediate_size,
            heads: c.num_attention_heads,
            layers: c.num_hidden_layers,
            eps: c.layer_norm_eps,
            act: Activation::parse(&c.hidden_act)?,
        };
        Ok(Self {
            token_embedding: w.take(
                "text_model.embeddings.token_embedding.weight",
                &[c.vocab_size, d],
            )?,
            position_embedding: w.take(
                "text_model.embeddings.position_embedding.weight",
                &[c.max_position_embeddings, d],
            )?,
            encoder: Encoder::load(w, "text_model.encoder", &dims)?,
            final_ln: load_layer_norm(w, "text_model.final_layer_norm", d, c.layer_norm_eps)?,
            projection: Linear::frozen(
                w.take("text_projection.weight", &[projection_dim, d])?,
                None,
            )?,
            config: c.clone(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }

    /// ids: (N, L) u32 token ids; eot: (N,) u32 position of each row's EOT token.
    ///
    /// `keep_hidden` also returns every block's output and the whole last one (parity checks); an
    /// embedding pass leaves it off.
    ///
    /// Only the causal mask is applied (OpenAI / MV-Adapter convention): rows up to EOT do not see
    /// padding, so the pooled feature is the same as with a padding mask.
    pub fn forward(
        &self,
        ids: &Tensor,
        eot: &Tensor,
        hook: Option<&dyn BlockHook>,
        keep_hidden: bool,
    ) -> Result<TowerOutput> {
        super::on_pool(|| self.forward_here(ids, eot, hook, keep_hidden))
    }

    /// [`Self::forward`] on the calling thread.
    fn forward_here(
        &self,
        ids: &Tensor,
        eot: &Tensor,
        hook: Option<&dyn BlockHook>,
        keep_hidden: bool,
    ) -> Result<TowerOutput> {
        let (n, l) = ids.dims2()?;
        if l > self.config.max_position_embeddings {
            candle_core::bail!(
                "text of {l} tokens exceeds the model's {} positions",
                self.config.max_position_embeddings
            );
        }
        let d = self.config.hidden_size;
        let tok = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((n, l, d))?;
        let x = tok.broadcast_add(&self.position_embedding.narrow(0, 0, l)?)?;
        let mask = causal_mask(l, x.dtype(), x.device())?;
        if hook.is_none() && !keep_hidden {
            let eot_rows: Vec<u32> = eot.to_dtype(DType::U32)?.to_vec1()?;
            let h = self.encoder.forward_picked(&x, Some(&mask), &eot_rows)?;
            return TowerOutput::pooled_only(self.final_ln.forward(&h)?, &self.projection);
        }
        let mut hidden = keep_hidden.then(|| vec![x.clone()]);
        let h = self
            .encoder
            .forward(&x, Some(&mask), hook, hidden.as_mut())?;
        let last_hidden = self.final_ln.forward(&h)?;
        let rows = (Tensor::arange(0u32, n as u32, ids.device())? * l as f64)?
            .add(&eot.to_dtype(DType::U32)?)?;
        let pooled = last_hidden.reshape((n * l, d))?.index_select(&rows, 0)?;
        let embeds = self.projection.forward(&pooled)?;
        Ok(TowerOutput {
            embeds,
            pooled,
            last_hidden: Some(last_hidden),
            hidden_states: hidden.unwrap_or_default(),
        })
    }
}

/// (L, L) additive mask: 0 on and below the diagonal, -inf above.
pub fn causal_mask(l: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(v, (l, l), device)?.to_dtype(dtype)
}
