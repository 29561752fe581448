//! H.264 in MP4: RGB frames through OpenH264's encoder (one thread, fixed quantiser, no skipped
//! frames, so the bytes depend only on the frames) into an `avc1` track written by the `mp4`
//! crate, with the SPS and PPS in `avcC` and each sample's NAL units length-prefixed.

use image::RgbImage;
use openh264::encoder::{Encoder, EncoderConfig, FrameRate, QpRange, RateControlMode};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use openh264::{OpenH264API, Timestamp};
use std::io::Cursor;

/// Why a clip could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("H.264 encoder: {0}")]
    Encoder(String),
    #[error("MP4 writer: {0}")]
    Mp4(#[from] mp4::Error),
    #[error("{0}")]
    Input(String),
}

/// NAL units of an Annex B chunk, start codes removed.
fn nal_units(mut b: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        // Skip the start code (00 00 01 or 00 00 00 01), then run to the next one.
        let start = b.windows(3).position(|w| w == [0, 0, 1])? + 3;
        let rest = &b[start..];
        let end = rest
            .windows(3)
            .position(|w| w == [0, 0, 1])
            .map_or(rest.len(), |i| {
                if i > 0 && rest[i - 1] == 0 {
                    i - 1
                } else {
                    i
                }
            });
        b = &rest[end..];
        Some(&rest[..end])
    })
}

/// Encodes `frames` (all `width` x `height`, even sides) shown at `fps` into an MP4 file's
/// bytes. `qp` is H.264's quantiser (0 best, 51 worst).
pub fn encode_mp4(frames: &[RgbImage], fps: u32, qp: u8) -> Result<Vec<u8>, MuxError> {
    let first = frames
        .first()
        .ok_or_else(|| MuxError::Input("no frames".into()))?;
    let (w, h) = first.dimensions();
    if !w.is_multiple_of(2) || !h.is_multiple_of(2) || w < 16 || h < 16 || fps == 0 || qp > 51 {
        return Err(MuxError::Input(format!(
            "need even sides of at least 16 px, fps > 0 and qp <= 51; got {w}x{h}, {fps} fps, qp {qp}"
        )));
    }
    let config = EncoderConfig::new()
        .skip_frames(false)
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .rate_control_mode(RateControlMode::Off)
        .qp(QpRange::new(qp, qp))
        .num_threads(1)
        .scene_change_detect(false)
        .background_detection(false)
        .adaptive_quantization(false);
    let enc_err = |e: openh264::Error| MuxError::Encoder(e.to_string());
    let mut encoder =
        Encoder::with_api_config(OpenH264API::from_source(), config).map_err(enc_err)?;
    // Track time in 1/(1000 fps) units: one frame lasts 1000 ticks whatever the rate.
    let timescale = 1000 * fps;
    let (mut sps, mut pps) = (None, None);
    let mut samples: Vec<(Vec<u8>, bool)> = Vec::with_capacity(frames.len());
    for (i, img) in frames.iter().enumerate() {
        if img.dimensions() != (w, h) {
            return Err(MuxError::Input(format!("frame {i} is not {w}x{h}")));
        }
        let yuv =
            YUVBuffer::from_rgb_source(RgbSliceU8::new(img.as_raw(), (w as usize, h as usize)));
        let ms = i as u64 * 1000 / fps as u64;
        let stream = encoder
            .encode_at(&yuv, Timestamp::from_millis(ms))
            .map_err(enc_err)?;
        let mut sample = Vec::new();
        let mut sync = false;
        for l in 0..stream.num_layers() {
            let layer = stream.layer(l).expect("layer index below num_layers");
            for n in 0..layer.nal_count() {
                let chunk = layer.nal_unit(n).expect("nal index below nal_count");
                for nal in nal_units(chunk) {
                    match nal.first().map(|b| b & 0x1f) {
                        Some(7) => sps = sps.or_else(|| Some(nal.to_vec())),
                        Some(8) => pps = pps.or_else(|| Some(nal.to_vec())),
                        Some(t) => {
                            sync |= t == 5;
                            sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                            sample.extend_from_slice(nal);
                        }
                        None => {}
                    }
                }
            }
        }
        if sample.is_empty() {
            return Err(MuxError::Encoder(format!("frame {i} produced no picture")));
        }
        samples.push((sample, sync));
    }
    let (Some(sps), Some(pps)) = (sps, pps) else {
        return Err(MuxError::Encoder("no SPS/PPS in the stream".into()));
    };
    let brand = |s: &str| s.parse().expect("four-character brand");
    let mut writer = mp4::Mp4Writer::write_start(
        Cursor::new(Vec::new()),
        &mp4::Mp4Config {
            major_brand: brand("isom"),
            minor_version: 512,
            compatible_brands: vec![brand("isom"), brand("iso2"), brand("avc1"), brand("mp41")],
            timescale: 1000,
        },
    )?;
    writer.add_track(&mp4::TrackConfig {
        track_type: mp4::TrackType::Video,
        timescale,
        language: "und".into(),
        media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
            width: w as u16,
            height: h as u16,
            seq_param_set: sps,
            pic_param_set: pps,
        }),
    })?;
    for (i, (bytes, is_sync)) in samples.into_iter().enumerate() {
        writer.write_sample(
            1,
            &mp4::Mp4Sample {
                start_time: i as u64 * 1000,
                duration: 1000,
                rendering_offset: 0,
                is_sync,
                bytes: bytes.into(),
            },
        )?;
    }
    writer.write_end()?;
    Ok(writer.into_writer().into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_annex_b() {
        let b = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5,
        ];
        let units: Vec<&[u8]> = nal_units(&b).collect();
        assert_eq!(
            units,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]
        );
    }

    #[test]
    fn rejects_odd_sizes() {
        let f = RgbImage::new(17, 16);
        assert!(matches!(encode_mp4(&[f], 4, 20), Err(MuxError::Input(_))));
        assert!(matches!(encode_mp4(&[], 4, 20), Err(MuxError::Input(_))));
    }
}
