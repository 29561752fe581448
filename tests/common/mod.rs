//! Helpers shared by the integration tests: tensor comparison, a real server process, media
//! fixtures.
#![allow(dead_code)]

pub mod media;
pub mod server;

use candle_core::{DType, Tensor};

/// max |a - b| over all elements, compared in f32; the shapes must match.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
