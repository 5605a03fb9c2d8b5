//! `add_callback` / `remove_callback`: register the business logic of the four callbacks.
//!
//! They run with the caller's rights (not SECURITY DEFINER) so they can see who is calling:
//! only a handler's owner may register it, because the handler will run as its owner, and
//! a handler owned by a superuser would run as superuser.

use crate::error::{OrRaise, PaymentError, Result};
use crate::store;
use crate::store::schema_version::require_current;
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

fn check_handler(handler: pg_sys::Oid) -> Result<String> {
    let row = Spi::connect(|client| -> Result<Option<(String, bool, bool)>> {
        let mut rows = client.select(
            "SELECT p.oid::regprocedure::text, \
                    pg_catalog.pg_has_role(current_user, p.proowner, 'USAGE'), \
                    p.pronargs = 1 AND p.proargtypes[0] = 'jsonb'::regtype AND p.prorettype = 'void'::regtype \
                    AND p.prokind = 'f' \
               FROM pg_catalog.pg_proc p WHERE p.oid = $1",
            Some(1),
            &[handler.into()],
        )?;
        let Some(row) = rows.next() else {
            return Ok(None);
        };
        Ok(Some((
            row.get(1)?.unwrap_or_default(),
            row.get(2)?.unwrap_or(false),
            row.get(3)?.unwrap_or(false),
        )))
    })?;
    let (name, owns, shape_ok) = row.ok_or_else(|| {
        PaymentError::NotFound(format!("no function has oid {}", handler.to_u32()))
    })?;
    if !owns {
        return Err(PaymentError::PermissionDenied {
            message: format!("only the owner of {name} may register it as a callback"),
            hint: Some("Handlers run as their owner; register a function you own.".into()),
        });
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
        check_handler(handler)?;
        store::as_role(store::payment_owner()?, || -> Result<()> {
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
            check_handler(handler)?;
        }
        let removed = store::as_role(store::payment_owner()?, || -> Result<bool> {
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
