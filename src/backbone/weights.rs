//! Finding and reading backbone checkpoints, strictly.
//!
//! Owns where the files come from (a local `--model-dir`, the Hugging Face hub cache, or the hub
//! itself through `hf-hub`), reading `model.safetensors`, and the weight digest adapters are tied
//! to. Every tensor is taken by name and shape exactly once: a missing, misshapen or left-over
//! tensor is an error, never a silently random value.

use super::BackboneError;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The Hugging Face model used when nothing else is configured.
pub const DEFAULT_MODEL_ID: &str = "openai/clip-vit-base-patch32";

/// Tensors some exported checkpoints carry that are not weights (buffers of older transformers).
const IGNORED_SUFFIXES: &[&str] = &["position_ids"];

/// The three files a backbone is made of.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// Hub id, or the directory name for a local model.
    pub name: String,
    pub config: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
}

/// Where the backbone comes from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    /// A directory with `config.json`, `model.safetensors` and `tokenizer.json`.
    Dir(PathBuf),
    /// A Hugging Face hub id: looked up in the local hub cache first, then downloaded.
    Hub(String),
}

const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

impl ModelSource {
    pub fn resolve(&self) -> Result<ModelFiles, BackboneError> {
        match self {
            ModelSource::Dir(dir) => {
                for f in FILES {
                    if !dir.join(f).is_file() {
                        return Err(BackboneError::NotFound(format!(
                            "{} has no {f}; a model directory needs {} (a Hugging Face CLIP \
                             checkout in safetensors format)",
                            dir.display(),
                            FILES.join(", ")
                        )));
                    }
                }
                Ok(ModelFiles {
                    name: dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| dir.display().to_string()),
                    config: dir.join(FILES[0]),
                    weights: dir.join(FILES[1]),
                    tokenizer: dir.join(FILES[2]),
                })
            }
            ModelSource::Hub(id) => resolve_hub(id),
        }
    }
}

fn resolve_hub(id: &str) -> Result<ModelFiles, BackboneError> {
    let cache = hf_hub::Cache::from_env();
    let repo = cache.model(id.to_string());
    let cached: Vec<Option<PathBuf>> = FILES.iter().map(|f| repo.get(f)).collect();
    let paths = if cached.iter().all(Option::is_some) {
        cached.into_iter().flatten().collect::<Vec<_>>()
    } else {
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
        let hint = format!(
            "model {id:?} is not in the Hugging Face cache ({}); pass --model-dir DIR with {} \
             (e.g. a `git clone https://huggingface.co/{id}`), or allow downloads",
            cache.path().display(),
            FILES.join(", ")
        );
        if offline {
            return Err(BackboneError::NotFound(format!(
                "{hint} (HF_HUB_OFFLINE is set)"
            )));
        }
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .build()
            .map_err(|e| BackboneError::NotFound(format!("{hint}: {e}")))?;
        let model = api.model(id.to_string());
        FILES
            .iter()
            .map(|f| {
                model
                    .get(f)
                    .map_err(|e| BackboneError::NotFound(format!("{hint}: downloading {f}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(ModelFiles {
        name: id.to_string(),
        config: paths[0].clone(),
        weights: paths[1].clone(),
        tokenizer: paths[2].clone(),
    })
}

/// Named tensors on their way into the model, each taken exactly once.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    digest: String,
}

impl Weights {
    /// Reads a safetensors file, converting floating-point tensors to `dtype` on `device`.
    pub fn from_safetensors(
        path: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, BackboneError> {
        // Mapped, not read into a buffer: the file's pages are dropped when the map is, whereas a
        // freed 600 MB heap buffer can stay resident (the allocator of the idle loading thread
        // returns it late), doubling the server's memory at rest.
        let file =
            std::fs::File::open(path).map_err(|e| BackboneError::Io(path.to_path_buf(), e))?;
        // SAFETY: the map is read during this call only. Another process truncating the file
        // meanwhile could fault the read; checkpoints are not rewritten in place while loading.
        let bytes = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| BackboneError::Io(path.to_path_buf(), e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            BackboneError::BadWeights(format!(
                "{} is not a valid safetensors file: {e}",
                path.display()
            ))
        })?;
        let mut hasher = blake3::Hasher::new();
        let mut tensors = HashMap::new();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        for name in names {
            let view = st
                .tensor(&name)
                .map_err(|e| BackboneError::BadWeights(format!("{name}: {e}")))?;
            let src = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::I64 if IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)) => {
                    continue
                }
                other => {
                    return Err(BackboneError::BadWeights(format!(
                        "{name} has dtype {other:?}; expected f32, f16 or bf16"
                    )))
                }
            };
            hash_tensor(&mut hasher, &name, view.shape(), view.data());
            let t =
                Tensor::from_raw_buffer(view.data(), src, view.shape(), device)?.to_dtype(dtype)?;
            tensors.insert(name, t);
        }
        Ok(Self {
            tensors,
            dtype,
            digest: hasher.finalize().to_hex().to_string(),
        })
    }

    /// Wraps tensors made in code (random benchmark weights); they are digested like a file.
    pub fn from_tensors(
        tensors: BTreeMap<String, Tensor>,
        dtype: DType,
    ) -> Result<Self, BackboneError> {
        let mut hasher = blake3::Hasher::new();
        let mut map = HashMap::new();
        for (name, t) in tensors {
            let bytes: Vec<u8> = t
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            hash_tensor(&mut hasher, &name, t.dims(), &bytes);
            map.insert(name, t.to_dtype(dtype)?);
        }
        Ok(Self {
            tensors: map,
            dtype,
            digest: hasher.finalize().to_hex().to_string(),
        })
    }

    /// blake3 over every tensor's name, shape and bytes in name order: the identity adapters check.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Removes and returns the tensor `name`, which must have exactly `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, BackboneError> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| BackboneError::MissingWeight(name.to_string()))?;
        if t.dims() != shape {
            return Err(BackboneError::WeightShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    /// Fails if any tensor was never taken: a checkpoint of another architecture must not load.
    pub fn finish(self) -> Result<(), BackboneError> {
        let mut left: Vec<String> = self
            .tensors
            .into_keys()
            .filter(|n| !IGNORED_SUFFIXES.iter().any(|s| n.ends_with(s)))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        left.sort();
        Err(BackboneError::UnexpectedWeights(left))
    }
}

fn hash_tensor(hasher: &mut blake3::Hasher, name: &str, shape: &[usize], bytes: &[u8]) {
    hasher.update(name.as_bytes());
    hasher.update(&[0]);
    for d in shape {
        hasher.update(&(*d as u64).to_le_bytes());
    }
    hasher.update(bytes);
}
