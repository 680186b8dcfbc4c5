//! `[api]`: what an API process keeps in memory for high-priority requests.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, Invalid};

/// Smallest non-zero hot cache: an entry may take an eighth of it, and
/// below 8 KiB hardly any audio would fit.
pub const MIN_HOT_CACHE_BYTES: u64 = 64 * 1024;
/// Largest hot cache: the cache lives in each API process's memory.
pub const MAX_HOT_CACHE_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// What an API process keeps in memory.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Most bytes of audio each API process keeps in memory, by scoped
    /// content hash, so that a repeated high-priority request answers
    /// without reading S3. Least recently used audio goes first; one audio
    /// larger than an eighth of this is not kept. 0 disables the cache;
    /// otherwise at least 65536.
    pub hot_cache_bytes: u64,
}

impl ApiSettings {
    /// Range checks serde cannot express.
    pub(crate) fn check(&self) -> Checked {
        let bytes = self.hot_cache_bytes;
        if bytes != 0 && !(MIN_HOT_CACHE_BYTES..=MAX_HOT_CACHE_BYTES).contains(&bytes) {
            return Err(Invalid::new(
                "api.hot_cache_bytes",
                format!(
                    "must be 0 (no hot cache) or from {MIN_HOT_CACHE_BYTES} to {MAX_HOT_CACHE_BYTES} bytes"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Settings, tests::env};

    #[test]
    fn the_hot_cache_holds_32_mib_by_default_and_0_disables_it() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.api.hot_cache_bytes, 32 * 1024 * 1024);
        let s = Settings::load(None, env(&[("TTSQ_API_HOT_CACHE_BYTES", "0")])).unwrap();
        assert_eq!(s.api.hot_cache_bytes, 0);
    }

    #[test]
    fn a_bad_hot_cache_size_is_refused_naming_the_variable() {
        for bad in ["lots", "-1", "1000", "17179869185"] {
            let err = Settings::load(None, env(&[("TTSQ_API_HOT_CACHE_BYTES", bad)])).unwrap_err();
            assert!(
                err.to_string().contains("TTSQ_API_HOT_CACHE_BYTES"),
                "{bad}: {err}"
            );
        }
    }
}
