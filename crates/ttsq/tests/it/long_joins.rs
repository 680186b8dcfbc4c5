//! The join of long jobs' chunks (issue 21) on real Postgres and S3: long
//! jobs are written as the migration `20261211100000_long_jobs` describes
//! them (the job's task row, its `long_jobs` row left `joining`, its
//! succeeded chunks and their audio in the bucket), then a worker's
//! [`LongJoiner`] sweeps.

use std::{io::Cursor, time::Duration};

use sha2::{Digest, Sha256};
use ttsq_core::{AudioFormat, ContentHash, Mark, MarkKind};
use ttsq_store::AudioObject;
use ttsq_testkit::{TestApp, TestOptions};
use ttsq_worker::long_jobs::LongJoiner;
use uuid::Uuid;

/// One chunk of a long job to write: its stored audio and text.
struct ChunkFixture {
    /// The audio file as stored.
    audio: Vec<u8>,
    /// Its indexed playing time.
    duration_ms: i32,
    /// Its text (a slice of the job's normalised text).
    text: String,
    /// Its marks file, when the job asks for marks.
    marks: Option<Vec<Mark>>,
}

/// A long job written for the joiner.
struct LongJob {
    id: Uuid,
    hash: ContentHash,
    format: AudioFormat,
    chunk_keys: Vec<String>,
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a long job of `chunks` (in order) in `format` whose chunks all
/// succeeded: its `long_jobs` row is `joining`, as the trigger leaves it.
async fn joining_long_job(app: &TestApp, format: AudioFormat, chunks: &[ChunkFixture]) -> LongJob {
    let pool = app.services.store.pool();
    let tenant: Uuid =
        ttsq_store::sqlx::query_scalar("SELECT id FROM tenants ORDER BY created_at LIMIT 1")
            .fetch_one(pool)
            .await
            .expect("a tenant");
    let marks = chunks
        .iter()
        .any(|c| c.marks.is_some())
        .then(|| vec!["word".to_owned()]);
    let mut hashes = Vec::new();
    let mut chunk_keys = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let hash = ContentHash::parse(&hex_sha256(Uuid::new_v4().as_bytes())).expect("a hash");
        let key = hash.object_key(format);
        app.services
            .audio
            .put(&key, chunk.audio.clone().into(), format.content_type())
            .await
            .expect("chunk audio stored");
        if let Some(marks) = &chunk.marks {
            let json = serde_json::to_vec(marks).expect("marks JSON");
            app.services
                .audio
                .put(&hash.marks_key(), json.into(), "application/json")
                .await
                .expect("chunk marks stored");
        }
        ttsq_store::sqlx::query(
            "INSERT INTO audio_objects (hash, s3_key, bytes, format, duration_ms, provider, sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(hash.as_str())
        .bind(&key)
        .bind(chunk.audio.len() as i64)
        .bind(format.as_str())
        .bind(chunk.duration_ms)
        .bind(format!("fake-{i}"))
        .bind(hex_sha256(&chunk.audio))
        .execute(pool)
        .await
        .expect("chunk audio indexed");
        hashes.push(hash);
        chunk_keys.push(key);
    }
    let hash = ContentHash::of_chunks(&hashes);
    let id = Uuid::now_v7();
    let text: String = chunks
        .iter()
        .map(|c| c.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let characters = text.chars().count() as i32;
    let total = chunks.len() as i32;
    ttsq_store::sqlx::query(
        "INSERT INTO tasks (id, tenant_id, status, priority, text, characters, dialect, voice, model,
                            speed, format, content_hash, marks, chunks_total, chunks_done, started_at)
         VALUES ($1, $2, 'processing', 'normal', $3, $4, 'en-us', 'default', 'fake', 1.0, $5, $6,
                 $7, $8, $8, now())",
    )
    .bind(id)
    .bind(tenant)
    .bind(&text)
    .bind(characters)
    .bind(format.as_str())
    .bind(hash.as_str())
    .bind(&marks)
    .bind(total)
    .execute(pool)
    .await
    .expect("long job written");
    ttsq_store::sqlx::query("INSERT INTO long_jobs (task_id, state) VALUES ($1, 'joining')")
        .bind(id)
        .execute(pool)
        .await
        .expect("long_jobs row written");
    let mut offset = 0i32;
    for (i, (chunk, chunk_hash)) in chunks.iter().zip(&hashes).enumerate() {
        let chunk_chars = chunk.text.chars().count() as i32;
        ttsq_store::sqlx::query(
            "INSERT INTO tasks (id, tenant_id, status, priority, text, characters, dialect, voice,
                                model, speed, format, content_hash, marks, parent_id, chunk_index,
                                chunk_offset, audio_hash, provider, started_at, finished_at)
             VALUES ($1, $2, 'succeeded', 'normal', $3, $4, 'en-us', 'default', 'fake', 1.0, $5,
                     $6, $7, $8, $9, $10, $6, $11, now(), now())",
        )
        .bind(Uuid::now_v7())
        .bind(tenant)
        .bind(&chunk.text)
        .bind(chunk_chars)
        .bind(format.as_str())
        .bind(chunk_hash.as_str())
        .bind(&marks)
        .bind(id)
        .bind(i as i32)
        .bind(offset)
        .bind(format!("fake-{i}"))
        .execute(pool)
        .await
        .expect("chunk written");
        offset += chunk_chars + 1;
    }
    LongJob {
        id,
        hash,
        format,
        chunk_keys,
    }
}

/// A sweeper of long joins as a worker replica `holder` runs it.
fn joiner(app: &TestApp, holder: Uuid) -> LongJoiner {
    LongJoiner::new(
        app.services.store.clone(),
        app.services.audio.clone(),
        &app.services.settings.batches,
        holder,
    )
}

async fn stack(env: Vec<(String, String)>) -> TestApp {
    TestApp::spawn_with(TestOptions {
        worker: false,
        env,
        ..TestOptions::default()
    })
    .await
}

/// `samples` 16-bit mono samples at 22,050 Hz as a WAV file, each sample
/// `seed` plus its index.
fn wav(samples: usize, seed: i16) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 22_050,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut out, spec).expect("WAV writer");
    for i in 0..samples {
        writer
            .write_sample(seed.wrapping_add(i as i16))
            .expect("sample");
    }
    writer.finalize().expect("WAV written");
    out.into_inner()
}

/// An MPEG-2 Layer III frame (64 kbps, 22.05 kHz: 208 bytes) whose body is
/// `fill`, with `tag` at its start when given (an Info frame's `Info`).
fn mp3_frame(fill: u8, tag: Option<&[u8]>) -> Vec<u8> {
    let mut frame = vec![0xff, 0xf3, 0x80, 0xc4];
    frame.resize(208, fill);
    if let Some(tag) = tag {
        frame[36..36 + tag.len()].copy_from_slice(tag);
    }
    frame
}

/// An MP3 file as vendors send it: an ID3v2 tag, an Info frame, then
/// `frames` audio frames; and those audio frames alone (what a join keeps).
fn mp3(frames: usize, fill: u8) -> (Vec<u8>, Vec<u8>) {
    let mut file = b"ID3\x04\x00\x00\x00\x00\x00\x05".to_vec();
    file.extend_from_slice(&[0; 5]);
    file.extend(mp3_frame(0, Some(b"Info")));
    let audio: Vec<u8> = (0..frames)
        .flat_map(|i| mp3_frame(fill + i as u8, None))
        .collect();
    file.extend_from_slice(&audio);
    (file, audio)
}

/// The chunk rows of long job `id` as they stand, to compare before and
/// after its join.
async fn chunk_rows(app: &TestApp, id: Uuid) -> Vec<(Uuid, String, Option<String>, String)> {
    ttsq_store::sqlx::query_as(
        "SELECT id, status, audio_hash, finished_at::text FROM tasks WHERE parent_id = $1
          ORDER BY chunk_index",
    )
    .bind(id)
    .fetch_all(app.services.store.pool())
    .await
    .expect("chunk rows")
}

#[tokio::test]
async fn a_joining_long_job_is_joined_into_its_own_object_and_succeeds_in_each_format() {
    let app = stack(Vec::new()).await;
    let chunk = |audio: Vec<u8>, duration_ms| ChunkFixture {
        audio,
        duration_ms,
        text: "Some words.".to_owned(),
        marks: None,
    };
    let pcm: Vec<Vec<u8>> = (0..3u8)
        .map(|i| vec![i + 1; 4410 + 2 * i as usize])
        .collect();
    let pcm_job = joining_long_job(
        &app,
        AudioFormat::Pcm,
        &pcm.iter()
            .map(|a| chunk(a.clone(), 100))
            .collect::<Vec<_>>(),
    )
    .await;
    let wavs = [wav(22_050, 0), wav(11_025, 1000), wav(2205, -1000)];
    let wav_job = joining_long_job(
        &app,
        AudioFormat::Wav,
        &[
            chunk(wavs[0].clone(), 1000),
            chunk(wavs[1].clone(), 500),
            chunk(wavs[2].clone(), 100),
        ],
    )
    .await;
    let mp3s = [mp3(3, 10), mp3(5, 50)];
    let mp3_job = joining_long_job(
        &app,
        AudioFormat::Mp3,
        &[chunk(mp3s[0].0.clone(), 78), chunk(mp3s[1].0.clone(), 130)],
    )
    .await;
    let before: Vec<_> = [
        chunk_rows(&app, pcm_job.id).await,
        chunk_rows(&app, wav_job.id).await,
        chunk_rows(&app, mp3_job.id).await,
    ]
    .concat();

    let sweep = joiner(&app, Uuid::new_v4()).sweep(16).await.expect("sweep");

    assert_eq!(
        (sweep.joined, sweep.reused, sweep.failed),
        (3, 0, 0),
        "{sweep:?}"
    );
    let joins = &ttsq_telemetry::metrics::get().long_job_joins;
    assert!(
        joins.with_label_values(&["joined"]).get() >= 3,
        "counted by outcome"
    );
    let mut wav_samples = Vec::new();
    for file in &wavs {
        let mut reader = hound::WavReader::new(Cursor::new(file)).expect("WAV");
        wav_samples.extend(reader.samples::<i16>().map(|s| s.expect("sample")));
    }
    let expected = [
        (&pcm_job, pcm.concat(), 300),
        (&wav_job, Vec::new(), 1600),
        (
            &mp3_job,
            [mp3s[0].1.clone(), mp3s[1].1.clone()].concat(),
            208,
        ),
    ];
    for (job, bytes, duration_ms) in expected {
        let key = job.hash.object_key(job.format);
        let joined = app.services.audio.get(&key).await.expect("joined object");
        if job.format == AudioFormat::Wav {
            let mut reader = hound::WavReader::new(Cursor::new(joined.to_vec())).expect("WAV");
            let samples: Vec<i16> = reader
                .samples::<i16>()
                .map(|s| s.expect("sample"))
                .collect();
            assert_eq!(samples, wav_samples, "the chunks' samples in order");
            assert_eq!(joined.len(), 44 + 2 * wav_samples.len());
        } else {
            assert_eq!(joined.to_vec(), bytes, "{} joined", job.format);
        }
        let object: AudioObject = app
            .services
            .store
            .find_audio(job.hash.as_str())
            .await
            .expect("find")
            .expect("the job's audio is indexed under its content hash");
        assert_eq!(object.s3_key, key);
        assert_eq!(object.bytes, joined.len() as i64);
        assert_eq!(object.sha256, hex_sha256(&joined), "hashed while streamed");
        assert_eq!(object.duration_ms, duration_ms);
        assert_eq!(object.provider, "fake-0");

        let (status, audio_hash, cache_hit, provider): (
            String,
            Option<String>,
            bool,
            Option<String>,
        ) = ttsq_store::sqlx::query_as(
            "SELECT status, audio_hash, cache_hit, provider FROM tasks WHERE id = $1",
        )
        .bind(job.id)
        .fetch_one(app.services.store.pool())
        .await
        .expect("the long job");
        assert_eq!(status, "succeeded");
        assert_eq!(audio_hash.as_deref(), Some(job.hash.as_str()));
        assert!(!cache_hit);
        assert_eq!(
            provider.as_deref(),
            Some("fake-0"),
            "its first chunk's provider"
        );
        let ledger = format!(
            "SELECT count(*) FILTER (WHERE billable_characters = 0 AND status = 'succeeded')
               FROM usage_ledger WHERE task_id = '{}'",
            job.id
        );
        assert_eq!(app.scalar(&ledger).await, 1, "its ledger row bills nothing");
        let closed = format!(
            "SELECT count(*) FROM long_jobs WHERE task_id = '{}' AND state = 'done'
                AND join_token IS NULL",
            job.id
        );
        assert_eq!(app.scalar(&closed).await, 1, "its join is closed");
    }
    let after: Vec<_> = [
        chunk_rows(&app, pcm_job.id).await,
        chunk_rows(&app, wav_job.id).await,
        chunk_rows(&app, mp3_job.id).await,
    ]
    .concat();
    assert_eq!(after, before, "the chunks are untouched");
    assert_eq!(
        app.scalar("SELECT count(*) FROM usage_ledger WHERE long_task_id IS NOT NULL")
            .await,
        0,
        "no chunk billed by the join"
    );

    // Nothing more to join.
    let again = joiner(&app, Uuid::new_v4()).sweep(16).await.expect("sweep");
    assert_eq!(again, Default::default());
}

#[tokio::test]
async fn an_equal_long_job_reuses_the_stored_audio_without_writing_it_again() {
    let app = stack(Vec::new()).await;
    let chunks = [ChunkFixture {
        audio: vec![7; 1000],
        duration_ms: 20,
        text: "One.".to_owned(),
        marks: None,
    }];
    let first = joining_long_job(&app, AudioFormat::Pcm, &chunks).await;
    joiner(&app, Uuid::new_v4()).sweep(16).await.expect("sweep");
    let stored = app
        .services
        .store
        .find_audio(first.hash.as_str())
        .await
        .expect("find")
        .expect("stored");
    // A second long job whose audio has the same hash: its object is
    // indexed already (the marker bytes show it is not rewritten).
    let second = joining_long_job(&app, AudioFormat::Pcm, &chunks).await;
    ttsq_store::sqlx::query("UPDATE tasks SET content_hash = $2 WHERE id = $1")
        .bind(second.id)
        .bind(first.hash.as_str())
        .execute(app.services.store.pool())
        .await
        .expect("same hash");
    app.services
        .audio
        .delete(&stored.s3_key)
        .await
        .expect("deleted");
    app.services
        .audio
        .put(&stored.s3_key, vec![1u8; 3].into(), "audio/L16")
        .await
        .expect("marker");

    let sweep = joiner(&app, Uuid::new_v4()).sweep(16).await.expect("sweep");

    assert_eq!((sweep.joined, sweep.reused), (0, 1), "{sweep:?}");
    let object = app
        .services
        .audio
        .get(&stored.s3_key)
        .await
        .expect("object");
    assert_eq!(object.to_vec(), vec![1u8; 3], "not written again");
    let sql = format!(
        "SELECT count(*) FROM tasks WHERE id = '{}' AND status = 'succeeded' AND audio_hash = '{}'",
        second.id, first.hash
    );
    assert_eq!(app.scalar(&sql).await, 1);
}

#[tokio::test]
async fn a_long_join_held_by_a_dead_replica_is_taken_over_and_stale_tokens_are_fenced_off() {
    let app = stack(Vec::new()).await;
    let chunks: Vec<ChunkFixture> = (0..2)
        .map(|i| ChunkFixture {
            audio: vec![i; 2000],
            duration_ms: 45,
            text: "A chunk.".to_owned(),
            marks: None,
        })
        .collect();
    let job = joining_long_job(&app, AudioFormat::Pcm, &chunks).await;
    let store = &app.services.store;
    let attempts = app.services.settings.batches.join_attempts;
    // A replica takes the job and dies (it never renews nor finishes).
    let dead = store
        .take_long_join_lease(
            Uuid::new_v4(),
            Uuid::new_v4(),
            Duration::from_millis(300),
            attempts,
        )
        .await
        .expect("take")
        .expect("the job was free");
    assert_eq!((dead.task_id, dead.attempt), (job.id, 1));
    let live = joiner(&app, Uuid::new_v4());
    let held = live.sweep(16).await.expect("sweep");
    assert_eq!(held, Default::default(), "a live lease is left alone");
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Another replica took it over: the dead one's token no longer counts.
    let other = store
        .take_long_join_lease(
            Uuid::new_v4(),
            Uuid::new_v4(),
            Duration::from_secs(60),
            attempts,
        )
        .await
        .expect("take")
        .expect("the expired lease is taken over");
    assert_eq!(other.attempt, 2);
    let bogus = AudioObject {
        hash: job.hash.as_str().to_owned(),
        s3_key: job.chunk_keys[0].clone(),
        bytes: 1,
        format: "pcm".into(),
        duration_ms: 1,
        provider: "stale".into(),
        sha256: "0".repeat(64),
        created_at: chrono::Utc::now(),
    };
    assert!(
        !store
            .finish_long_join(&dead, &bogus, "stale")
            .await
            .expect("finish")
    );
    assert!(!store.fail_long_join(&dead, "stale").await.expect("fail"));
    assert!(
        !store
            .renew_long_join_lease(&dead, Duration::from_secs(60))
            .await
            .expect("renew")
    );
    assert!(
        store
            .renew_long_join_lease(&other, Duration::from_secs(60))
            .await
            .expect("renew")
    );
    let status = format!(
        "SELECT count(*) FROM tasks WHERE id = '{}' AND status = 'processing'",
        job.id
    );
    assert_eq!(
        app.scalar(&status).await,
        1,
        "the stale token changed nothing"
    );
    assert!(
        store
            .find_audio(job.hash.as_str())
            .await
            .expect("find")
            .is_none()
    );

    // That replica dies too; a live sweeper takes over and joins.
    store
        .release_long_join_lease(&other, "stalled", Duration::ZERO)
        .await
        .expect("release");
    let taken_over = live.sweep(16).await.expect("sweep");

    assert_eq!(taken_over.joined, 1, "{taken_over:?}");
    let sql = format!(
        "SELECT join_attempts::bigint FROM long_jobs WHERE task_id = '{}'",
        job.id
    );
    assert_eq!(
        app.scalar(&sql).await,
        3,
        "the dead replicas' takes counted"
    );
    let done = format!(
        "SELECT count(*) FROM tasks WHERE id = '{}' AND status = 'succeeded'",
        job.id
    );
    assert_eq!(app.scalar(&done).await, 1);
    assert!(
        !store
            .finish_long_join(&dead, &bogus, "stale")
            .await
            .expect("finish")
    );
    let object = store
        .find_audio(job.hash.as_str())
        .await
        .expect("find")
        .expect("indexed");
    assert_eq!(object.bytes, 4000, "the join's row, not the stale one");
}

#[tokio::test]
async fn a_long_job_whose_chunk_audio_is_gone_fails_with_join_failed() {
    let app = stack(Vec::new()).await;
    app.execute("UPDATE tenants SET webhook_url = 'https://hooks.example.com/tts'")
        .await;
    let chunks: Vec<ChunkFixture> = (0..3)
        .map(|i| ChunkFixture {
            audio: wav(2205, i * 100),
            duration_ms: 100,
            text: "A chunk.".to_owned(),
            marks: None,
        })
        .collect();
    let job = joining_long_job(&app, AudioFormat::Wav, &chunks).await;
    app.services
        .audio
        .delete(&job.chunk_keys[1])
        .await
        .expect("deleted");

    let sweep = joiner(&app, Uuid::new_v4()).sweep(16).await.expect("sweep");

    assert_eq!((sweep.joined, sweep.failed), (0, 1), "{sweep:?}");
    let (status, code, message): (String, Option<String>, Option<String>) =
        ttsq_store::sqlx::query_as(
            "SELECT status, error_code, error_message FROM tasks WHERE id = $1",
        )
        .bind(job.id)
        .fetch_one(app.services.store.pool())
        .await
        .expect("the long job");
    assert_eq!(status, "failed");
    assert_eq!(code.as_deref(), Some("join_failed"));
    let message = message.unwrap_or_default();
    assert!(message.contains("chunk 2's audio is missing"), "{message}");
    let ledger = format!(
        "SELECT count(*) FROM usage_ledger WHERE task_id = '{}' AND status = 'failed'
            AND billable_characters = 0",
        job.id
    );
    assert_eq!(app.scalar(&ledger).await, 1);
    let hooks = format!(
        "SELECT count(*) FROM webhook_deliveries WHERE task_id = '{}' AND event = 'task.completed'",
        job.id
    );
    assert_eq!(app.scalar(&hooks).await, 1, "its webhook is queued");
    assert!(
        app.services
            .audio
            .head(&job.hash.object_key(AudioFormat::Wav))
            .await
            .expect("head")
            .is_none(),
        "nothing stored under the job's key"
    );
}

#[tokio::test]
async fn a_long_job_abandoned_by_every_attempt_fails_with_join_failed() {
    let app = stack(vec![("TTSQ_BATCHES_JOIN_ATTEMPTS".into(), "3".into())]).await;
    let chunks = [ChunkFixture {
        audio: vec![3; 100],
        duration_ms: 2,
        text: "Short.".to_owned(),
        marks: None,
    }];
    let job = joining_long_job(&app, AudioFormat::Pcm, &chunks).await;
    for attempt in 1..=3 {
        let lease = app
            .services
            .store
            .take_long_join_lease(
                Uuid::new_v4(),
                Uuid::new_v4(),
                Duration::from_millis(200),
                3,
            )
            .await
            .expect("take")
            .expect("the lease is free again");
        assert_eq!(lease.attempt, attempt);
        // The replica dies: its 200 ms lease runs out.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let sweep = joiner(&app, Uuid::new_v4()).sweep(16).await.expect("sweep");

    assert_eq!((sweep.joined, sweep.failed), (0, 1), "{sweep:?}");
    let message: Option<String> = ttsq_store::sqlx::query_scalar(
        "SELECT error_message FROM tasks WHERE id = $1 AND status = 'failed' AND error_code = 'join_failed'",
    )
    .bind(job.id)
    .fetch_one(app.services.store.pool())
    .await
    .expect("the failed long job");
    assert!(message.unwrap_or_default().contains("3 attempts"));
    let closed = format!(
        "SELECT count(*) FROM long_jobs WHERE task_id = '{}' AND state = 'done'",
        job.id
    );
    assert_eq!(app.scalar(&closed).await, 1);
}

/// Word marks of `text` (offsets into it from 0), spread evenly over
/// `duration_ms`, the last ending at its end.
fn word_marks(text: &str, duration_ms: u32) -> Vec<Mark> {
    let mut words = Vec::new();
    let mut at = 0u32;
    for word in text.split(' ') {
        let len = word.chars().count() as u32;
        words.push((word.trim_end_matches(['.', '!', '?']).to_owned(), at));
        at += len + 1;
    }
    let count = words.len() as u32;
    let each = duration_ms / count;
    words
        .into_iter()
        .zip(0u32..)
        .map(|((value, start), i)| Mark {
            kind: MarkKind::Word,
            start_ms: i * each,
            end_ms: if i + 1 == count {
                duration_ms
            } else {
                (i + 1) * each
            },
            start: Some(start),
            end: Some(start + value.chars().count() as u32),
            value,
        })
        .collect()
}

#[tokio::test]
async fn the_chunks_marks_are_merged_continuous_and_point_into_the_whole_text() {
    let app = stack(Vec::new()).await;
    let texts = [
        "The first chunk speaks of Dr. Watson.",
        "Zweite Stücke folgen schnell!",
        "And a third one ends it all.",
    ];
    // 1 s, 0.5 s and 0.8 s of WAV at 22,050 Hz.
    let samples = [22_050usize, 11_025, 17_640];
    let chunks: Vec<ChunkFixture> = texts
        .iter()
        .zip(samples)
        .map(|(text, samples)| {
            let duration_ms = (samples * 1000 / 22_050) as i32;
            ChunkFixture {
                audio: wav(samples, 0),
                duration_ms,
                text: (*text).to_owned(),
                marks: Some(word_marks(text, duration_ms as u32)),
            }
        })
        .collect();
    let job = joining_long_job(&app, AudioFormat::Wav, &chunks).await;

    let sweep = joiner(&app, Uuid::new_v4()).sweep(16).await.expect("sweep");

    assert_eq!(sweep.joined, 1, "{sweep:?}");
    let json = app
        .services
        .audio
        .get(&job.hash.marks_key())
        .await
        .expect("the long job's marks beside its audio");
    let marks: Vec<Mark> = serde_json::from_slice(&json).expect("marks");
    let per_chunk: Vec<usize> = chunks
        .iter()
        .map(|c| c.marks.as_ref().map_or(0, Vec::len))
        .collect();
    assert_eq!(marks.len(), per_chunk.iter().sum::<usize>());
    let whole: Vec<char> = texts.join(" ").chars().collect();
    for mark in &marks {
        let (start, end) = (
            mark.start.expect("start") as usize,
            mark.end.expect("end") as usize,
        );
        let spoken: String = whole[start..end].iter().collect();
        assert_eq!(spoken, mark.value, "offsets point into the whole text");
    }
    let mut at = 0;
    let mut chunk_start_ms = 0;
    let mut previous_end = 0;
    for (count, chunk) in per_chunk.iter().zip(&chunks) {
        let own = &marks[at..at + count];
        assert_eq!(
            own[0].start_ms, chunk_start_ms,
            "shifted by the chunks before it"
        );
        assert!(
            own[0].start_ms >= previous_end,
            "{own:?} starts before {previous_end}"
        );
        for pair in own.windows(2) {
            assert!(pair[1].start_ms >= pair[0].end_ms, "{pair:?}");
        }
        previous_end = own.iter().map(|m| m.end_ms).max().unwrap_or(0);
        chunk_start_ms += chunk.duration_ms as u32;
        at += count;
    }
    assert_eq!(
        previous_end, 2300,
        "the last mark ends with the joined audio"
    );
    // The API serves them for the long job.
    let (code,): (i64,) = ttsq_store::sqlx::query_as(
        "SELECT count(*) FROM tasks WHERE id = $1 AND status = 'succeeded' AND marks = '{word}'",
    )
    .bind(job.id)
    .fetch_one(app.services.store.pool())
    .await
    .expect("long job");
    assert_eq!(code, 1);
}

#[tokio::test]
async fn a_long_job_is_never_taken_for_an_orphan_of_a_dead_replica() {
    let app = stack(Vec::new()).await;
    let chunks = [ChunkFixture {
        audio: vec![5; 100],
        duration_ms: 2,
        text: "Waiting.".to_owned(),
        marks: None,
    }];
    let job = joining_long_job(&app, AudioFormat::Pcm, &chunks).await;
    // Processing for an hour, claimed by no replica: as a long job is
    // while its chunks are synthesized.
    app.execute(&format!(
        "UPDATE tasks SET started_at = now() - interval '1 hour' WHERE id = '{}'",
        job.id
    ))
    .await;

    app.services
        .store
        .recover_orphans(Duration::from_secs(1), Duration::from_secs(1))
        .await
        .expect("recovery");

    let sql = format!(
        "SELECT count(*) FROM tasks WHERE id = '{}' AND status = 'processing'",
        job.id
    );
    assert_eq!(app.scalar(&sql).await, 1, "not returned to the queue");
}
