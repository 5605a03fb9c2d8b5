//! `add_callback` / `remove_callback`: register the business logic of the four callbacks.
//!
//! They run with the caller's rights (not SECURITY DEFINER) so they can see who is calling:
//! only a handler's owner may register it, because the handler will run as its owner, and
//! a handler owned by a superuser would run as superuser.

use crate::error::{OrRaise, PaymentError, Result};
use crate::store::schema_version::require_current;
use crate::store::{self, identity};
use pgrx::pg_sys;
use pgrx::prelude::*;

pub const KINDS: [&str; 4] = [
    "payment",
    "refund",
    "recurring_management",
    "recurring_deduction",
];

fn check_kind(kind: Option<&str>) -> Result<&str> {
    let kind = kind.ok_or(PaymentError::NullArgument("kind"))?;
    if KINDS.contains(&kind) {
        Ok(kind)
    } else {
        Err(PaymentError::invalid_with_hint(
            format!("\"{kind}\" is not a callback kind"),
            format!("Use one of: {}.", KINDS.join(", ")),
        ))
    }
}

/// The handler's own `SET search_path`, if it has one.
const HANDLER: &str = "\
    SELECT p.oid::regprocedure::text, \
           pg_catalog.pg_has_role(current_user, p.proowner, 'USAGE'), \
           p.pronargs = 1 AND p.proargtypes[0] = 'jsonb'::regtype AND p.prorettype = 'void'::regtype \
           AND p.prokind = 'f', \
           p.proowner, \
           (SELECT pg_catalog.substr(c, 13) FROM pg_catalog.unnest(p.proconfig) c WHERE c LIKE 'search_path=%') \
      FROM pg_catalog.pg_proc p WHERE p.oid = $1";

/// Does a `search_path` setting end with `pg_temp`? Otherwise the temporary schema of the
/// session that fires the handler is searched first, and its tables would stand in for the
/// handler's own.
pub fn search_path_ends_with_pg_temp(setting: &str) -> bool {
    setting
        .rsplit(',')
        .next()
        .map(|last| last.trim().trim_matches('"'))
        == Some("pg_temp")
}

/// The handler's name, once the caller may (un)register it; `registering` adds the checks
/// of what may run at all.
fn check_handler(handler: pg_sys::Oid, registering: bool) -> Result<String> {
    type Row = (String, bool, bool, pg_sys::Oid, Option<String>);
    let row = Spi::connect(|client| -> Result<Option<Row>> {
        let mut rows = client.select(HANDLER, Some(1), &[handler.into()])?;
        let Some(row) = rows.next() else {
            return Ok(None);
        };
        Ok(Some((
            store::required(row.get(1)?, "regprocedure")?,
            row.get(2)?.unwrap_or(false),
            row.get(3)?.unwrap_or(false),
            store::required(row.get(4)?, "pg_proc.proowner")?,
            row.get(5)?,
        )))
    })?;
    let (name, owns, shape_ok, owner, search_path) = row.ok_or_else(|| {
        PaymentError::NotFound(format!("no function has oid {}", handler.to_u32()))
    })?;
    if !owns {
        return Err(PaymentError::PermissionDenied {
            message: format!("only the owner of {name} may register it as a callback"),
            hint: Some("Handlers run as their owner; register a function you own.".into()),
        });
    }
    if !registering {
        return Ok(name);
    }
    if identity::is_superuser(owner) {
        return Err(PaymentError::PermissionDenied {
            message: format!("{name} is owned by a superuser, and handlers never run as one"),
            hint: Some(
                "Create the handler as (or ALTER FUNCTION ... OWNER TO) the ordinary role that \
                 owns the app's tables."
                    .into(),
            ),
        });
    }
    if let Some(path) = search_path.as_deref() {
        if !search_path_ends_with_pg_temp(path) {
            return Err(PaymentError::invalid_with_hint(
                format!("{name} has SET search_path = {path}, which does not end with pg_temp"),
                "A session that fires the handler could otherwise shadow its tables with temporary \
                 ones: ALTER FUNCTION ... SET search_path = <your schemas>, pg_temp (or \
                 schema-qualify every name and drop the setting).",
            ));
        }
    }
    if !shape_ok {
        return Err(PaymentError::invalid_with_hint(
            format!("{name} cannot be a callback handler"),
            "A handler is a function handler(callback jsonb) RETURNS void.",
        ));
    }
    Ok(name)
}

/// Register `handler(callback jsonb) → void` for a callback kind.
#[pg_extern(sql = false)]
fn add_callback(kind: Option<&str>, handler: Option<pg_sys::Oid>) {
    let run = || -> Result<()> {
        require_current()?;
        let kind = check_kind(kind)?;
        let handler = handler.ok_or(PaymentError::NullArgument("handler"))?;
        check_handler(handler, true)?;
        identity::as_payment_owner(|| -> Result<()> {
            Spi::run_with_args(
                "INSERT INTO payment.callbacks (kind, handler) VALUES ($1, $2::oid::regprocedure) \
                 ON CONFLICT DO NOTHING",
                &[kind.into(), handler.into()],
            )?;
            Ok(())
        })
    };
    run().or_raise()
}

#[pg_extern(sql = false)]
fn remove_callback(kind: Option<&str>, handler: Option<pg_sys::Oid>) {
    let run = || -> Result<()> {
        require_current()?;
        let kind = check_kind(kind)?;
        let handler = handler.ok_or(PaymentError::NullArgument("handler"))?;
        // A dropped handler can still be removed; one that exists must be the caller's.
        let exists = store::query_value::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE oid = $1)",
            &[handler.into()],
        )?
        .unwrap_or(false);
        if exists {
            check_handler(handler, false)?;
        }
        let removed = identity::as_payment_owner(|| -> Result<bool> {
            Ok(store::query_value::<bool>(
                "WITH d AS (DELETE FROM payment.callbacks WHERE kind = $1 AND handler::oid = $2 RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM d)",
                &[kind.into(), handler.into()],
            )?
            .unwrap_or(false))
        })?;
        if removed {
            Ok(())
        } else {
            Err(PaymentError::NotFound(format!(
                "that handler is not registered for {kind}"
            )))
        }
    };
    run().or_raise()
}

#[cfg(test)]
mod tests {
    use super::search_path_ends_with_pg_temp;

    #[test]
    fn a_handlers_search_path_must_end_with_pg_temp() {
        assert!(search_path_ends_with_pg_temp("app, pg_temp"));
        assert!(search_path_ends_with_pg_temp("app,\"pg_temp\""));
        assert!(search_path_ends_with_pg_temp("pg_temp"));
        assert!(!search_path_ends_with_pg_temp("app, public"));
        assert!(!search_path_ends_with_pg_temp("pg_temp, app"));
        assert!(!search_path_ends_with_pg_temp(""));
    }
}
