//! `health()`: one row per check, in DESIGN.md's order, each `ok`, `warn` or `fail` with a
//! detail and a hint a user can act on. Together they answer the seed's troubleshooting
//! table: "incorrect charge amount" (`amount_mismatch`), "payment not reflected in order"
//! (`callbacks`, `failed_events`, `stale_pending`), "refund not updating order"
//! (`callbacks`, `failed_events`).

use super::entry;
use crate::error::Result;
use crate::gucs;
use pgrx::prelude::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    hint: Option<String>,
}

fn check(
    name: &'static str,
    status: Status,
    detail: impl Into<String>,
    hint: Option<&str>,
) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        hint: hint.map(Into::into),
    }
}

/// One row of facts: every check's figures in one round trip.
const FACTS: &str = "\
    WITH key AS (SELECT livemode FROM payment.secrets WHERE kind = 'secret_key' ORDER BY created_at DESC LIMIT 1), \
         pk AS (SELECT livemode FROM payment.secrets WHERE kind = 'publishable_key' ORDER BY created_at DESC LIMIT 1), \
         pending AS (SELECT * FROM payment.payments WHERE status IN ('pending', 'requires_action', 'processing')), \
         handlers AS ( \
             SELECT c.kind, c.handler::text AS name, p.oid IS NOT NULL AS present, \
                    COALESCE(r.rolsuper, false) AS superuser, \
                    (SELECT pg_catalog.substr(x, 13) FROM pg_catalog.unnest(p.proconfig) x \
                      WHERE x LIKE 'search_path=%') AS search_path \
               FROM payment.callbacks c \
               LEFT JOIN pg_catalog.pg_proc p ON p.oid = c.handler \
               LEFT JOIN pg_catalog.pg_roles r ON r.oid = p.proowner), \
         link AS (SELECT * FROM payment.order_link) \
    SELECT (SELECT livemode FROM key), (SELECT livemode FROM pk), \
           (SELECT pg_catalog.count(*) FROM payment.secrets s, key \
             WHERE s.kind = 'webhook_secret' AND s.livemode = key.livemode), \
           (SELECT pg_catalog.count(*) FROM payment.events WHERE outcome = 'failed'), \
           (SELECT pg_catalog.min(received_at)::text FROM payment.events WHERE outcome = 'failed'), \
           (SELECT pg_catalog.count(*) FROM pending \
             WHERE COALESCE(last_event_at, created_at) < pg_catalog.now() - $1::interval), \
           (SELECT pg_catalog.count(*) FROM pending), \
           (SELECT pg_catalog.max(received_at)::text FROM payment.events), \
           COALESCE((SELECT pg_catalog.max(received_at) < pg_catalog.now() - interval '24 hours' \
                       FROM payment.events), true), \
           (SELECT pg_catalog.string_agg(k, ', ' ORDER BY k) FROM pg_catalog.unnest(ARRAY[ \
                CASE WHEN EXISTS (SELECT 1 FROM payment.payments WHERE recurring_payment_id IS NULL) THEN 'payment' END, \
                CASE WHEN EXISTS (SELECT 1 FROM payment.refunds) THEN 'refund' END, \
                CASE WHEN EXISTS (SELECT 1 FROM payment.recurring_payments) THEN 'recurring_management' END, \
                CASE WHEN EXISTS (SELECT 1 FROM payment.payments WHERE recurring_payment_id IS NOT NULL) \
                     THEN 'recurring_deduction' END]) k \
             WHERE k IS NOT NULL AND NOT EXISTS (SELECT 1 FROM handlers h WHERE h.kind = k)), \
           (SELECT pg_catalog.count(DISTINCT kind) FROM handlers), \
           (SELECT pg_catalog.string_agg(name, ', ' ORDER BY name) FROM handlers WHERE NOT present), \
           (SELECT pg_catalog.string_agg(name, ', ' ORDER BY name) FROM handlers WHERE superuser), \
           (SELECT pg_catalog.string_agg(name || ' (' || search_path || ')', ', ' ORDER BY name) FROM handlers \
             WHERE search_path IS NOT NULL AND search_path !~ '(^|,)\\s*\"?pg_temp\"?\\s*$'), \
           (SELECT pg_catalog.count(*) FROM payment.payments \
             WHERE failure_code = 'amount_mismatch' AND amount_refunded < amount_received), \
           (SELECT table_name FROM link), \
           (SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = link.order_table) FROM link), \
           (SELECT pg_catalog.count(*) FROM link, pg_catalog.pg_trigger t \
             WHERE t.tgrelid = link.order_table AND t.tgname IN ('pg_payment_guard_rows', 'pg_payment_guard_truncate') \
               AND t.tgenabled IN ('O', 'A')), \
           (SELECT currency IS NULL AND currency_column IS NULL FROM link), \
           (SELECT pg_catalog.string_agg(m.member::regrole::text, ', ') FROM pg_catalog.pg_auth_members m \
             WHERE m.roleid = 'payment_owner'::regrole)";

fn checks() -> Result<Vec<Check>> {
    let pending_after =
        gucs::string_setting(&gucs::PENDING_WARN_AFTER).unwrap_or_else(|| "1 hour".into());
    Spi::connect(|client| -> Result<Vec<Check>> {
        let row = client
            .select(FACTS, Some(1), &[pending_after.as_str().into()])?
            .first();
        let key_mode: Option<bool> = row.get(1)?;
        let publishable_mode: Option<bool> = row.get(2)?;
        let webhook_secrets: i64 = row.get(3)?.unwrap_or(0);
        let failed: i64 = row.get(4)?.unwrap_or(0);
        let oldest_failed: Option<String> = row.get(5)?;
        let stale: i64 = row.get(6)?.unwrap_or(0);
        let pending: i64 = row.get(7)?.unwrap_or(0);
        let last_event: Option<String> = row.get(8)?;
        let quiet_for_a_day: bool = row.get(9)?.unwrap_or(true);
        let kinds_without_handler: Option<String> = row.get(10)?;
        let kinds_with_handler: i64 = row.get(11)?.unwrap_or(0);
        let dropped_handlers: Option<String> = row.get(12)?;
        let superuser_handlers: Option<String> = row.get(13)?;
        let loose_search_paths: Option<String> = row.get(14)?;
        let mismatched: i64 = row.get(15)?.unwrap_or(0);
        let linked_table: Option<String> = row.get(16)?;
        let table_exists: bool = row.get(17)?.unwrap_or(false);
        let guards: i64 = row.get(18)?.unwrap_or(0);
        let link_without_currency: bool = row.get(19)?.unwrap_or(false);
        let owner_members: Option<String> = row.get(20)?;
        let mode = |live: bool| if live { "live" } else { "test" };

        let mut out = Vec::with_capacity(11);
        out.push(match (key_mode, publishable_mode) {
            (None, _) => check("keys", Status::Fail, "no Stripe secret key is configured",
                Some("SELECT payment.configure(secret_key, publishable_key, webhook_secret) as payment_admin; after a restore this is expected.")),
            (Some(k), Some(p)) if k != p => check("keys", Status::Fail,
                "the secret and publishable keys are of different modes",
                Some("Configure both keys from the same mode of the Stripe dashboard.")),
            (Some(k), _) => check("keys", Status::Ok, format!("{} mode", mode(k)), None),
        });
        out.push(if webhook_secrets > 0 {
            check("webhook_secret", Status::Ok, format!("{webhook_secrets} webhook secret(s) of the key's mode"), None)
        } else {
            check("webhook_secret", Status::Fail, "no webhook secret of the configured mode: every webhook is refused",
                Some("SELECT payment.add_webhook_secret('whsec_...') with the endpoint's signing secret from the Stripe dashboard."))
        });
        out.push(if failed > 0 {
            check("failed_events", Status::Fail,
                format!("{failed} event(s) failed, the oldest received at {}", oldest_failed.unwrap_or_default()),
                Some("SELECT id, type, error FROM payment.events WHERE outcome = 'failed'; fix the cause (often a callback handler), then SELECT * FROM payment.retry_failed_events()."))
        } else {
            check("failed_events", Status::Ok, "no failed events", None)
        });
        out.push(if stale > 0 {
            check("stale_pending", Status::Warn,
                format!("{stale} payment(s) pending with no event for longer than {pending_after}"),
                Some("The customer may not have paid, or webhooks are not arriving: check the endpoint in the Stripe dashboard, then SELECT * FROM payment.refresh_payment(id) for each."))
        } else {
            check("stale_pending", Status::Ok, format!("no payment pending for longer than {pending_after}"), None)
        });
        out.push(match (&last_event, pending > 0 && quiet_for_a_day) {
            (_, true) => check("last_event", Status::Warn,
                match &last_event {
                    Some(t) => format!("no event since {t} while {pending} payment(s) are pending"),
                    None => format!("no event ever received while {pending} payment(s) are pending"),
                },
                Some("Webhooks are not reaching the database: check the endpoint's URL, its signing secret and the relay's log.")),
            (Some(t), false) => check("last_event", Status::Ok, format!("last event received at {t}"), None),
            (None, false) => check("last_event", Status::Ok, "no event received yet", None),
        });
        out.push(if let Some(names) = &dropped_handlers {
            check("callbacks", Status::Fail, format!("registered handlers no longer exist: {names}"),
                Some("SELECT payment.remove_callback(kind, handler) for each, register the right ones, then SELECT * FROM payment.retry_failed_events()."))
        } else if let Some(names) = &superuser_handlers {
            check("callbacks", Status::Fail, format!("handlers owned by a superuser, which never run: {names}"),
                Some("ALTER FUNCTION ... OWNER TO the ordinary role that owns the app's tables."))
        } else if let (Some(kinds), true) = (&kinds_without_handler, kinds_with_handler > 0) {
            check("callbacks", Status::Fail, format!("no handler for {kinds}, which has rows, while other kinds have one"),
                Some("SELECT payment.add_callback(kind, 'your_handler(jsonb)'): without it those changes never reach your orders."))
        } else {
            check("callbacks", Status::Ok, format!("handlers registered for {kinds_with_handler} of 4 kinds"), None)
        });
        out.push(match &loose_search_paths {
            Some(names) => check("handler_search_path", Status::Warn,
                format!("handlers whose search_path does not end with pg_temp: {names}"),
                Some("ALTER FUNCTION ... SET search_path = <your schemas>, pg_temp: otherwise a caller's temporary tables can stand in for yours.")),
            None => check("handler_search_path", Status::Ok, "every handler's search_path is safe", None),
        });
        out.push(if mismatched > 0 {
            check("amount_mismatch", Status::Warn,
                format!("{mismatched} payment(s) where Stripe received another amount than the payment's, not refunded"),
                Some("Amounts are minor units (99.99 USD is 9999): compare payment.to_minor_units(price, currency) with what was charged; refund it in Stripe's dashboard (its refund webhook clears this) and charge the right amount with a new order."))
        } else {
            check("amount_mismatch", Status::Ok, "no flagged amounts", None)
        });
        out.push(match (&linked_table, table_exists, guards) {
            (None, _, _) => check("link", Status::Fail, "no order table is linked",
                Some("SELECT payment.link_order_table('your_orders', currency => 'usd') as the table's owner.")),
            (Some(t), false, _) => check("link", Status::Fail, format!("the linked order table {t} no longer exists"),
                Some("Restore the table (the link is permanent)."),),
            (Some(t), true, g) if g < 2 => check("link", Status::Fail,
                format!("a guard trigger on {t} is missing or disabled"),
                Some("Orders that have payments could be deleted: restore the table's pg_payment_guard_* triggers (link_order_table creates them on a new link).")),
            (Some(t), true, _) => check("link", Status::Ok, format!("{t} is linked and guarded"), None),
        });
        out.push(if link_without_currency {
            check("link_currency", Status::Warn, "the link names no currency: any currency is accepted for every order",
                Some("Call link_order_table again with the same arguments plus currency => '...' or currency_column => '...'."))
        } else {
            check("link_currency", Status::Ok, "every order's currency is known", None)
        });
        out.push(match &owner_members {
            Some(members) => check("payment_owner", Status::Fail, format!("payment_owner has members: {members}"),
                Some("REVOKE payment_owner FROM each: its members hold every right of the extension's code, the keys included.")),
            None => check("payment_owner", Status::Ok, "payment_owner has no members", None),
        });
        Ok(out)
    })
}

/// The health checks; see the module comment.
#[pg_extern(schema = "payment", volatile, parallel_unsafe)]
fn health() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(status, String),
        name!(detail, String),
        name!(hint, Option<String>),
    ),
> {
    let rows = entry(checks);
    TableIterator::new(rows.into_iter().map(|c| {
        (
            c.name.to_string(),
            c.status.as_str().to_string(),
            c.detail,
            c.hint,
        )
    }))
}
