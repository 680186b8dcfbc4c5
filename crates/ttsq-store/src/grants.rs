//! The service role's privileges.
//!
//! Two database roles run ttsq. The owner role runs the migrations and owns
//! every table, view, sequence and function; the service role, which the
//! api and worker processes (and the admin commands) connect as, gets only
//! what the code uses: reading and writing the working tables, reading the
//! views, and on the append-only tables ([`APPEND_ONLY`]) `INSERT` and
//! `SELECT` only. Not owning a table, it cannot `ALTER` it (so cannot
//! disable the triggers that refuse changes), and without `UPDATE`,
//! `DELETE` or `TRUNCATE` it is refused before any trigger is reached.
//!
//! [`Store::grant_service_role`] applies this after the migrations, to
//! whatever the schema holds then, so the tables a new migration creates
//! get their grants from the same run.

use crate::{Store, StoreError};

/// Tables whose rows are never changed nor removed: the service role may
/// only add and read rows.
pub const APPEND_ONLY: [&str; 2] = ["usage_ledger", "audit_log"];

/// sqlx's record of applied migrations: the service role reads it to tell
/// that nothing is pending, and never writes it.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Which roles have finance access ([`crate::finance`]): the owner's
/// business alone; the service role may neither read nor change it.
const FINANCE_ROLES_TABLE: &str = "finance_roles";

/// Serialises grant runs: two at once on one object fail with "tuple
/// concurrently updated".
pub(crate) const GRANT_LOCK: i64 = 0x7474_7371_6772_6e74; // "ttsqgrnt"

/// Whether `role` exists, refusing one that no grant can restrict: a
/// superuser, or the connected role itself (the owner). `as_what` says in
/// the refusal what the role was meant to be.
pub(crate) async fn existing_grantee<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    role: &str,
    as_what: &str,
) -> Result<bool, StoreError> {
    let found: Option<(bool, bool)> =
        sqlx::query_as("SELECT rolsuper, rolname = current_user FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_optional(executor)
            .await?;
    match found {
        None => Ok(false),
        Some((true, _)) => Err(StoreError::Invalid(format!(
            "database role {role} is a superuser: no grant can restrict it"
        ))),
        Some((_, true)) => Err(StoreError::Invalid(format!(
            "database role {role} is the role migrating (the owner); {as_what} needs a role \
             of its own"
        ))),
        Some(_) => Ok(true),
    }
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The privileges the service role gets on one relation of the schema.
fn privileges(name: &str, kind: &str) -> Option<&'static str> {
    match kind {
        _ if name == FINANCE_ROLES_TABLE => None,
        _ if APPEND_ONLY.contains(&name) => Some("SELECT, INSERT"),
        _ if name == MIGRATIONS_TABLE => Some("SELECT"),
        // Tables, partitioned tables.
        "r" | "p" => Some("SELECT, INSERT, UPDATE, DELETE"),
        // Views, materialized views.
        "v" | "m" => Some("SELECT"),
        _ => None,
    }
}

impl Store {
    /// Grants `role` what the service needs on everything in the current
    /// schema, and nothing more (see the module documentation); earlier
    /// grants to it there are replaced. Run as the owner after migrating.
    /// Refuses a role that does not exist, is a superuser (grants do not
    /// bind it) or is the connected role itself.
    pub async fn grant_service_role(&self, role: &str) -> Result<(), StoreError> {
        if !existing_grantee(&self.pool, role, "the service role").await? {
            return Err(StoreError::NotFound(format!(
                "database role {role} (create it first: CREATE ROLE {} LOGIN PASSWORD '…')",
                quote_ident(role)
            )));
        }
        let grantee = quote_ident(role);
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(GRANT_LOCK)
            .execute(&mut *tx)
            .await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut *tx)
            .await?;
        let schema = quote_ident(&schema);
        let relations: Vec<(String, String)> = sqlx::query_as(
            "SELECT c.relname::text, c.relkind::text
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = current_schema()
                AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
              ORDER BY c.relname",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut statements = vec![format!("GRANT USAGE ON SCHEMA {schema} TO {grantee}")];
        for (name, kind) in &relations {
            let object = format!("{schema}.{}", quote_ident(name));
            if kind == "S" {
                statements.push(format!("REVOKE ALL ON SEQUENCE {object} FROM {grantee}"));
                statements.push(format!(
                    "GRANT USAGE, SELECT ON SEQUENCE {object} TO {grantee}"
                ));
                continue;
            }
            statements.push(format!("REVOKE ALL ON TABLE {object} FROM {grantee}"));
            if let Some(privileges) = privileges(name, kind) {
                statements.push(format!("GRANT {privileges} ON TABLE {object} TO {grantee}"));
            }
        }
        statements.push(format!(
            "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {grantee}"
        ));
        for statement in statements {
            sqlx::query(&statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_only_tables_get_insert_and_select_only() {
        for table in APPEND_ONLY {
            assert_eq!(privileges(table, "r"), Some("SELECT, INSERT"));
        }
        assert_eq!(
            privileges("tasks", "r"),
            Some("SELECT, INSERT, UPDATE, DELETE")
        );
        assert_eq!(privileges("usage_daily", "v"), Some("SELECT"));
        assert_eq!(privileges(MIGRATIONS_TABLE, "r"), Some("SELECT"));
        assert_eq!(privileges(FINANCE_ROLES_TABLE, "r"), None);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }
}
