//! CLIP's BPE tokenizer (through the `tokenizers` crate) and the fixed-length layout the towers
//! and text adapters expect: `[SOT] + tokens + [EOT]`, truncated to L and padded with 0.

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
