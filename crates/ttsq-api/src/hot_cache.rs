//! The hot cache: audio this replica served lately, in memory, so that a
//! repeated high-priority request answers without reading S3 again.
//!
//! An entry is keyed by the job's content hash, which is scoped by the
//! tenant's cache scope: a request only ever looks up its own scope's
//! entries, so nothing about another scope's texts shows (invariant 4).
//! An entry answers only for the very object the index (`audio_objects`)
//! holds for that hash now: the caller looks the object up first, and the
//! entry must name the same S3 key and SHA-256. An object removed by
//! retention, or found lost, is not found by that lookup, so its entry never
//! answers; one replaced by other bytes no longer matches.
//!
//! Bounded (invariant 9) by the total bytes held, and by entry size: an
//! entry above an eighth of the capacity is not kept. Eviction is least
//! recently used; each call holds the lock for a few map operations and
//! never across an await.

use std::sync::Mutex;

use bytes::Bytes;
use hashlink::LruCache;
use sha2::{Digest as _, Sha256};
use ttsq_store::AudioObject;

/// An entry larger than the capacity divided by this is not cached: a few
/// large answers cannot flush everything else.
const MAX_ENTRY_SHARE: usize = 8;

/// Recently served audio by scoped content hash; see the module docs.
pub struct HotCache {
    /// Most bytes of audio held; 0 disables the cache.
    capacity: usize,
    /// Largest entry kept.
    max_entry: usize,
    /// The entries, least recently used first, and their total size.
    inner: Mutex<Entries>,
}

/// What the lock guards.
struct Entries {
    /// Entries by content hash, in order of use.
    map: LruCache<String, Entry>,
    /// Sum of the entries' audio sizes.
    bytes: usize,
}

/// The audio of one stored object.
struct Entry {
    /// Key of the object in the bucket.
    s3_key: String,
    /// Hex SHA-256 of `audio`: the object's identity in the index.
    sha256: String,
    /// The bytes, shared with every answer made from them.
    audio: Bytes,
}

impl HotCache {
    /// A cache holding at most `capacity` bytes of audio; 0 disables it.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            max_entry: capacity / MAX_ENTRY_SHARE,
            inner: Mutex::new(Entries {
                map: LruCache::new_unbounded(),
                bytes: 0,
            }),
        }
    }

    /// Whether the cache holds anything at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The audio of `object`, the object the index holds now for `hash`,
    /// when it is cached; an entry for another object under that hash is
    /// dropped. Counts the lookup as a hit or a miss.
    pub fn get(&self, hash: &str, object: &AudioObject) -> Option<Bytes> {
        if !self.enabled() {
            return None;
        }
        let found = {
            let mut entries = self.lock();
            let current = entries.map.get(hash).map(|entry| {
                (entry.s3_key == object.s3_key && entry.sha256 == object.sha256)
                    .then(|| entry.audio.clone())
            });
            match current {
                Some(Some(audio)) => Ok(audio),
                Some(None) => Err(entries.remove(hash)),
                None => Err(None),
            }
        };
        ttsq_telemetry::metrics::get().hot_cache_lookup(found.is_ok());
        // A stale entry is dropped here, after the lock is released.
        found.ok()
    }

    /// Keeps `audio` as the bytes of the object stored under `s3_key` with
    /// SHA-256 `sha256` (hex) for `hash`, unless it is too large or does
    /// not hash to `sha256`; evicts the least recently used entries to make
    /// room.
    pub fn insert(&self, hash: &str, s3_key: &str, sha256: &str, audio: Bytes) {
        let size = audio.len();
        if !self.enabled() || size > self.max_entry {
            return;
        }
        {
            let entries = self.lock();
            if entries
                .map
                .peek(hash)
                .is_some_and(|e| e.s3_key == s3_key && e.sha256 == sha256)
            {
                return;
            }
        }
        // Outside the lock: the bytes must be what the index says they are,
        // or a later hit would answer other audio.
        if !hex::encode(Sha256::digest(&audio)).eq_ignore_ascii_case(sha256) {
            tracing::warn!(
                s3_key,
                "audio bytes do not match the object's SHA-256; not cached"
            );
            return;
        }
        let entry = Entry {
            s3_key: s3_key.to_owned(),
            sha256: sha256.to_owned(),
            audio,
        };
        let mut evicted = Vec::new();
        {
            let mut entries = self.lock();
            evicted.extend(entries.remove(hash));
            while entries.bytes + size > self.capacity {
                match entries.remove_lru() {
                    Some(old) => evicted.push(old),
                    None => break,
                }
            }
            entries.map.insert(hash.to_owned(), entry);
            entries.bytes += size;
            ttsq_telemetry::metrics::get().hot_cache_changed(1, signed(size));
        }
        // The evicted audio is freed here, after the lock is released.
        drop(evicted);
    }

    /// Counts an audio answer the cache was not asked for because the
    /// index holds no object for its hash.
    pub fn count_miss(&self) {
        if self.enabled() {
            ttsq_telemetry::metrics::get().hot_cache_lookup(false);
        }
    }

    /// Drops the entry of `hash`, if any: its object is gone.
    pub fn remove(&self, hash: &str) {
        if !self.enabled() {
            return;
        }
        let removed = self.lock().remove(hash);
        drop(removed);
    }

    /// Bytes of audio held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves the map consistent (every
        // mutation is one map call plus the size sum), so a poisoned lock
        // is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Entries {
    /// Takes the entry of `hash` out; the caller drops it after releasing
    /// the lock.
    fn remove(&mut self, hash: &str) -> Option<Entry> {
        let entry = self.map.remove(hash)?;
        Some(self.forget(entry))
    }

    /// Takes the least recently used entry out, as [`Self::remove`].
    fn remove_lru(&mut self) -> Option<Entry> {
        let (_, entry) = self.map.remove_lru()?;
        Some(self.forget(entry))
    }

    /// Keeps the size sum and the gauges right for an entry taken out.
    fn forget(&mut self, entry: Entry) -> Entry {
        self.bytes -= entry.audio.len();
        ttsq_telemetry::metrics::get().hot_cache_changed(-1, -signed(entry.audio.len()));
        entry
    }
}

/// A size as a gauge step.
fn signed(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Drop for HotCache {
    /// Takes this cache's share out of the process-wide gauges.
    fn drop(&mut self) {
        let entries = self.lock();
        ttsq_telemetry::metrics::get()
            .hot_cache_changed(-signed(entries.map.len()), -signed(entries.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(hash: &str, audio: &[u8]) -> AudioObject {
        AudioObject {
            hash: hash.to_owned(),
            s3_key: format!("audio/{}/{hash}.wav", &hash[..2]),
            bytes: audio.len() as i64,
            format: "wav".to_owned(),
            duration_ms: 1_000,
            provider: "espeak".to_owned(),
            sha256: hex::encode(Sha256::digest(audio)),
            created_at: chrono::Utc::now(),
        }
    }

    fn put(cache: &HotCache, object: &AudioObject, audio: &[u8]) {
        cache.insert(
            &object.hash,
            &object.s3_key,
            &object.sha256,
            Bytes::copy_from_slice(audio),
        );
    }

    #[test]
    fn an_entry_answers_only_for_the_object_it_was_stored_as() {
        let cache = HotCache::new(1 << 20);
        let audio = b"RIFF the first synthesis".to_vec();
        let first = object("aa11", &audio);
        put(&cache, &first, &audio);

        assert_eq!(cache.get("aa11", &first).as_deref(), Some(&audio[..]));
        // Synthesized again after a purge: same key, other bytes.
        let again = object("aa11", b"RIFF another synthesis");
        assert_eq!(cache.get("aa11", &again), None);
        assert!(cache.is_empty(), "the stale entry is dropped");
        // Another scope's hash never finds this one's entry.
        put(&cache, &first, &audio);
        assert_eq!(cache.get("bb22", &object("bb22", &audio)), None);
    }

    #[test]
    fn bytes_that_do_not_match_their_sha256_are_not_kept() {
        let cache = HotCache::new(1 << 20);
        let object = object("cc33", b"what the index says");
        cache.insert(
            &object.hash,
            &object.s3_key,
            &object.sha256,
            Bytes::from_static(b"something else"),
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn many_inserts_never_hold_more_than_the_capacity_and_evict_the_least_recent() {
        let capacity = 64 * 1024;
        let cache = HotCache::new(capacity);
        let audio_of = |i: usize| vec![(i % 251) as u8; 1_000 + (i * 37) % 7_000];
        let objects: Vec<_> = (0..2_000)
            .map(|i| object(&format!("{i:04x}{i}"), &audio_of(i)))
            .collect();
        for (i, object) in objects.iter().enumerate() {
            put(&cache, object, &audio_of(i));
            assert!(cache.bytes() <= capacity, "{} after {i}", cache.bytes());
            // The first one, used all along, is never the least recent.
            if i > 0 {
                assert!(cache.get(&objects[0].hash, &objects[0]).is_some(), "{i}");
            }
        }
        assert!(cache.len() >= 8, "{} entries", cache.len());
        assert!(cache.get(&objects[1].hash, &objects[1]).is_none());
        let last = objects.len() - 1;
        assert!(cache.get(&objects[last].hash, &objects[last]).is_some());
    }

    #[test]
    fn an_entry_above_an_eighth_of_the_capacity_is_not_kept() {
        let cache = HotCache::new(8_000);
        let small = vec![1u8; 1_000];
        let large = vec![2u8; 1_001];
        put(&cache, &object("dd44", &small), &small);
        put(&cache, &object("ee55", &large), &large);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), 1_000);
    }

    #[test]
    fn a_capacity_of_zero_disables_the_cache() {
        let cache = HotCache::new(0);
        let audio = vec![3u8; 10];
        let object = object("ff66", &audio);
        put(&cache, &object, &audio);
        assert!(cache.get("ff66", &object).is_none());
        assert!(cache.is_empty());
    }
}
