//! The raw limits ttsq is compared with, measured on the same services in
//! the same run: RabbitMQ, S3 and Postgres driven directly.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_s3::{
    Client,
    primitives::ByteStream,
    types::{Delete, ObjectIdentifier},
};
use bytes::Bytes;
use futures::{StreamExt as _, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use secrecy::SecretString;
use sqlx::{Connection as _, PgConnection};
use ttsq_config::S3Settings;
use uuid::Uuid;

use crate::{
    env::Env,
    report::{Table, f1, int, per_sec},
};

/// Size of a job message on the queue (ids, dialect, attempt, traceparent).
const MESSAGE_BYTES: usize = 200;
/// Publishes awaiting their confirm at once in the pipelined publish.
const CONFIRM_WINDOW: usize = 1_000;
/// Rows per statement (and transaction) of the batched insert.
const PG_BATCH: usize = 1_000;

/// The measured limits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baselines {
    /// Persistent messages published with confirms per second.
    pub publish_per_sec: f64,
    /// Messages consumed and acked per second.
    pub consume_per_sec: f64,
    /// PutObject per second.
    pub put_per_sec: f64,
    /// HeadObject + PutObject pairs per second (what ttsq's conditional put does).
    pub head_put_per_sec: f64,
    /// Rows inserted per second with batched UNNEST inserts.
    pub pg_rows_per_sec: f64,
    /// Object size used, in bytes.
    pub object_bytes: usize,
}

impl Baselines {
    /// The slower of publish and consume: what one message costs the broker
    /// end to end.
    pub fn broker_per_sec(&self) -> f64 {
        self.publish_per_sec.min(self.consume_per_sec)
    }
}

/// Sizes of the baseline runs.
pub struct Sizes {
    /// Messages through the broker.
    pub messages: usize,
    /// Objects PUT.
    pub objects: usize,
    /// Concurrent PUTs.
    pub s3_concurrency: usize,
    /// Rows inserted.
    pub rows: usize,
}

/// Measures all three and prints their table.
pub async fn measure(env: &Env, sizes: &Sizes, object_bytes: usize) -> anyhow::Result<Baselines> {
    eprintln!("== baselines");
    let mut table = Table::new(
        "Baselines: the raw limits of the parts (same services, same run)",
        &["measure", "operations", "seconds", "ops/s"],
    );
    eprintln!("  broker: {} persistent messages", sizes.messages);
    let (publish, consume) = broker(&env.amqp_url, sizes.messages).await?;
    table.row(vec![
        format!("RabbitMQ publish, persistent, quorum queue, confirms pipelined ({CONFIRM_WINDOW} in flight), {MESSAGE_BYTES} B"),
        int(sizes.messages as f64),
        f1(publish.as_secs_f64()),
        int(per_sec(sizes.messages as f64, publish.as_secs_f64())),
    ]);
    table.row(vec![
        "RabbitMQ consume + ack (prefetch 256)".to_owned(),
        int(sizes.messages as f64),
        f1(consume.as_secs_f64()),
        int(per_sec(sizes.messages as f64, consume.as_secs_f64())),
    ]);
    eprintln!(
        "  s3: {} PUTs of {object_bytes} B, {} at once",
        sizes.objects, sizes.s3_concurrency
    );
    let client = s3_client(env).await?;
    ensure_bucket(&client, &env.bucket).await?;
    let put = s3_puts(&client, &env.bucket, sizes, object_bytes, false).await?;
    let head_put = s3_puts(&client, &env.bucket, sizes, object_bytes, true).await?;
    table.row(vec![
        format!(
            "S3 PutObject, {object_bytes} B, {} concurrent",
            sizes.s3_concurrency
        ),
        int(sizes.objects as f64),
        f1(put.as_secs_f64()),
        int(per_sec(sizes.objects as f64, put.as_secs_f64())),
    ]);
    table.row(vec![
        format!(
            "S3 HeadObject + PutObject (ttsq's conditional put), {} concurrent",
            sizes.s3_concurrency
        ),
        int(sizes.objects as f64),
        f1(head_put.as_secs_f64()),
        int(per_sec(sizes.objects as f64, head_put.as_secs_f64())),
    ]);
    eprintln!("  postgres: {} rows", sizes.rows);
    let (batched, single, single_rows) = postgres(&env.admin_url, sizes.rows).await?;
    table.row(vec![
        format!("Postgres INSERT … UNNEST, {PG_BATCH} rows per statement and transaction"),
        int(sizes.rows as f64),
        f1(batched.as_secs_f64()),
        int(per_sec(sizes.rows as f64, batched.as_secs_f64())),
    ]);
    table.row(vec![
        "Postgres INSERT, one row per transaction (for contrast)".to_owned(),
        int(single_rows as f64),
        f1(single.as_secs_f64()),
        int(per_sec(single_rows as f64, single.as_secs_f64())),
    ]);
    table.print();
    Ok(Baselines {
        publish_per_sec: per_sec(sizes.messages as f64, publish.as_secs_f64()),
        consume_per_sec: per_sec(sizes.messages as f64, consume.as_secs_f64()),
        put_per_sec: per_sec(sizes.objects as f64, put.as_secs_f64()),
        head_put_per_sec: per_sec(sizes.objects as f64, head_put.as_secs_f64()),
        pg_rows_per_sec: per_sec(sizes.rows as f64, batched.as_secs_f64()),
        object_bytes,
    })
}

/// Publish (pipelined confirms) then consume + ack `count` messages.
async fn broker(url: &str, count: usize) -> anyhow::Result<(Duration, Duration)> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let queue = format!("ttsq-bench-{}.raw", Uuid::new_v4().simple());
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    let body = vec![b'x'; MESSAGE_BYTES];
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        in_flight.push(confirm);
        if in_flight.len() >= CONFIRM_WINDOW {
            check_confirm(in_flight.next().await)?;
        }
    }
    while let Some(confirmation) = in_flight.next().await {
        check_confirm(Some(confirmation))?;
    }
    let publish = started.elapsed();

    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(256, BasicQosOptions { global: false })
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut received = 0;
    while received < count {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .context("no delivery within 30 s")?
            .context("the consumer ended")??;
        delivery.ack(BasicAckOptions::default()).await?;
        received += 1;
    }
    let consume = started.elapsed();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "baseline done".into()).await?;
    Ok((publish, consume))
}

fn check_confirm(confirmation: Option<Result<Confirmation, lapin::Error>>) -> anyhow::Result<()> {
    match confirmation {
        Some(Ok(Confirmation::Ack(_))) => Ok(()),
        Some(Ok(other)) => anyhow::bail!("the broker did not confirm: {other:?}"),
        Some(Err(err)) => Err(err.into()),
        None => Ok(()),
    }
}

/// The S3 client ttsq itself builds (`ttsq_audio::s3_client`) for the
/// run's server, so the raw limit is measured through the same transport.
pub async fn s3_client(env: &Env) -> anyhow::Result<Client> {
    let settings = S3Settings {
        endpoint: env.s3_endpoint.clone(),
        region: "us-east-1".to_owned(),
        bucket: env.bucket.clone(),
        access_key_id: env.s3_key.clone(),
        secret_access_key: SecretString::from(env.s3_secret.clone()),
        force_path_style: true,
        create_bucket: false,
        presign_ttl_secs: 3600,
        conditional_writes: false,
    };
    ttsq_audio::s3_client(&settings)
        .await
        .context("Failed to build the S3 client")
}

async fn ensure_bucket(client: &Client, bucket: &str) -> anyhow::Result<()> {
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .context("creating the bench bucket")?;
    Ok(())
}

async fn s3_puts(
    client: &Client,
    bucket: &str,
    sizes: &Sizes,
    object_bytes: usize,
    head_first: bool,
) -> anyhow::Result<Duration> {
    let body = Bytes::from(vec![7u8; object_bytes]);
    let run = Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..sizes.objects)
        .map(|i| {
            let key = format!("baseline/{run}/{i}");
            let body = body.clone();
            async move {
                if head_first {
                    let head = client.head_object().bucket(bucket).key(&key).send().await;
                    if head.is_ok() {
                        anyhow::bail!("{key} exists already");
                    }
                }
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .content_type("audio/wav")
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .with_context(|| format!("PUT {key}"))?;
                Ok(())
            }
        })
        .buffer_unordered(sizes.s3_concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    for result in results {
        result?;
    }
    Ok(elapsed)
}

/// Deletes every object of the run's bucket, then the bucket.
pub async fn empty_bucket(env: &Env) -> anyhow::Result<()> {
    let client = s3_client(env).await?;
    if client
        .head_bucket()
        .bucket(&env.bucket)
        .send()
        .await
        .is_err()
    {
        return Ok(());
    }
    eprintln!("emptying bucket {}", env.bucket);
    loop {
        let listing = client
            .list_objects_v2()
            .bucket(&env.bucket)
            .max_keys(1000)
            .send()
            .await?;
        let keys: Vec<ObjectIdentifier> = listing
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
            .collect();
        if keys.is_empty() {
            break;
        }
        client
            .delete_objects()
            .bucket(&env.bucket)
            .delete(Delete::builder().set_objects(Some(keys)).build()?)
            .send()
            .await?;
    }
    client.delete_bucket().bucket(&env.bucket).send().await?;
    Ok(())
}

/// Batched UNNEST inserts of `rows` rows, and a few hundred rows one
/// transaction each, into a scratch database.
async fn postgres(admin_url: &str, rows: usize) -> anyhow::Result<(Duration, Duration, usize)> {
    let database = format!("ttsq_bench_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("the admin URL has no database part")?;
    let result = async {
        let mut db = PgConnection::connect(&format!("{base}/{database}")).await?;
        sqlx::query(
            "CREATE TABLE tasks (
                id uuid PRIMARY KEY,
                tenant_id uuid NOT NULL,
                status text NOT NULL,
                text text NOT NULL,
                dialect text NOT NULL,
                voice text NOT NULL,
                format text NOT NULL,
                content_hash text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&mut db)
        .await?;
        let tenant = Uuid::new_v4();
        let started = Instant::now();
        let mut done = 0;
        while done < rows {
            let n = PG_BATCH.min(rows - done);
            let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
            let texts: Vec<String> = (done..done + n)
                .map(|i| format!("Benchmark sentence number {i}."))
                .collect();
            let hashes: Vec<String> = ids.iter().map(|id| format!("{id:x}{id:x}")).collect();
            let mut tx = db.begin().await?;
            sqlx::query(
                "INSERT INTO tasks (id, tenant_id, status, text, dialect, voice, format, content_hash)
                 SELECT id, $2, 'queued', text, 'en-gb', 'rachel', 'wav', hash
                   FROM UNNEST($1::uuid[], $3::text[], $4::text[]) AS t(id, text, hash)",
            )
            .bind(&ids)
            .bind(tenant)
            .bind(&texts)
            .bind(&hashes)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            done += n;
        }
        let batched = started.elapsed();
        let single_rows = (rows / 20).clamp(50, 2_000);
        let started = Instant::now();
        for i in 0..single_rows {
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO tasks (id, tenant_id, status, text, dialect, voice, format, content_hash)
                 VALUES ($1, $2, 'queued', $3, 'en-gb', 'rachel', 'wav', $4)",
            )
            .bind(id)
            .bind(tenant)
            .bind(format!("Single sentence number {i}."))
            .bind(format!("{id:x}"))
            .execute(&mut db)
            .await?;
        }
        let single = started.elapsed();
        db.close().await?;
        anyhow::Ok((batched, single, single_rows))
    }
    .await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    result
}
