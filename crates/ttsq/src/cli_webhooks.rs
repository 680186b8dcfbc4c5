//! `ttsq webhooks …`: tenants' webhook URL and signing secret, and replaying
//! deliveries.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use ttsq_config::Settings;
use ttsq_store::{Store, TenantWebhook};
use ttsq_webhooks::{TargetGuard, tenant_secret};
use uuid::Uuid;

/// Who the CLI records as the actor of its changes.
fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// `ttsq webhooks …`.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Set a tenant's default webhook URL (events of tasks and batches
    /// without a `callback_url` go there), or clear it with --clear.
    Url {
        /// The tenant's name.
        tenant: String,
        /// The URL; it must resolve to public addresses unless allowlisted
        /// in webhooks.allow_private.
        url: Option<String>,
        /// Remove the default URL.
        #[arg(long, conflicts_with = "url")]
        clear: bool,
    },
    /// Print a tenant's current signing secret on stdout, as `whsec_<base64>`:
    /// the form any Standard Webhooks library (and `ttsq_client::WebhookVerifier`)
    /// takes.
    Secret {
        /// The tenant's name.
        tenant: String,
    },
    /// Start signing a tenant's events with a new secret, printed on stdout;
    /// the old one keeps signing beside it for webhooks.secret_grace_secs.
    RotateSecret {
        /// The tenant's name.
        tenant: String,
    },
    /// Deliver events again (their attempt count starts over): one by id,
    /// or every one created since a time.
    Replay {
        /// Only this delivery.
        #[arg(long, required_unless_present = "since")]
        id: Option<Uuid>,
        /// Every delivery created at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<DateTime<Utc>>,
    },
}

/// Runs `ttsq webhooks …`.
#[expect(clippy::print_stdout, reason = "a secret asked for belongs on stdout")]
pub async fn run(
    settings: &Settings,
    store: &Store,
    command: WebhooksCommand,
) -> anyhow::Result<()> {
    let secret_of = |settings_now: &TenantWebhook| -> anyhow::Result<String> {
        let key = settings
            .webhooks
            .enabled_key()
            .context("webhooks are off: set TTSQ_WEBHOOKS_SIGNING_KEY")?;
        Ok(tenant_secret(
            key,
            settings_now.tenant_id,
            settings_now.secret_version,
        ))
    };
    match command {
        WebhooksCommand::Url { tenant, url, clear } => {
            anyhow::ensure!(
                url.is_some() || clear,
                "give the URL, or --clear to remove it"
            );
            if let Some(url) = &url {
                let guard = TargetGuard::new(
                    settings
                        .webhooks
                        .allowed_networks()
                        .map_err(anyhow::Error::msg)?,
                );
                guard
                    .check(url)
                    .await
                    .map_err(|e| anyhow::anyhow!("webhook URL refused: {e}"))?;
            }
            let now = store
                .set_tenant_webhook_url(&tenant, url.as_deref(), &actor())
                .await?;
            eprintln!(
                "tenant `{tenant}`: webhook URL {}",
                now.webhook_url.as_deref().unwrap_or("(none)")
            );
        }
        WebhooksCommand::Secret { tenant } => {
            let id = store.tenant_id_by_name(&tenant).await?;
            let now = store.tenant_webhook(id).await?;
            println!("{}", secret_of(&now)?);
        }
        WebhooksCommand::RotateSecret { tenant } => {
            let grace = Duration::from_secs(settings.webhooks.secret_grace_secs);
            let now = store
                .rotate_webhook_secret(&tenant, grace, &actor())
                .await?;
            println!("{}", secret_of(&now)?);
            eprintln!(
                "tenant `{tenant}`: secret version {}; the previous one signs too for {} s",
                now.secret_version,
                grace.as_secs()
            );
        }
        WebhooksCommand::Replay { id, since } => {
            let n = store.replay_webhooks(id, since).await?;
            eprintln!("{n} webhook delivery(ies) queued again");
        }
    }
    Ok(())
}
