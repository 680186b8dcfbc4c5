//! Long jobs at submission: a normal-priority job whose text is longer than
//! one provider request of its dialect takes is split into chunks, each an
//! ordinary job of its own (see the migration `20261211100000_long_jobs`).
//! Shared by `POST /v1/tts/jobs` and `POST /v1/tts/batches`.

use ttsq_core::{Catalog, Job, JobChunk, JobLimits, ValidationErrors};

/// The chunks of `job` when it is a long job, its hash then the hash of
/// theirs; none for any other job, left as it is. Call once the job is
/// validated: each chunk's hash is put in `scope`, as the hash of a short
/// job of the same text would be by [`Job::scope_cache`], so the two share
/// audio. A text with nowhere to split it is refused on `text`.
pub(crate) fn split(
    job: &mut Job,
    catalog: &Catalog,
    limits: &JobLimits,
    scope: &str,
) -> Result<Vec<JobChunk>, ValidationErrors> {
    let source = job.source_text.take();
    let Some(max_chars) = job.long_chunk_chars(catalog, limits) else {
        return Ok(Vec::new());
    };
    // The text as sent keeps the paragraph breaks; its normalised form,
    // which the offsets index, is the job's text.
    let pieces = ttsq_split::split(source.as_deref().unwrap_or(&job.text), max_chars)
        .into_iter()
        .map(|chunk| (chunk.text, chunk.offset));
    job.chunks(pieces, max_chars, scope)
}

/// Where a chunk's text starts, as the store takes it: a long job's text is
/// at most `limits.max_long_text_chars`, far below `i32::MAX`.
pub(crate) fn offset(chunk: &JobChunk) -> i32 {
    i32::try_from(chunk.offset).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use ttsq_core::{AudioFormat, DialectInfo};

    use super::*;

    fn catalog(max_request_chars: u32) -> Catalog {
        Catalog::new([DialectInfo {
            id: "en-gb".into(),
            name: "English (UK)".into(),
            voices: vec!["default".into()],
            formats: vec![AudioFormat::Mp3, AudioFormat::Wav, AudioFormat::Opus],
            emotions: vec![],
            provider_chain: vec!["espeak".into()],
            model: "espeak-ng".into(),
            sample_rate_hz: 22_050,
            marks: Vec::new(),
            max_request_chars,
        }])
    }

    fn job(text: &str, catalog: &Catalog, limits: &JobLimits) -> Job {
        let body = serde_json::json!({"text": text, "dialect": "en-gb"}).to_string();
        Job::parse(body.as_bytes(), catalog, limits).expect("a valid job")
    }

    #[test]
    fn a_long_text_is_cut_under_the_dialects_request_limit_and_a_short_one_is_left_alone() {
        let catalog = catalog(40);
        let limits = JobLimits::default();
        let text = "The first sentence is here. ".repeat(10);
        let mut long = job(&text, &catalog, &limits);
        long.scope_cache("tenant:a");
        let mut short = job("Just one sentence.", &catalog, &limits);
        short.scope_cache("tenant:a");
        let short_hash = short.hash.clone();

        let chunks = split(&mut long, &catalog, &limits, "tenant:a").unwrap();
        let none = split(&mut short, &catalog, &limits, "tenant:a").unwrap();

        assert!(chunks.len() >= 7, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.job.characters <= 40));
        let whole: Vec<char> = long.text.chars().collect();
        for chunk in &chunks {
            let at: String = whole[chunk.offset..chunk.offset + chunk.job.characters as usize]
                .iter()
                .collect();
            assert_eq!(at, chunk.job.text);
        }
        assert_eq!(
            long.hash,
            ttsq_core::ContentHash::of_chunks(chunks.iter().map(|c| &c.job.hash))
        );
        assert!(none.is_empty());
        assert_eq!(short.hash, short_hash);
    }

    #[test]
    fn a_word_longer_than_one_request_is_cut_under_the_limit_and_nothing_is_lost() {
        let catalog = catalog(40);
        let limits = JobLimits::default();
        let word = "x".repeat(100);
        let mut long = job(&word, &catalog, &limits);

        let chunks = split(&mut long, &catalog, &limits, "tenant:a").unwrap();

        assert!(chunks.iter().all(|c| c.job.characters <= 40));
        let joined: String = chunks.iter().map(|c| c.job.text.as_str()).collect();
        assert_eq!(joined, word);
    }

    #[test]
    fn paragraphs_are_split_as_sent_not_as_normalised() {
        let catalog = catalog(60);
        let limits = JobLimits::default();
        let text = "First paragraph, short.\n\nSecond paragraph, short too.\n\nThird one.";
        let mut long = job(&text.repeat(2), &catalog, &limits);

        let chunks = split(&mut long, &catalog, &limits, "tenant:a").unwrap();

        let texts: Vec<&str> = chunks.iter().map(|c| c.job.text.as_str()).collect();
        assert_eq!(texts[0], "First paragraph, short.");
        assert_eq!(texts[1], "Second paragraph, short too.");
        assert!(
            long.source_text.is_none(),
            "the text as sent is dropped once split"
        );
    }
}
