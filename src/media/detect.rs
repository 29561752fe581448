//! Container detection from the first bytes of a file (never from its name).
//!
//! Owns the magic numbers only; which decoder handles a container is decided in `media::decode_any`.

use serde::Serialize;

/// A container family recognised from its signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    /// ISO base media: MP4, MOV, M4V, 3GP (an `ftyp`, `moov`, `mdat`, `free`, `skip` or `wide` box first).
    Mp4,
    /// RIFF AVI.
    Avi,
    /// GIF87a / GIF89a.
    Gif,
    /// EBML: Matroska and WebM.
    Matroska,
    /// MPEG transport stream (sync byte every 188 bytes).
    MpegTs,
    /// MPEG program stream.
    MpegPs,
    Flv,
    Ogg,
    /// ASF / WMV.
    Asf,
    /// Raw H.264 / H.265 Annex-B elementary stream (starts with a start code).
    AnnexB,
    Unknown,
}

impl Container {
    /// The name used in `MediaInfo::container` and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4",
            Container::Avi => "avi",
            Container::Gif => "gif",
            Container::Matroska => "matroska",
            Container::MpegTs => "mpegts",
            Container::MpegPs => "mpegps",
            Container::Flv => "flv",
            Container::Ogg => "ogg",
            Container::Asf => "asf",
            Container::AnnexB => "h264-annexb",
            Container::Unknown => "unknown",
        }
    }
}

/// Detects the container from the leading bytes.
pub fn detect(b: &[u8]) -> Container {
    if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"AVI " {
        return Container::Avi;
    }
    if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        return Container::Gif;
    }
    if b.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Container::Matroska;
    }
    if b.len() >= 8 {
        let kind = &b[4..8];
        if [b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"]
            .iter()
            .any(|k| kind == *k)
        {
            return Container::Mp4;
        }
    }
    if b.starts_with(b"FLV\x01") {
        return Container::Flv;
    }
    if b.starts_with(b"OggS") {
        return Container::Ogg;
    }
    if b.starts_with(&[0x30, 0x26, 0xB2, 0x75, 0x8E, 0x66, 0xCF, 0x11]) {
        return Container::Asf;
    }
    if b.starts_with(&[0, 0, 1, 0xBA]) {
        return Container::MpegPs;
    }
    if b.len() >= 188 * 3 && b[0] == 0x47 && b[188] == 0x47 && b[376] == 0x47 {
        return Container::MpegTs;
    }
    if b.starts_with(&[0, 0, 0, 1]) || b.starts_with(&[0, 0, 1]) {
        return Container::AnnexB;
    }
    Container::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        assert_eq!(detect(b"\0\0\0\x20ftypisom"), Container::Mp4);
        assert_eq!(detect(b"RIFF\0\0\0\0AVI LIST"), Container::Avi);
        assert_eq!(detect(b"RIFF\0\0\0\0WAVEfmt "), Container::Unknown);
        assert_eq!(detect(b"GIF89a.."), Container::Gif);
        assert_eq!(detect(&[0x1A, 0x45, 0xDF, 0xA3, 1]), Container::Matroska);
        assert_eq!(detect(b""), Container::Unknown);
        assert_eq!(detect(b"hello world"), Container::Unknown);
    }
}
