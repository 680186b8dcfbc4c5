//! Output audio formats: the vocabulary the catalog, the content hash and
//! jobs share, so it depends on none of them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Output audio encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AudioFormat {
    /// MPEG-1 Layer III; the default.
    Mp3,
    /// RIFF WAVE, 16-bit PCM, mono.
    Wav,
    /// Raw signed 16-bit little-endian mono samples, no header.
    Pcm,
    /// Opus in an Ogg container (RFC 7845), 48 kHz mono. `ogg_opus`, its
    /// name before OpenAI's `opus` was taken up, is still accepted.
    #[serde(rename = "opus", alias = "ogg_opus")]
    Opus,
    /// FLAC (lossless), 16-bit mono.
    Flac,
}

impl AudioFormat {
    /// Every format, in the order they are listed to clients.
    pub const ALL: [AudioFormat; 5] = [Self::Mp3, Self::Wav, Self::Pcm, Self::Opus, Self::Flac];

    /// The name clients send as `format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mp3 => "mp3",
            Self::Wav => "wav",
            Self::Pcm => "pcm",
            Self::Opus => "opus",
            Self::Flac => "flac",
        }
    }

    /// File extension of stored objects (`.opus` is RFC 7845's for Ogg Opus).
    pub fn extension(self) -> &'static str {
        self.as_str()
    }

    /// HTTP `Content-Type` of the audio.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Mp3 => "audio/mpeg",
            Self::Wav => "audio/wav",
            Self::Pcm => "audio/pcm",
            Self::Opus => "audio/ogg",
            Self::Flac => "audio/flac",
        }
    }
}

impl fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AudioFormat {
    type Err = ();

    /// A format's name, or `ogg_opus` for [`AudioFormat::Opus`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "ogg_opus" {
            return Ok(Self::Opus);
        }
        Self::ALL.into_iter().find(|f| f.as_str() == s).ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_ogg_opus_is_an_alias_of_opus() {
        for format in AudioFormat::ALL {
            assert_eq!(format.as_str().parse(), Ok(format));
            let json = serde_json::to_string(&format).unwrap();
            assert_eq!(json, format!("\"{format}\""));
        }
        assert_eq!("ogg_opus".parse(), Ok(AudioFormat::Opus));
        assert_eq!(
            serde_json::from_str::<AudioFormat>("\"ogg_opus\"").unwrap(),
            AudioFormat::Opus
        );
        assert_eq!("aac".parse::<AudioFormat>(), Err(()));
    }
}
