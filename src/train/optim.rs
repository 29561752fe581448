//! The optimiser side of training: AdamW with decoupled weight decay, the warmup-then-cosine
//! learning-rate schedule, and clipping of the global gradient norm (spec section 9).
//!
//! Written by hand rather than taken from candle-nn because the moments must be saved and
//! restored exactly for `--resume`, and because weight decay applies to some parameters only
//! (`decays`). It owns no model and no data.

use candle_core::{Result, Tensor, Var};

/// Adam-style hyper-parameters (the authors': b1 0.9, b2 0.98, eps 1e-6, weight decay 0.2).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.2,
        }
    }
}

/// Whether weight decay applies to the adapter parameter `name` of shape `dims`.
///
/// Decayed: weight matrices (down, up, TRM, calibration and CMT projections) and the Kronecker
/// factors. Not decayed: biases; LayerNorm gains (decay would pull them towards 0, not towards
/// their init 1); the positional tables `pos` and the `cc` token (embeddings, whose scale the
/// following LayerNorm fixes anyway, as in ViT/CLIP practice); the CMT shared factor f_C (a
/// zero-initialised gain vector). In short: parameters of two or more dimensions except `pos`.
/// The authors' code decays everything whose name lacks "bias"; we follow common practice
/// instead.
pub fn decays(name: &str, dims: &[usize]) -> bool {
    dims.len() >= 2 && !name.ends_with(".pos")
}

/// One parameter and its Adam moments.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    /// First and second moments, same shape as the parameter.
    m: Tensor,
    v: Tensor,
}

/// AdamW (Loshchilov & Hutter): `p <- p - lr * wd * p - lr * m_hat / (sqrt(v_hat) + eps)`, with
/// bias-corrected moments, as PyTorch's `AdamW`. The step counter is shared by all parameters.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    /// Updates applied so far.
    step: u64,
}

impl AdamW {
    /// `params` in a fixed order (the order of `step`'s gradients); moments start at zero.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let z = var.as_tensor().zeros_like()?;
                Ok(Slot {
                    decay: decays(&name, var.dims()),
                    name,
                    var,
                    m: z.clone(),
                    v: z,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    pub fn steps_done(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// (name, var) in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.var))
    }

    /// Names of the parameters that are decayed (for logs and tests).
    pub fn decayed(&self) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.decay)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Applies one update with learning rate `lr`; `grads[i]` belongs to the i-th parameter
    /// (None: no gradient reached it; its moments still decay, as in PyTorch with a zero grad).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            candle_core::bail!(
                "{} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            );
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let p = slot.var.as_tensor().detach();
            let g = match g {
                Some(g) => g.detach(),
                None => p.zeros_like()?,
            };
            slot.m = ((&slot.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            slot.v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&slot.m / bc1)?;
            let denom = ((&slot.v / bc2)?.sqrt()? + c.eps)?;
            let mut next = (p.clone() - (m_hat.div(&denom)? * lr)?)?;
            if slot.decay && c.weight_decay != 0.0 {
                next = (next - (p * (lr * c.weight_decay))?)?;
            }
            slot.var.set(&next)?;
        }
        Ok(())
    }

    /// The moments by parameter name, for the resume state (`m.<name>`, `v.<name>`).
    pub fn moments(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            out.push((format!("m.{}", s.name), s.m.clone()));
            out.push((format!("v.{}", s.name), s.v.clone()));
        }
        out
    }

    /// Restores moments saved by `moments` and the step counter; every parameter must be there.
    pub fn restore(
        &mut self,
        step: u64,
        mut saved: std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        for s in &mut self.slots {
            for (which, slot) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{which}.{}", s.name);
                let t = saved
                    .remove(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("the state lacks {key}")))?;
                if t.dims() != slot.dims() {
                    candle_core::bail!(
                        "{key} has shape {:?}, expected {:?}",
                        t.dims(),
                        slot.dims()
                    );
                }
                *slot = t.to_device(slot.device())?;
            }
        }
        if let Some(k) = saved.keys().next() {
            candle_core::bail!("the state has moments for an unknown parameter ({k})");
        }
        self.step = step;
        Ok(())
    }
}

/// Linear warmup from 0 over `warmup` updates, then cosine decay to 0 at `total` updates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// `warmup_fraction` of `total` updates (rounded) warm up.
    pub fn new(base_lr: f64, warmup_fraction: f64, total: u64) -> Self {
        let warmup = ((warmup_fraction * total as f64).round() as u64).min(total);
        Self {
            base_lr,
            warmup,
            total,
        }
    }

    /// The learning rate of update `step` (0-based): `base * (step+1)/warmup` while warming up,
    /// then `base * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.base_lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let x = ((step - self.warmup) as f64 / span as f64).min(1.0);
        self.base_lr * 0.5 * (1.0 + (std::f64::consts::PI * x).cos())
    }
}

/// Scales the gradients so that their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1). Returns the norm before
/// clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn two_adamw_steps_match_a_hand_computation() {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![1.0f32, -2.0], (1, 2), &dev).unwrap();
        let b = Var::from_vec(vec![0.5f32], 1, &dev).unwrap();
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(
            vec![("x.weight".into(), w.clone()), ("x.bias".into(), b.clone())],
            cfg,
        )
        .unwrap();
        assert_eq!(opt.decayed(), vec!["x.weight"]);
        let (lr, wd, b1, b2, eps) = (0.1, 0.2, 0.9, 0.98, 1e-6);
        let g1 = [0.5f64, -1.0];
        let g2 = [0.25f64, 3.0];
        let gb = [2.0f64, -4.0];
        // By hand, in f64.
        let mut p = [1.0f64, -2.0];
        let mut q = 0.5f64;
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        let (mut mb, mut vb) = (0f64, 0f64);
        for (t, (ga, gbias)) in [(1, (g1, gb[0])), (2, (g2, gb[1]))] {
            let bc1 = 1.0 - f64::powi(b1, t);
            let bc2 = 1.0 - f64::powi(b2, t);
            for i in 0..2 {
                m[i] = b1 * m[i] + (1.0 - b1) * ga[i];
                v[i] = b2 * v[i] + (1.0 - b2) * ga[i] * ga[i];
                let upd = (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
                p[i] = p[i] - lr * upd - lr * wd * p[i];
            }
            mb = b1 * mb + (1.0 - b1) * gbias;
            vb = b2 * vb + (1.0 - b2) * gbias * gbias;
            q -= lr * (mb / bc1) / ((vb / bc2).sqrt() + eps); // no decay on the bias
            let gw = Tensor::new(&[[ga[0] as f32, ga[1] as f32]], &dev).unwrap();
            let gbt = Tensor::new(&[gbias as f32], &dev).unwrap();
            opt.step(&[Some(gw), Some(gbt)], lr).unwrap();
        }
        let got = vec(w.as_tensor());
        for i in 0..2 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
        }
        assert!((vec(b.as_tensor())[0] as f64 - q).abs() < 1e-6);
        assert_eq!(opt.steps_done(), 2);
    }

    #[test]
    fn first_adamw_step_by_the_numbers() {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![1.0f32, -2.0], (1, 2), &dev).unwrap();
        let mut opt =
            AdamW::new(vec![("a.weight".into(), w.clone())], AdamWConfig::default()).unwrap();
        let g = Tensor::new(&[[0.5f32, -1.0]], &dev).unwrap();
        opt.step(&[Some(g)], 0.1).unwrap();
        // m_hat = g, v_hat = g^2: the Adam part is lr * sign(g) (up to eps); decay is lr*wd*p.
        let got = vec(w.as_tensor());
        assert!((got[0] - (1.0 - 0.1 - 0.02)).abs() < 1e-5, "{got:?}");
        assert!((got[1] - (-2.0 + 0.1 + 0.04)).abs() < 1e-5, "{got:?}");
    }

    #[test]
    fn which_parameters_decay() {
        assert!(decays("vision.0.down.weight", &[64, 768]));
        assert!(decays("cmt.11.kron_s", &[4, 4, 4]));
        assert!(!decays("vision.0.down.bias", &[64]));
        assert!(!decays("vision.0.trm.ln_1.weight", &[64]));
        assert!(!decays("vision.0.pos", &[25, 64]));
        assert!(!decays("vision.0.cc", &[64]));
        assert!(!decays("cmt.11.shared", &[32]));
    }

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule::new(1.0, 0.1, 100);
        assert_eq!(s.warmup, 10);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(4) - 0.5).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(55) - 0.5).abs() < 1e-12); // half-way through the 90 cosine steps
        assert!((s.lr(100) - 0.0).abs() < 1e-12);
        let no_warm = Schedule::new(2.0, 0.0, 4);
        assert!((no_warm.lr(0) - 2.0).abs() < 1e-12);
        assert!((no_warm.lr(2) - 1.0).abs() < 1e-12);
        // Monotone after warmup.
        assert!((10..100).all(|t| s.lr(t + 1) <= s.lr(t)));
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let dev = Device::Cpu;
        let mut g = vec![
            Some(Tensor::new(&[3f32], &dev).unwrap()),
            None,
            Some(Tensor::new(&[[4f32]], &dev).unwrap()),
        ];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let a = vec(g[0].as_ref().unwrap())[0];
        let b = vec(g[2].as_ref().unwrap())[0];
        assert!((a - 0.6).abs() < 1e-6 && (b - 0.8).abs() < 1e-6, "{a} {b}");
        // Below the limit: untouched.
        let mut small = vec![Some(Tensor::new(&[0.3f32, 0.4], &dev).unwrap())];
        let n = clip_grad_norm(&mut small, 1.0).unwrap();
        assert!((n - 0.5).abs() < 1e-7);
        assert_eq!(vec(small[0].as_ref().unwrap()), vec![0.3, 0.4]);
    }
}
