//! The SQL-facing functions: thin wrappers that check arguments, call the domain and turn
//! its errors into Postgres errors. All live in the schema `payment`.

pub mod callbacks;
pub mod config;
pub mod order_link;
pub mod payments;
pub mod refunds;
mod stripe_call;
pub mod subscriptions;
pub mod webhooks;
