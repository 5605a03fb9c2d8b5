//! The library and the schema it serves must be of one version.
//!
//! Installing a new build replaces the library at once, in every database of the cluster,
//! while each database keeps its old schema until `ALTER EXTENSION pg_payment UPDATE` runs
//! there. In that window the entry points refuse to work (55000) rather than write rows the
//! old schema does not expect: nothing half-new is ever written.

use crate::error::{PaymentError, Result};
use std::cell::Cell;

/// The version of this library, which is the version of the schema its code expects.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

const INSTALLED_VERSION: &str =
    "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_payment'";

thread_local! {
    /// Versions only move forward (UPDATE), so once a backend has seen its library's version
    /// installed it need not look again; until then it looks on every call.
    static CURRENT: Cell<bool> = const { Cell::new(false) };
}

/// Refuse to go on while this database's schema is of another version than the library.
pub fn require_current() -> Result<()> {
    if CURRENT.with(Cell::get) {
        return Ok(());
    }
    let installed = super::query_value::<String>(INSTALLED_VERSION, &[])?;
    check(installed.as_deref())?;
    CURRENT.with(|c| c.set(true));
    Ok(())
}

fn check(installed: Option<&str>) -> Result<()> {
    match installed {
        Some(v) if v == LIBRARY_VERSION => Ok(()),
        Some(v) => Err(PaymentError::NotConfigured {
            message: format!(
                "the pg_payment library is version {LIBRARY_VERSION}, but this database's \
                 schema is still version {v}"
            ),
            hint: "Run ALTER EXTENSION pg_payment UPDATE in this database (as the role that \
                   installed it) to finish the upgrade."
                .into(),
        }),
        None => Err(PaymentError::NotConfigured {
            message: "pg_payment is not installed in this database".into(),
            hint: "CREATE EXTENSION pg_payment;".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_schema_is_refused_with_the_command_that_fixes_it() {
        let err = check(Some("0.1.0")).unwrap_err();
        assert_eq!(
            err.sqlstate(),
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        );
        assert!(err.message().contains("0.1.0"));
        assert!(err
            .hint()
            .unwrap()
            .contains("ALTER EXTENSION pg_payment UPDATE"));
    }

    #[test]
    fn the_library_version_is_accepted() {
        assert!(check(Some(LIBRARY_VERSION)).is_ok());
        assert!(check(None).is_err());
    }
}
