//! Per-tenant secrets derived from the deployment's signing key, and the
//! signature header they make.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use ttsq_store::Store;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// A tenant's signing secret of `version`, as shown to the tenant.
pub fn tenant_secret(signing_key: &SecretString, tenant_id: Uuid, version: i32) -> String {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(signing_key.expose_secret().as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(format!("ttsq-webhook-secret:{tenant_id}:{version}").as_bytes());
    format!("whsec_{}", hex::encode(mac.finalize().into_bytes()))
}

/// `t=<timestamp>,v1=<hex>[,v1=<hex>…]`: one signature per secret.
pub fn signature_header(secrets: &[String], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let mut mac =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    header
}

/// The secrets that sign a tenant's events now: current first, then the
/// previous one during its grace period.
pub async fn secrets(
    store: &Store,
    signing_key: Option<&SecretString>,
    tenant_id: Uuid,
) -> Result<Vec<String>, ttsq_store::StoreError> {
    let Some(key) = signing_key else {
        return Ok(Vec::new());
    };
    let settings = store.tenant_webhook(tenant_id).await?;
    let mut secrets = vec![tenant_secret(key, tenant_id, settings.secret_version)];
    if let Some(previous) = settings.previous_version {
        secrets.push(tenant_secret(key, tenant_id, previous));
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_timestamp_and_body_with_every_secret() {
        let header = signature_header(&["a".into(), "b".into()], 1_700_000_000, b"{}");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts.len(), 3);
        let mut mac = HmacSha256::new_from_slice(b"a").unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(
            parts[1],
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        );
        assert_ne!(parts[1], parts[2]);
    }

    #[test]
    fn tenant_secrets_differ_by_version_and_tenant() {
        let key = SecretString::from("k");
        let t = Uuid::nil();
        assert_ne!(tenant_secret(&key, t, 1), tenant_secret(&key, t, 2));
        assert_ne!(
            tenant_secret(&key, t, 1),
            tenant_secret(&key, Uuid::max(), 1)
        );
        assert!(tenant_secret(&key, t, 1).starts_with("whsec_"));
    }
}
