//! Which compute device the backbone runs on: `cpu` or `cuda[:N]` as the command line and the
//! server configuration spell it, and opening it with an error that says what is missing (a build
//! without the `cuda` feature, or no usable GPU).
//!
//! Everything downstream takes the device from the loaded model (`Clip::device`); this is the one
//! place that turns a name into a `candle_core::Device`.

use candle_core::Device;
use std::fmt;
use std::str::FromStr;

/// A device as named by `--device` / `MVSERVE_DEVICE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}: expected cpu, cuda or cuda:N")]
    Parse(String),
    #[error(
        "{0} asked for, but this mvserve was built without CUDA support; rebuild with \
         `cargo build --release --features cuda` (see \"GPU\" in the README)"
    )]
    NotBuilt(DeviceSpec),
    #[error("{spec} is not usable: {reason}")]
    Unavailable { spec: DeviceSpec, reason: String },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Parse(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

impl DeviceSpec {
    pub fn is_cpu(&self) -> bool {
        matches!(self, Self::Cpu)
    }

    /// Opens the device. A CUDA device is opened (driver loaded, context created) here, so a
    /// missing GPU is reported before any weights are read.
    pub fn open(&self) -> Result<Device, DeviceError> {
        match *self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(_) if !CUDA_BUILT => Err(DeviceError::NotBuilt(*self)),
            Self::Cuda(n) => Device::new_cuda(n).map_err(|e| DeviceError::Unavailable {
                spec: *self,
                reason: format!(
                    "{e} (is an NVIDIA GPU present, and are its driver and /dev/nvidia* \
                     visible to this process? `nvidia-smi` should list GPU {n})"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        for bad in ["", "cuda:", "cuda:x", "gpu", "metal", "cuda:-1"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad:?}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        assert_eq!(
            DeviceSpec::Cuda(2)
                .to_string()
                .parse::<DeviceSpec>()
                .unwrap(),
            DeviceSpec::Cuda(2)
        );
    }

    #[test]
    fn cpu_opens_and_cuda_fails_clearly_without_a_gpu() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        match DeviceSpec::Cuda(0).open() {
            // A CUDA build on a machine with a GPU: fine.
            Ok(d) => assert!(CUDA_BUILT && d.is_cuda()),
            Err(e) => {
                let msg = e.to_string();
                if CUDA_BUILT {
                    assert!(msg.contains("cuda:0 is not usable"), "{msg}");
                } else {
                    assert!(msg.contains("--features cuda"), "{msg}");
                }
            }
        }
    }
}
