//! The resume state kept beside each checkpoint (`<checkpoint>.train-state`): the optimiser's
//! moments and step, the epochs done, the run's settings and the digests of the data, backbone
//! and checkpoint it belongs with. The order of pairs needs no saved generator: each epoch's
//! order is drawn from a generator seeded by (seed, epoch).
//!
//! Format: safetensors; tensors `m.<param>` and `v.<param>` (F32); metadata `format`
//! (`mvserve-train-state/1`) and `state` (this struct as JSON). Written to a temporary name and
//! renamed, after the checkpoint; a state whose `adapter_digest` is not the checkpoint's (a crash
//! between the two renames) is refused on resume.

use super::trainer::EpochStats;
use super::{TrainConfig, TrainError};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const STATE_FORMAT: &str = "mvserve-train-state/1";

/// What a resumed run must know besides the checkpoint's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub task: String,
    pub config: TrainConfig,
    pub epochs_done: usize,
    /// Optimiser updates applied.
    pub step: u64,
    /// blake3 over the pairs (each video's frame-cache key and the caption), in order.
    pub data_digest: String,
    pub backbone_digest: String,
    /// Digest of the checkpoint written with this state.
    pub adapter_digest: String,
    pub history: Vec<EpochStats>,
}

/// `<checkpoint>.train-state` (beside the checkpoint; not a `.safetensors` name, so a watched
/// adapter folder does not take it for an adapter).
pub fn state_path(checkpoint: &Path) -> PathBuf {
    let mut s = checkpoint.as_os_str().to_os_string();
    s.push(".train-state");
    PathBuf::from(s)
}

impl TrainState {
    pub fn write(&self, path: &Path, moments: &[(String, Tensor)]) -> Result<(), TrainError> {
        let io = |e| TrainError::Io(path.to_path_buf(), e);
        let md = HashMap::from([
            ("format".to_string(), STATE_FORMAT.to_string()),
            (
                "state".to_string(),
                serde_json::to_string(self).expect("state serialises"),
            ),
        ]);
        let bytes = safetensors::serialize(moments.iter().map(|(k, t)| (k.as_str(), t)), Some(md))
            .map_err(|e| TrainError::Resume(format!("serialising the state: {e}")))?;
        let mut tmp = path.as_os_str().to_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The state and the moments by name (on the CPU).
    pub fn read(path: &Path) -> Result<(Self, HashMap<String, Tensor>), TrainError> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::Io(path.to_path_buf(), e))?;
        let bad = |m: String| TrainError::Resume(format!("{}: {m}", path.display()));
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a training state ({e})")))?;
        let md = meta.metadata().clone().unwrap_or_default();
        if md.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(bad(format!("not a {STATE_FORMAT} file")));
        }
        let state: TrainState = serde_json::from_str(md.get("state").map_or("", |s| s))
            .map_err(|e| bad(format!("state JSON: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        Ok((state, tensors))
    }
}
