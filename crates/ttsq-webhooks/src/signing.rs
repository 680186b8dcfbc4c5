//! Per-tenant secrets derived from the deployment's signing key, and the
//! Standard Webhooks signature they make (<https://www.standardwebhooks.com>,
//! spec 1.0.0, "Signature scheme" and "Webhook headers").

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use ttsq_store::Store;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// How a symmetric secret is shown to tenants, before the base64 of its key.
const SECRET_PREFIX: &str = "whsec_";

/// A tenant's webhook secret: the HMAC-SHA256 key its events are signed
/// with. Its `Debug` shows no key.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantSecret([u8; 32]);

impl TenantSecret {
    /// The tenant's secret of `version`, derived from the deployment's
    /// `signing_key` (so no secret is stored): HMAC-SHA256 of
    /// `ttsq-webhook-secret:{tenant_id}:{version}`, 32 bytes, above the
    /// spec's minimum of 24.
    pub fn derive(signing_key: &SecretString, tenant_id: Uuid, version: i32) -> Self {
        // HMAC takes keys of any length.
        let mut mac = HmacSha256::new_from_slice(signing_key.expose_secret().as_bytes())
            .expect("HMAC accepts any key length");
        mac.update(format!("ttsq-webhook-secret:{tenant_id}:{version}").as_bytes());
        Self(mac.finalize().into_bytes().into())
    }

    /// `whsec_<base64 of the key>`: the form every Standard Webhooks library
    /// takes, and the only form shown to tenants.
    pub fn shown(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(self.0))
    }

    /// `v1,<base64 of HMAC-SHA256("{id}.{timestamp}.{body}")>`.
    fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        sign_with(&self.0, id, timestamp, body)
    }
}

impl std::fmt::Debug for TenantSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantSecret(…)")
    }
}

/// A tenant's signing secret of `version`, as shown to the tenant
/// (`whsec_<base64>`).
pub fn tenant_secret(signing_key: &SecretString, tenant_id: Uuid, version: i32) -> String {
    TenantSecret::derive(signing_key, tenant_id, version).shown()
}

fn sign_with(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header of event `id` sent at `timestamp` (unix
/// seconds) with `body`: one `v1,<base64>` per secret, space-separated, so
/// a receiver holding either secret during a rotation verifies.
pub fn signature_header(secrets: &[TenantSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The secrets that sign a tenant's events now: current first, then the
/// previous one during its grace period.
pub async fn secrets(
    store: &Store,
    signing_key: Option<&SecretString>,
    tenant_id: Uuid,
) -> Result<Vec<TenantSecret>, ttsq_store::StoreError> {
    let Some(key) = signing_key else {
        return Ok(Vec::new());
    };
    let settings = store.tenant_webhook(tenant_id).await?;
    let mut secrets = vec![TenantSecret::derive(
        key,
        tenant_id,
        settings.secret_version,
    )];
    if let Some(previous) = settings.previous_version {
        secrets.push(TenantSecret::derive(key, tenant_id, previous));
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector of the reference library's `test_sign_function`
    /// (standard-webhooks/standard-webhooks,
    /// `libraries/python/tests/test_webhooks.py`): secret
    /// `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`,
    /// id `msg_p5jXN8AQM9LWM0D4loKWxJek`, timestamp 1614265330, body
    /// `{"test": 2432232314}`.
    #[test]
    fn signs_the_reference_librarys_test_vector() {
        let key = BASE64
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("base64");
        assert_eq!(
            sign_with(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_header_lists_one_signature_per_secret_separated_by_spaces() {
        let key = SecretString::from("k");
        let current = TenantSecret::derive(&key, Uuid::nil(), 2);
        let previous = TenantSecret::derive(&key, Uuid::nil(), 1);
        let header = signature_header(&[current.clone(), previous.clone()], "id", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [current.sign("id", 1, b"{}"), previous.sign("id", 1, b"{}")]
        );
        assert_ne!(parts[0], parts[1]);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        // The id and the timestamp are signed, not only the body.
        assert_ne!(
            current.sign("id", 1, b"{}"),
            current.sign("other", 1, b"{}")
        );
        assert_ne!(current.sign("id", 1, b"{}"), current.sign("id", 2, b"{}"));
    }

    #[test]
    fn a_shown_secret_is_whsec_and_the_base64_of_the_signing_key() {
        let secret = TenantSecret::derive(&SecretString::from("k"), Uuid::nil(), 1);
        let shown = secret.shown();
        let key = BASE64
            .decode(shown.strip_prefix("whsec_").expect("whsec_ prefix"))
            .expect("base64");
        assert_eq!(key, secret.0);
        assert_eq!(sign_with(&key, "id", 1, b"x"), secret.sign("id", 1, b"x"));
        assert!(!format!("{secret:?}").contains(&shown[6..]));
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
    }
}
