//! The adapter file: safetensors with our metadata, read and validated before anything is used,
//! written deterministically, and its digest (the provenance of every vector it produces).
//!
//! Layout: 8-byte little-endian header length, a JSON header (`__metadata__` plus one entry per
//! tensor), then the tensor bytes. Metadata: `format` ("mvserve-adapter/1"), `task`, `backbone`,
//! `backbone_digest`, `config` (JSON), optional `metrics` (JSON) and `backbone_params`. Tensors are F32, sorted by name.
//! Reading looks at the header first (size limit, names, shapes, dtypes, config) and only then
//! at the tensor bytes (length, finiteness). Every size in the config is bounded
//! ([`super::config::limits`]) and every length from the file is checked against the file's size
//! with checked arithmetic before anything is allocated or sliced. It does not own the backbone
//! check's inputs.

use super::config::{AdapterConfig, BackboneDims};
use super::task::TaskAdapter;
use super::AdapterError;
use crate::backbone::BackboneId;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

/// The format this build writes and reads.
pub const FORMAT: &str = "mvserve-adapter/1";
/// Largest JSON header accepted (metadata included).
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

type Res<T> = Result<T, AdapterError>;

/// What the file says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterMeta {
    pub task: String,
    pub backbone: BackboneId,
    pub config: AdapterConfig,
    /// Free-form training metrics (e.g. R@1), JSON.
    pub metrics: Option<Value>,
    /// Parameters of the backbone it was made for (for "% of the backbone" without loading it).
    pub backbone_params: Option<u64>,
}

/// A validated adapter file in memory.
#[derive(Clone, Debug)]
pub struct AdapterFile {
    pub meta: AdapterMeta,
    /// Our tensor names (adapters/README.md), all F32 and finite.
    pub tensors: HashMap<String, Tensor>,
    digest: String,
    size: u64,
}

impl AdapterFile {
    /// Validates the tensors against the config and computes the digest of the serialised bytes.
    pub fn new(meta: AdapterMeta, tensors: HashMap<String, Tensor>) -> Res<Self> {
        check_meta(&meta)?;
        let expected = TaskAdapter::expected_tensors(&meta.config)?;
        let found: BTreeMap<String, (String, Vec<usize>)> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), (dtype_name(t.dtype()), t.dims().to_vec())))
            .collect();
        check_tensors(&expected, &found)?;
        let mut tensors_f32 = HashMap::new();
        for (name, t) in tensors {
            let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            check_finite(&name, v.iter().copied())?;
            tensors_f32.insert(name, t);
        }
        let bytes = serialize(&meta, &tensors_f32)?;
        Ok(Self {
            meta,
            tensors: tensors_f32,
            digest: blake3::hash(&bytes).to_hex().to_string(),
            size: bytes.len() as u64,
        })
    }

    /// Reads and validates the header only: cheap, for listings and `inspect`.
    pub fn read_header(path: &Path) -> Res<(AdapterMeta, u64)> {
        let mut file = std::fs::File::open(path).map_err(|e| AdapterError::Io(path.into(), e))?;
        let size = file
            .metadata()
            .map_err(|e| AdapterError::Io(path.into(), e))?
            .len();
        let header = read_header_bytes(&mut file, size, path)?;
        let h = parse_header(&header, size)?;
        Ok((h.meta, size))
    }

    /// Reads and fully validates a file (header, names, shapes, dtypes, length, finite values).
    pub fn read(path: &Path) -> Res<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| AdapterError::Io(path.into(), e))?;
        let size = file
            .metadata()
            .map_err(|e| AdapterError::Io(path.into(), e))?
            .len();
        let header = read_header_bytes(&mut file, size, path)?;
        let h = parse_header(&header, size)?;
        // Read exactly the length the header describes (already checked against the file's
        // size), so a file that changes meanwhile cannot make a slice below run past the data.
        let mut data = Vec::with_capacity(h.data_len as usize);
        let io = |e| AdapterError::Io(path.into(), e);
        (&mut file)
            .take(h.data_len)
            .read_to_end(&mut data)
            .map_err(io)?;
        if (data.len() as u64) < h.data_len {
            return Err(AdapterError::Truncated {
                expected: 8 + header.len() as u64 + h.data_len,
                found: 8 + header.len() as u64 + data.len() as u64,
            });
        }
        if file.read(&mut [0u8; 1]).map_err(io)? != 0 {
            return Err(AdapterError::NotSafetensors(
                "the file grew while it was read".into(),
            ));
        }
        let mut tensors = HashMap::new();
        for (name, (shape, start, end)) in &h.tensors {
            let bytes = &data[*start..*end];
            check_finite(
                name,
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            )?;
            let t = Tensor::from_raw_buffer(bytes, DType::F32, shape, &Device::Cpu)?;
            tensors.insert(name.clone(), t);
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&(header.len() as u64).to_le_bytes());
        hasher.update(&header);
        hasher.update(&data);
        Ok(Self {
            meta: h.meta,
            tensors,
            digest: hasher.finalize().to_hex().to_string(),
            size,
        })
    }

    /// Writes the file (to a temporary name beside it, then renamed into place).
    pub fn write(&self, path: &Path) -> Res<()> {
        let bytes = serialize(&self.meta, &self.tensors)?;
        let tmp = path.with_extension("safetensors.tmp");
        let io = |e| AdapterError::Io(path.into(), e);
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    /// The file's bytes, as `write` writes them.
    pub fn to_bytes(&self) -> Res<Vec<u8>> {
        serialize(&self.meta, &self.tensors)
    }

    /// blake3 of the file bytes (hex): recorded with every vector this adapter produces.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Size of the file in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the adapter belongs to this backbone: shape first, then the weight digest.
    pub fn check_backbone(&self, id: &BackboneId, dims: &BackboneDims) -> Res<()> {
        self.meta.config.check_fits(dims)?;
        if self.meta.backbone.digest != id.digest {
            return Err(AdapterError::BackboneMismatch {
                expected: self.meta.backbone.clone(),
                found: id.clone(),
            });
        }
        Ok(())
    }

    /// The inference modules on `device`.
    pub fn adapter(&self, device: &Device) -> Res<TaskAdapter> {
        let tensors = self
            .tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_device(device)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        Ok(TaskAdapter::from_tensors(
            &self.meta.config,
            tensors,
            device,
        )?)
    }

    pub fn param_count(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
}

fn dtype_name(d: DType) -> String {
    match d {
        DType::F32 => "F32".into(),
        DType::F16 => "F16".into(),
        DType::BF16 => "BF16".into(),
        DType::F64 => "F64".into(),
        DType::U8 => "U8".into(),
        DType::U32 => "U32".into(),
        DType::I64 => "I64".into(),
        other => format!("{other:?}").to_uppercase(),
    }
}

fn check_meta(meta: &AdapterMeta) -> Res<()> {
    let t = &meta.task;
    if t.is_empty()
        || t.len() > 128
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || t.starts_with('.')
    {
        return Err(AdapterError::BadMetadata(format!(
            "task name {t:?} must be 1 to 128 of [A-Za-z0-9._-], not starting with '.'"
        )));
    }
    meta.config.validate()
}

fn check_finite(name: &str, values: impl Iterator<Item = f32>) -> Res<()> {
    let count = values.filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(AdapterError::NonFinite {
            name: name.to_string(),
            count,
        });
    }
    Ok(())
}

/// Names first (missing, extra or misnamed), then dtypes and shapes.
fn check_tensors(
    expected: &BTreeMap<String, Vec<usize>>,
    found: &BTreeMap<String, (String, Vec<usize>)>,
) -> Res<()> {
    let missing: Vec<String> = expected
        .keys()
        .filter(|k| !found.contains_key(*k))
        .cloned()
        .collect();
    let unexpected: Vec<String> = found
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    match (missing.is_empty(), unexpected.is_empty()) {
        (true, true) => {}
        (false, true) => return Err(AdapterError::MissingTensors(missing)),
        (true, false) => return Err(AdapterError::UnexpectedTensors(unexpected)),
        (false, false) => {
            return Err(AdapterError::MisnamedTensors {
                missing,
                unexpected,
            })
        }
    }
    for (name, (dtype, shape)) in found {
        if dtype != "F32" {
            return Err(AdapterError::TensorDtype {
                name: name.clone(),
                found: dtype.clone(),
            });
        }
        if &expected[name] != shape {
            return Err(AdapterError::TensorShape {
                name: name.clone(),
                expected: expected[name].clone(),
                found: shape.clone(),
            });
        }
    }
    Ok(())
}

fn read_header_bytes(file: &mut std::fs::File, size: u64, path: &Path) -> Res<Vec<u8>> {
    if size < 8 {
        return Err(AdapterError::NotSafetensors(format!(
            "{size} bytes, shorter than the 8-byte header length"
        )));
    }
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| AdapterError::Io(path.into(), e))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES {
        if n > size - 8 {
            // Beyond both the limit and the file: these bytes were never a safetensors header.
            return Err(AdapterError::NotSafetensors(format!(
                "the first 8 bytes give a header of {n} bytes in a {size}-byte file"
            )));
        }
        return Err(AdapterError::HeaderTooLarge {
            size: n,
            limit: MAX_HEADER_BYTES,
        });
    }
    if n > size - 8 {
        return Err(AdapterError::Truncated {
            expected: 8 + n,
            found: size,
        });
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| AdapterError::Io(path.into(), e))?;
    Ok(header)
}

struct Header {
    meta: AdapterMeta,
    /// name -> (shape, start, end) within the data section.
    tensors: BTreeMap<String, (Vec<usize>, usize, usize)>,
    data_len: u64,
}

fn parse_header(header: &[u8], file_size: u64) -> Res<Header> {
    let not = |m: String| AdapterError::NotSafetensors(m);
    let v: Value =
        serde_json::from_slice(header).map_err(|e| not(format!("the header is not JSON ({e})")))?;
    let Value::Object(mut obj) = v else {
        return Err(not("the header is not a JSON object".into()));
    };
    let meta = match obj.remove("__metadata__") {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(not("__metadata__ is not an object".into())),
        None => return Err(AdapterError::NotAnAdapter),
    };
    let meta = parse_meta(&meta)?;
    // Tensor entries: dtype, shape, data_offsets.
    let mut found = BTreeMap::new();
    let mut layout = BTreeMap::new();
    for (name, info) in &obj {
        let bad = || not(format!("tensor entry {name} is malformed"));
        let dtype = info.get("dtype").and_then(Value::as_str).ok_or_else(bad)?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(bad)?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(bad))
            .collect::<Res<_>>()?;
        let offs = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .ok_or_else(bad)?;
        let (Some(start), Some(end)) = (
            offs.first().and_then(Value::as_u64),
            offs.get(1).and_then(Value::as_u64),
        ) else {
            return Err(bad());
        };
        found.insert(name.clone(), (dtype.to_string(), shape.clone()));
        layout.insert(name.clone(), (shape, start, end));
    }
    let expected = TaskAdapter::expected_tensors(&meta.config)?;
    check_tensors(&expected, &found)?;
    // Offsets must describe exactly the tensors' bytes, back to back.
    let mut spans: Vec<(u64, u64, &String)> =
        layout.iter().map(|(n, (_, s, e))| (*s, *e, n)).collect();
    spans.sort();
    let mut at = 0u64;
    for (s, e, name) in &spans {
        let inconsistent = || not(format!("tensor {name} has inconsistent data offsets"));
        // Checked: the shapes equal the config's (bounded), but no length from the file is
        // trusted to fit in a multiplication.
        let bytes = layout[*name]
            .0
            .iter()
            .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(inconsistent)?;
        if *s != at || e.checked_sub(*s) != Some(bytes) {
            return Err(inconsistent());
        }
        at = *e;
    }
    let expected_size = (8 + header.len() as u64)
        .checked_add(at)
        .ok_or_else(|| not("the data offsets overflow".into()))?;
    if file_size < expected_size {
        return Err(AdapterError::Truncated {
            expected: expected_size,
            found: file_size,
        });
    }
    if file_size > expected_size {
        return Err(not(format!(
            "{} bytes after the last tensor",
            file_size - expected_size
        )));
    }
    Ok(Header {
        meta,
        tensors: layout
            .into_iter()
            .map(|(n, (sh, s, e))| (n, (sh, s as usize, e as usize)))
            .collect(),
        data_len: at,
    })
}

fn parse_meta(m: &Map<String, Value>) -> Res<AdapterMeta> {
    let get = |k: &str| -> Res<&str> {
        match m.get(k) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(AdapterError::BadMetadata(format!("{k} is not a string"))),
            None => Err(AdapterError::BadMetadata(format!("{k} is missing"))),
        }
    };
    match m.get("format") {
        None => return Err(AdapterError::NotAnAdapter),
        Some(Value::String(f)) if f == FORMAT => {}
        Some(f) => {
            return Err(AdapterError::UnsupportedFormat {
                found: f.as_str().unwrap_or("(not a string)").to_string(),
            })
        }
    }
    let config: AdapterConfig = serde_json::from_str(get("config")?)
        .map_err(|e| AdapterError::BadConfig(format!("config JSON: {e}")))?;
    let metrics = match m.get("metrics") {
        None => None,
        Some(Value::String(s)) => Some(
            serde_json::from_str(s)
                .map_err(|e| AdapterError::BadMetadata(format!("metrics JSON: {e}")))?,
        ),
        Some(_) => return Err(AdapterError::BadMetadata("metrics is not a string".into())),
    };
    let meta = AdapterMeta {
        task: get("task")?.to_string(),
        backbone: BackboneId {
            name: get("backbone")?.to_string(),
            digest: get("backbone_digest")?.to_string(),
        },
        config,
        metrics,
        backbone_params: match m.get("backbone_params") {
            None => None,
            Some(v) => Some(v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                AdapterError::BadMetadata("backbone_params is not a count".into())
            })?),
        },
    };
    check_meta(&meta)?;
    Ok(meta)
}

/// Deterministic bytes: keys sorted (BTreeMap), tensors back to back in name order, the header
/// padded with spaces to a multiple of 8.
fn serialize(meta: &AdapterMeta, tensors: &HashMap<String, Tensor>) -> Res<Vec<u8>> {
    let mut md = BTreeMap::new();
    md.insert("format", FORMAT.to_string());
    md.insert("task", meta.task.clone());
    md.insert("backbone", meta.backbone.name.clone());
    md.insert("backbone_digest", meta.backbone.digest.clone());
    md.insert(
        "config",
        serde_json::to_string(&meta.config).expect("config serialises"),
    );
    if let Some(m) = &meta.metrics {
        md.insert("metrics", m.to_string());
    }
    if let Some(n) = meta.backbone_params {
        md.insert("backbone_params", n.to_string());
    }
    let names: std::collections::BTreeSet<&String> = tensors.keys().collect();
    let mut header = BTreeMap::new();
    header.insert("__metadata__".to_string(), json!(md));
    let mut data = Vec::new();
    for name in names {
        let t = &tensors[name];
        let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let start = data.len();
        for x in v {
            data.extend_from_slice(&x.to_le_bytes());
        }
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": t.dims(), "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).expect("header serialises");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    if h.len() as u64 > MAX_HEADER_BYTES {
        return Err(AdapterError::HeaderTooLarge {
            size: h.len() as u64,
            limit: MAX_HEADER_BYTES,
        });
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    Ok(out)
}
