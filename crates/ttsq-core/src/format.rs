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
    /// Opus in an Ogg container, where a provider supports it.
    OggOpus,
}

impl AudioFormat {
    /// Every format, in the order they are listed to clients.
    pub const ALL: [AudioFormat; 4] = [Self::Mp3, Self::Wav, Self::Pcm, Self::OggOpus];

    /// The name clients send as `format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mp3 => "mp3",
            Self::Wav => "wav",
            Self::Pcm => "pcm",
            Self::OggOpus => "ogg_opus",
        }
    }

    /// File extension of stored objects.
    pub fn extension(self) -> &'static str {
        match self {
            Self::OggOpus => "ogg",
            other => other.as_str(),
        }
    }

    /// HTTP `Content-Type` of the audio.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Mp3 => "audio/mpeg",
            Self::Wav => "audio/wav",
            Self::Pcm => "audio/pcm",
            Self::OggOpus => "audio/ogg",
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

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|f| f.as_str() == s).ok_or(())
    }
}
