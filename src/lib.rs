//! pg_payment: Stripe payments as a PostgreSQL feature.
//!
//! The map:
//! - `api`: the SQL functions of the schema `payment` (thin; they call the domain);
//! - `webhook`: `process_stripe_event`: signature, event parsing, forward-only rules, apply;
//! - `callbacks`: the triggers that NOTIFY and run the app's registered business logic;
//! - `store`: prepared statements, subtransactions, per-backend caches, secrets, refunds
//!   bookkeeping and the linked order table;
//! - `stripe`: the Stripe HTTP client, and `money`: currencies and minor units (no pgrx in
//!   either, so both are tested with plain unit tests);
//! - `gucs`: every `pg_payment.*` setting; `error`: the one error type and its SQLSTATEs.
//!
//! The schema itself is SQL, in `sql/`, run in this order: bootstrap (roles, schema),
//! tables, api (triggers and guards), then the Rust functions, then finalize (owners, grants).

use pgrx::prelude::*;

mod api;
mod callbacks;
mod error;
mod gucs;
mod lifecycle;
mod metadata;
mod money;
mod objects;
mod store;
mod stripe;
mod webhook;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/tables.sql", name = "tables");
extension_sql_file!("../sql/api.sql", name = "api", requires = ["tables"]);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Declares the schema to pgrx, so `#[pg_extern(schema = "payment")]` can name it. The
/// schema itself is created (and checked for a non-member squatter) in bootstrap.sql.
#[pg_schema]
mod payment {}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    store::cache::register_invalidation_callbacks();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
