//! `[batches]`: batches whose audio is joined (`concatenate: true`).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, Invalid, at_least_one};

/// S3's smallest part of a multipart upload but the last, in bytes (5 MiB).
pub const MIN_JOIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// S3's largest part of a multipart upload, in bytes (5 GiB).
const MAX_JOIN_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// S3's most parts in one multipart upload.
const MAX_JOIN_PARTS: u64 = 10_000;

/// What bounds a batch whose audio is joined (`concatenate: true`): its
/// estimated length at submit, its size and the memory while joining, and
/// how replicas share and retry the join.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// Longest joined audio a batch may ask for, in seconds, as estimated at
    /// submit ([`Self::estimated_ms`]); a batch over it is refused whole.
    pub max_joined_duration_secs: u64,
    /// Speaking time of one character at speed 1.0, in milliseconds, for
    /// that estimate.
    pub estimated_ms_per_char: u32,
    /// Largest joined file, in bytes, checked while joining: the estimate
    /// can be wrong, the bytes cannot.
    pub max_joined_bytes: u64,
    /// Size of the multipart upload's parts, in bytes; a join holds about
    /// one in memory. S3 requires at least [`MIN_JOIN_PART_BYTES`].
    pub join_part_bytes: u64,
    /// Times replicas may take a batch to join it, interrupted attempts
    /// included, before it completes with `concatenate_error`.
    pub join_attempts: u32,
    /// How long a replica's hold on a batch it is joining lasts unrenewed,
    /// in seconds; a dead holder's batch is taken over after this long.
    pub join_lease_secs: u64,
}

impl BatchSettings {
    /// Estimated playing time, in milliseconds, of `characters` spoken at
    /// `speed` (a factor, 1.0 normal): the unit of the submit-time cap.
    pub fn estimated_ms(&self, characters: u32, speed: f64) -> f64 {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        f64::from(characters) * f64::from(self.estimated_ms_per_char) / speed
    }

    /// [`Self::join_lease_secs`] as a duration.
    pub fn join_lease(&self) -> Duration {
        Duration::from_secs(self.join_lease_secs)
    }

    /// The first setting that cannot work, with the reason: S3's multipart
    /// limits bound the part size and how many parts a joined file may take.
    pub(crate) fn check(&self) -> Checked {
        at_least_one(
            "batches.max_joined_duration_secs",
            self.max_joined_duration_secs,
        )?;
        at_least_one(
            "batches.estimated_ms_per_char",
            self.estimated_ms_per_char.into(),
        )?;
        if !(MIN_JOIN_PART_BYTES..=MAX_JOIN_PART_BYTES).contains(&self.join_part_bytes) {
            return Err(Invalid::new(
                "batches.join_part_bytes",
                format!(
                    "must be between {MIN_JOIN_PART_BYTES} (5 MiB) and {MAX_JOIN_PART_BYTES} \
                     (5 GiB), the part sizes S3 accepts"
                ),
            ));
        }
        if self.max_joined_bytes == 0
            || self.max_joined_bytes.div_ceil(self.join_part_bytes) > MAX_JOIN_PARTS
        {
            return Err(Invalid::new(
                "batches.max_joined_bytes",
                format!(
                    "must be at least 1 and fit in {MAX_JOIN_PARTS} parts of \
                     batches.join_part_bytes (S3's most parts in one upload)"
                ),
            ));
        }
        at_least_one("batches.join_attempts", self.join_attempts.into())?;
        if self.join_lease_secs < 3 {
            return Err(Invalid::new(
                "batches.join_lease_secs",
                "must be at least 3",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Settings, tests::env};

    #[test]
    fn batch_join_settings_s3_cannot_honour_are_refused_by_name() {
        for (var, value) in [
            ("TTSQ_BATCHES_JOIN_PART_BYTES", "1048576"),
            ("TTSQ_BATCHES_MAX_JOINED_BYTES", "0"),
            ("TTSQ_BATCHES_MAX_JOINED_BYTES", "52428800000000"),
            ("TTSQ_BATCHES_JOIN_ATTEMPTS", "0"),
            ("TTSQ_BATCHES_MAX_JOINED_DURATION_SECS", "0"),
        ] {
            let err = Settings::load(None, env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(var), "{var}={value}: {err}");
        }
        let s = Settings::load(None, env(&[])).unwrap();
        // 1,000 characters at half speed, 60 ms each: two minutes.
        assert_eq!(s.batches.estimated_ms(1000, 0.5), 120_000.0);
    }
}
