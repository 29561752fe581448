//! CLIP's BPE tokenizer (through the `tokenizers` crate) and the layouts the towers and text
//! adapters take: one text as `[SOT] + tokens + [EOT]` truncated to L and padded with 0, and a
//! batch of texts cut after its longest EOT for an embedding pass.

use super::BackboneError;
use std::path::Path;

/// Default padded text length (MV-Adapter's `max_words` for sentence datasets).
pub const DEFAULT_TEXT_LEN: usize = 32;

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    sot: u32,
    eot: u32,
}

/// One tokenized text laid out for the text tower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextTokens {
    /// Exactly L ids, padded with 0 after EOT.
    pub ids: Vec<u32>,
    /// Index of the EOT token in `ids`.
    pub eot: usize,
}

impl ClipTokenizer {
    pub fn from_file(path: &Path) -> Result<Self, BackboneError> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| BackboneError::Tokenizer(format!("{}: {e}", path.display())))?;
        // Length handling is ours (truncate inside SOT/EOT, pad with 0), not the file's.
        inner
            .with_truncation(None)
            .map_err(|e| BackboneError::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                BackboneError::Tokenizer(format!("{} has no {t} token", path.display()))
            })
        };
        let (sot, eot) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
        Ok(Self { inner, sot, eot })
    }

    /// The BPE ids of `text` with SOT and EOT, neither truncated nor padded.
    pub fn encode_unpadded(&self, text: &str) -> Result<Vec<u32>, BackboneError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| BackboneError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        ids.push(self.sot);
        ids.extend_from_slice(enc.get_ids());
        ids.push(self.eot);
        Ok(ids)
    }

    /// `[SOT] + tokens[..len-2] + [EOT]`, padded with 0 to `len` (the authors' truncation).
    pub fn encode(&self, text: &str, len: usize) -> Result<TextTokens, BackboneError> {
        if len < 2 {
            return Err(BackboneError::Tokenizer(format!(
                "text length {len} leaves no room for SOT and EOT"
            )));
        }
        let mut ids = self.encode_unpadded(text)?;
        if ids.len() > len {
            ids.truncate(len - 1);
            ids.push(self.eot);
        }
        let eot = ids.len() - 1;
        ids.resize(len, 0);
        Ok(TextTokens { ids, eot })
    }
}

/// Texts laid out for one embedding pass: (N, T) ids, T the longest row's EOT + 1.
///
/// The authors pad every text to L positions. The text tower is causal (only the causal mask is
/// applied) and the text adapter is causal or per token, so an EOT feature never depends on the
/// positions after it: cutting the padding after the batch's longest EOT gives the same
/// embeddings and saves the work of the cut positions (a 10-token query costs a third of a
/// 32-token pass). Training and the parity fixtures keep the authors' full layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextBatch {
    /// Row-major (rows, len).
    ids: Vec<u32>,
    eot: Vec<u32>,
    rows: usize,
    len: usize,
}

impl TextBatch {
    pub fn new(texts: &[TextTokens]) -> Self {
        let len = texts.iter().map(|t| t.eot + 1).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(texts.len() * len);
        for t in texts {
            ids.extend_from_slice(&t.ids[..len]);
        }
        TextBatch {
            ids,
            eot: texts.iter().map(|t| t.eot as u32).collect(),
            rows: texts.len(),
            len,
        }
    }

    /// (N, T) u32 ids and (N,) u32 EOT positions.
    pub fn into_tensors(
        self,
        device: &candle_core::Device,
    ) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        Ok((
            candle_core::Tensor::from_vec(self.ids, (self.rows, self.len), device)?,
            candle_core::Tensor::from_vec(self.eot, self.rows, device)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_after_its_longest_eot() {
        let row = |n: usize, len: usize| {
            let mut ids: Vec<u32> = (1..=n as u32).collect();
            ids.resize(len, 0);
            TextTokens { ids, eot: n - 1 }
        };
        let b = TextBatch::new(&[row(3, 8), row(5, 8), row(2, 8)]);
        assert_eq!((b.rows, b.len), (3, 5));
        assert_eq!(b.ids, [1, 2, 3, 0, 0, 1, 2, 3, 4, 5, 1, 2, 0, 0, 0]);
        assert_eq!(b.eot, [2, 4, 1]);
        // A full row keeps every position.
        assert_eq!(TextBatch::new(&[row(8, 8), row(2, 8)]).len, 8);
        assert_eq!(TextBatch::new(&[]).rows, 0);
    }
}
