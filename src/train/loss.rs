//! The training objective (spec sections 8 and 9): symmetric InfoNCE over the in-batch pairs,
//! with CLIP's own frozen temperature.

use candle_core::{DType, Result, Tensor, D};

/// `exp(logit_scale)` with the raw parameter clamped to ln 100, as CLIP does.
pub fn logit_scale(raw: f32) -> f64 {
    (raw as f64).min(100f64.ln()).exp()
}

/// Text (B, P) and video (B, P) embeddings, L2-normalised, row i of each a matching pair:
/// the mean of the cross-entropy over the rows of `scale * T V^T` (text to video) and over its
/// columns (video to text), each with the diagonal as the target.
pub fn symmetric_infonce(text: &Tensor, video: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, p) = text.dims2()?;
    if video.dims2()? != (b, p) {
        candle_core::bail!(
            "text {:?} and video {:?} embeddings do not pair up",
            text.dims(),
            video.dims()
        );
    }
    let logits = (text.matmul(&video.t()?)? * scale)?; // (B, B): text i x video j
    let eye = Tensor::eye(b, DType::F32, text.device())?.to_dtype(logits.dtype())?;
    let diag_nll = |l: &Tensor| -> Result<Tensor> {
        let lsm = candle_nn::ops::log_softmax(l, D::Minus1)?;
        (lsm * &eye)?.sum_all()?.neg()? / b as f64
    };
    let t2v = diag_nll(&logits)?;
    let v2t = diag_nll(&logits.t()?)?;
    (t2v + v2t)? / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn the_loss_of_two_pairs_by_hand() {
        let dev = Device::Cpu;
        // t0 = (1, 0), t1 = (0, 1); v0 = (1, 0), v1 = (0.6, 0.8).
        let t = Tensor::new(&[[1f32, 0.], [0., 1.]], &dev).unwrap();
        let v = Tensor::new(&[[1f32, 0.], [0.6, 0.8]], &dev).unwrap();
        let s = 10.0;
        // Similarities: [[1, 0.6], [0, 0.8]] * 10.
        let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
        let t2v = ((lse(10.0, 6.0) - 10.0) + (lse(0.0, 8.0) - 8.0)) / 2.0;
        let v2t = ((lse(10.0, 0.0) - 10.0) + (lse(6.0, 8.0) - 8.0)) / 2.0;
        let want = (t2v + v2t) / 2.0;
        let got = symmetric_infonce(&t, &v, s)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        // Swapping the videos makes the pairs wrong and the loss larger.
        let swapped = Tensor::new(&[[0.6f32, 0.8], [1., 0.]], &dev).unwrap();
        let worse = symmetric_infonce(&t, &swapped, s)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(worse > got + 1.0, "{worse} vs {got}");
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let t = Var::from_vec(vec![0.3f32, 0.1, -0.2, 0.5, 0.4, 0.4], (3, 2), &dev).unwrap();
        let v = Tensor::new(&[[0.2f32, 0.1], [0.0, 0.3], [-0.1, 0.2]], &dev).unwrap();
        let loss = symmetric_infonce(t.as_tensor(), &v, 7.0).unwrap();
        let g: Vec<f32> = loss
            .backward()
            .unwrap()
            .get(t.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = t.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-3f32;
        for i in 0..base.len() {
            let at = |d: f32| {
                let mut x = base.clone();
                x[i] += d;
                let x = Tensor::from_vec(x, (3, 2), &dev).unwrap();
                symmetric_infonce(&x, &v, 7.0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!((fd - g[i]).abs() < 2e-3, "coordinate {i}: {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn the_scale_is_clamped_at_100() {
        assert!((logit_scale(4.6052) - 100.0).abs() < 0.01);
        assert_eq!(logit_scale(10.0), logit_scale(100f32.ln() + 1.0));
        assert!((logit_scale(2.6592) - 2.6592f64.exp()).abs() < 1e-4);
    }
}
