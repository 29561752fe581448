//! Seeded initial values for a new adapter: the same seed gives the same adapter on every run
//! and machine (candle cannot seed its CPU generator), which `--seed` and exact resumes rely on.
//!
//! Each tensor is drawn from its own generator, seeded by the run's seed and the tensor's name,
//! with the distribution the adapter modules ask for (their `Init` hints), so the values do not
//! depend on the order in which modules are built.

use crate::adapter::{AdapterConfig, AdapterInit, TaskAdapter};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::SeedableRng;
use rand_distr::Distribution;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Fresh tensors for `config` under our names, drawn as `init` asks, reproducibly from `seed`.
pub fn seeded_tensors(
    config: &AdapterConfig,
    init: AdapterInit,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let made = Arc::new(Mutex::new(HashMap::new()));
    let backend = Seeded {
        seed,
        made: made.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    TaskAdapter::new(config, vb, init)?;
    let m = made.lock().expect("seeded init lock").clone();
    Ok(m)
}

struct Seeded {
    seed: u64,
    made: Arc<Mutex<HashMap<String, Tensor>>>,
}

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut key = [0u8; 8];
        key.copy_from_slice(&blake3::hash(name.as_bytes()).as_bytes()[..8]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ u64::from_le_bytes(key));
        let n = s.elem_count();
        let v: Vec<f32> = match h {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => {
                let d = rand_distr::Normal::new(mean, stdev)
                    .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
                (0..n).map(|_| d.sample(&mut rng) as f32).collect()
            }
            Init::Uniform { lo, up } => {
                let d = rand_distr::Uniform::new(lo, up)
                    .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
                (0..n).map(|_| d.sample(&mut rng) as f32).collect()
            }
            Init::Kaiming { .. } => {
                candle_core::bail!("{name}: Kaiming init is not used by adapters")
            }
        };
        let t = Tensor::from_vec(v, s, dev)?.to_dtype(dtype)?;
        self.made
            .lock()
            .expect("seeded init lock")
            .insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("seeded init: {name} has no known shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::{BackboneDims, Tying};

    #[test]
    fn the_same_seed_gives_the_same_adapter_and_another_does_not() {
        let dims = BackboneDims {
            vision_width: 16,
            vision_layers: 2,
            text_width: 16,
            text_layers: 2,
        };
        let c = AdapterConfig::standard(dims, 3, 8, Tying::DownIn);
        let dev = Device::Cpu;
        let a = seeded_tensors(&c, AdapterInit::Authors, 7, &dev).unwrap();
        let b = seeded_tensors(&c, AdapterInit::Authors, 7, &dev).unwrap();
        let other = seeded_tensors(&c, AdapterInit::Authors, 8, &dev).unwrap();
        let expected = TaskAdapter::expected_tensors(&c).unwrap();
        assert_eq!(a.len(), expected.len());
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (name, shape) in &expected {
            assert_eq!(a[name].dims(), shape.as_slice(), "{name}");
            assert_eq!(flat(&a[name]), flat(&b[name]), "{name}");
        }
        assert_ne!(
            flat(&a["vision.0.trm.attn.in_proj.weight"]),
            flat(&other["vision.0.trm.attn.in_proj.weight"])
        );
        // The authors' init: the up-projection is zero, so the adapter starts as the identity.
        assert!(flat(&a["vision.1.up.weight"]).iter().all(|&x| x == 0.0));
        // Distributions as asked: text W_down ~ N(0, (2*16)^-0.5).
        let w = flat(&a["text.0.down.weight"]);
        let var = w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32;
        assert!((var - 1.0 / 32.0).abs() < 0.01, "{var}");
    }
}
