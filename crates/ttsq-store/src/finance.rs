//! Finance access: a database role that reads usage and nothing else.
//!
//! Finance reads usage straight from Postgres, with a role that may
//! `SELECT` the finance relations ([`FINANCE_RELATIONS`]: the two usage
//! views, the ledger and the tenants' names) and nothing else: no texts,
//! tasks, keys, webhook secrets nor the audit log, and no write anywhere.
//! The views run with their owner's rights, so reading them needs no grant
//! on `tenants`.
//!
//! [`Store::grant_finance_role`] (`ttsq migrate --finance-role ROLE`, as the
//! owner) creates the role when it is missing (`NOLOGIN`: a group role that
//! logins are made members of), grants it and records it in
//! `finance_roles`. A migration that replaces a view drops the view's
//! grants, so [`Store::regrant_finance_roles`] grants every recorded role
//! again: [`Store::migrate`] runs it after applying migrations, and `ttsq
//! migrate` on every run.
//!
//! [`Store::check_finance_access`] is what a reader checks first, instead of
//! migrating (which a reader may not): that the schema has the finance
//! relations and that the connected role may read them.

use sqlx::{Postgres, Transaction};

use crate::{
    Store, StoreError,
    grants::{GRANT_LOCK, existing_grantee, quote_ident},
};

/// What finance may read: `SELECT` on these, and nothing else.
pub const FINANCE_RELATIONS: [&str; 4] = [
    "usage_daily",
    "usage_monthly",
    "usage_ledger",
    "usage_tenants",
];

/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// How many offending relations an error names at most.
const NAMED: i64 = 5;

/// What [`Store::regrant_finance_roles`] did for one recorded role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Regrant {
    /// Granted again.
    Granted(String),
    /// The role no longer exists; it stays recorded, and is granted again
    /// once it exists.
    Missing(String),
    /// Left as it was, and why (it may write, or reads more than finance).
    Refused(String, String),
}

impl Store {
    /// Gives `role` finance access: `SELECT` on [`FINANCE_RELATIONS`] and
    /// nothing else in the current schema (earlier grants to it there are
    /// taken back), and records it so that later runs grant it again.
    /// Creates it `NOLOGIN` when it does not exist (the connected role needs
    /// `CREATEROLE` for that). Returns whether it was created.
    ///
    /// Refuses a superuser, the connected role itself, and a role that may
    /// write any relation of the schema or still read more than finance
    /// through `PUBLIC` or a role it is a member of; then nothing changes.
    pub async fn grant_finance_role(&self, role: &str) -> Result<bool, StoreError> {
        if role.is_empty() || role.len() > 63 || role.contains('\0') {
            return Err(StoreError::Invalid(format!(
                "finance role: `{role}` is not a role name (1 to 63 bytes)"
            )));
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(GRANT_LOCK)
            .execute(&mut *tx)
            .await?;
        let created = if existing_grantee(&mut *tx, role, "finance").await? {
            false
        } else {
            create_role(&mut tx, role).await?;
            true
        };
        grant(&mut tx, role).await?;
        sqlx::query("INSERT INTO finance_roles (role) VALUES ($1) ON CONFLICT (role) DO NOTHING")
            .bind(role)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Grants every role recorded by [`Store::grant_finance_role`] again,
    /// each in a transaction of its own; a role that is gone or now refused
    /// is reported and left as it is. Run as the owner; a role that may not
    /// read the record (the service role, whose `ttsq migrate` on a migrated
    /// database only checks what is applied) has nothing to grant.
    pub async fn regrant_finance_roles(&self) -> Result<Vec<Regrant>, StoreError> {
        let readable: bool = sqlx::query_scalar(
            "SELECT coalesce(has_table_privilege(to_regclass('finance_roles'), 'SELECT'), false)",
        )
        .fetch_one(&self.pool)
        .await?;
        if !readable {
            return Ok(Vec::new());
        }
        let roles: Vec<(String, bool, bool)> = sqlx::query_as(
            "SELECT f.role, r.rolname IS NOT NULL, coalesce(r.rolsuper OR r.rolname = current_user, false)
               FROM finance_roles f
               LEFT JOIN pg_roles r ON r.rolname = f.role
              ORDER BY f.role",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut done = Vec::with_capacity(roles.len());
        for (role, exists, unbound) in roles {
            if !exists {
                done.push(Regrant::Missing(role));
                continue;
            }
            if unbound {
                done.push(Regrant::Refused(
                    role,
                    "a superuser or the owner: no grant can restrict it".to_owned(),
                ));
                continue;
            }
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(GRANT_LOCK)
                .execute(&mut *tx)
                .await?;
            match grant(&mut tx, &role).await {
                Ok(()) => {
                    tx.commit().await?;
                    done.push(Regrant::Granted(role));
                }
                Err(StoreError::Invalid(why)) => done.push(Regrant::Refused(role, why)),
                Err(other) => return Err(other),
            }
        }
        Ok(done)
    }

    /// [`Store::regrant_finance_roles`] after migrations were applied,
    /// logging the roles it could not grant.
    pub(crate) async fn regrant_finance_roles_after_migrating(&self) -> Result<(), StoreError> {
        for outcome in self.regrant_finance_roles().await? {
            match outcome {
                Regrant::Granted(_) => {}
                Regrant::Missing(role) => {
                    tracing::warn!(%role, "finance role recorded but gone; not granted");
                }
                Regrant::Refused(role, why) => {
                    tracing::warn!(%role, %why, "finance role not granted again");
                }
            }
        }
        Ok(())
    }

    /// Checks, without migrating, that the schema holds the finance
    /// relations and that the connected role may read them: what `ttsq
    /// usage` checks first, as a finance role may not even read sqlx's
    /// record of migrations. [`StoreError::Schema`] says what is missing.
    pub async fn check_finance_access(&self) -> Result<(), StoreError> {
        let relations: Vec<(String, bool, Option<bool>)> = sqlx::query_as(
            "SELECT r, c IS NOT NULL, has_table_privilege(c, 'SELECT')
               FROM unnest($1::text[]) WITH ORDINALITY AS f (r, n)
               CROSS JOIN LATERAL to_regclass(r) AS c
              ORDER BY n",
        )
        .bind(&FINANCE_RELATIONS[..])
        .fetch_all(&self.pool)
        .await?;
        let missing: Vec<&str> = relations
            .iter()
            .filter(|(_, exists, _)| !exists)
            .map(|(name, _, _)| name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::Schema(format!(
                "the database has no {}: it is not migrated to this version of ttsq; \
                 run `ttsq migrate` as the owner role",
                missing.join(", ")
            )));
        }
        let unreadable: Vec<&str> = relations
            .iter()
            .filter(|(_, _, readable)| *readable != Some(true))
            .map(|(name, _, _)| name.as_str())
            .collect();
        if !unreadable.is_empty() {
            let me: String = sqlx::query_scalar("SELECT current_user::text")
                .fetch_one(&self.pool)
                .await?;
            return Err(StoreError::Schema(format!(
                "database role {me} may not read {}: give it finance access with \
                 `ttsq migrate --finance-role {me}` (as the owner role), or make it \
                 a member of a finance role",
                unreadable.join(", ")
            )));
        }
        Ok(())
    }
}

/// `CREATE ROLE role NOLOGIN`, or why the connected role may not.
async fn create_role(tx: &mut Transaction<'_, Postgres>, role: &str) -> Result<(), StoreError> {
    let created = sqlx::query(&format!("CREATE ROLE {} NOLOGIN", quote_ident(role)))
        .execute(&mut **tx)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(err)
            if err
                .as_database_error()
                .and_then(|e| e.code())
                .is_some_and(|code| code == INSUFFICIENT_PRIVILEGE) =>
        {
            Err(StoreError::Invalid(format!(
                "database role {role} does not exist and the role migrating may not create \
                 roles: create it first (CREATE ROLE {} NOLOGIN), then run this again",
                quote_ident(role)
            )))
        }
        Err(err) => Err(err.into()),
    }
}

/// Replaces `role`'s privileges in the current schema with finance's, then
/// checks what it can do in the end; [`StoreError::Invalid`] (and the
/// caller rolls back) when it may write, or read more than finance.
async fn grant(tx: &mut Transaction<'_, Postgres>, role: &str) -> Result<(), StoreError> {
    let writable: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = current_schema()
            AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
            AND has_table_privilege($1, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
          ORDER BY 1
          LIMIT $2",
    )
    .bind(role)
    .bind(NAMED)
    .fetch_all(&mut **tx)
    .await?;
    if !writable.is_empty() {
        return Err(StoreError::Invalid(format!(
            "database role {role} may write {}: finance needs a role of its own that \
             only reads (not the service role, nor a member of it)",
            writable.join(", ")
        )));
    }
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut **tx)
        .await?;
    let schema = quote_ident(&schema);
    let relations: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, c.relkind::text
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = current_schema()
            AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          ORDER BY c.relname",
    )
    .fetch_all(&mut **tx)
    .await?;
    let absent: Vec<&str> = FINANCE_RELATIONS
        .iter()
        .copied()
        .filter(|name| !relations.iter().any(|(found, _)| found == name))
        .collect();
    if !absent.is_empty() {
        return Err(StoreError::Invalid(format!(
            "the schema has no {}: migrate it first",
            absent.join(", ")
        )));
    }
    let grantee = quote_ident(role);
    let mut statements = vec![format!("GRANT USAGE ON SCHEMA {schema} TO {grantee}")];
    for (name, kind) in &relations {
        let object = format!("{schema}.{}", quote_ident(name));
        let class = if kind == "S" { "SEQUENCE" } else { "TABLE" };
        statements.push(format!("REVOKE ALL ON {class} {object} FROM {grantee}"));
        if FINANCE_RELATIONS.contains(&name.as_str()) {
            statements.push(format!("GRANT SELECT ON TABLE {object} TO {grantee}"));
        }
    }
    statements.push(format!(
        "REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {schema} FROM {grantee}"
    ));
    for statement in statements {
        sqlx::query(&statement).execute(&mut **tx).await?;
    }
    // Privileges from PUBLIC or from roles it is a member of stay: what it
    // can read in the end is what counts.
    let beyond: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = current_schema()
            AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
            AND c.relname <> ALL ($2::text[])
            AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege($1, c.oid, 'SELECT, USAGE')
                     ELSE has_any_column_privilege($1, c.oid, 'SELECT') END
          ORDER BY 1
          LIMIT $3",
    )
    .bind(role)
    .bind(&FINANCE_RELATIONS[..])
    .bind(NAMED)
    .fetch_all(&mut **tx)
    .await?;
    if !beyond.is_empty() {
        return Err(StoreError::Invalid(format!(
            "database role {role} can still read {} (granted to PUBLIC or to a role it is \
             a member of): revoke that, then run this again",
            beyond.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finance_reads_neither_texts_nor_keys_nor_the_audit_log() {
        for private in ["tasks", "tenants", "api_keys", "audit_log", "finance_roles"] {
            assert!(!FINANCE_RELATIONS.contains(&private), "{private}");
        }
    }
}
