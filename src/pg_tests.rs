//! `#[pg_test]`s: behaviour that needs a real Postgres. The end-to-end suite in tests/e2e
//! drives the same functions through a real client, with Stripe's own library signing.

use pgrx::prelude::*;

/// pgrx runs each `#[pg_test]` as a function of the schema `tests`.
#[pg_schema]
mod tests {
    use crate::webhook::signature::sign_v1;
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    const SECRET: &str = "whsec_pgtest_secret_123";

    fn setup() {
        Spi::run(&format!(
            "SELECT payment.configure('sk_test_pgtest12345', 'pk_test_pgtest12345', '{SECRET}')"
        ))
        .unwrap();
        Spi::run(
            "CREATE TABLE public.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             user_id text, price numeric(12,2) NOT NULL, status text NOT NULL DEFAULT 'new'); \
             SELECT payment.link_order_table('public.orders', currency => 'usd'); \
             INSERT INTO public.orders (user_id, price) VALUES ('u1', 10.00); \
             INSERT INTO payment.payments (order_id, amount, currency, stripe_payment_intent_id) \
             VALUES (1, 1000, 'usd', 'pi_pgtest');",
        )
        .unwrap();
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn event(id: &str, kind: &str, created: i64, object: Value) -> String {
        serde_json::to_string_pretty(&json!({
            "id": id, "object": "event", "type": kind, "livemode": false, "created": created,
            "api_version": "2025-03-31.basil", "data": {"object": object}
        }))
        .unwrap()
    }

    fn deliver(payload: &str) -> Value {
        let header = format!(
            "t={t},v1={}",
            sign_v1(payload.as_bytes(), SECRET, now()),
            t = now()
        );
        Spi::get_one_with_args::<pgrx::JsonB>(
            "SELECT payment.process_stripe_event($1, $2)",
            &[payload.into(), header.as_str().into()],
        )
        .unwrap()
        .unwrap()
        .0
    }

    fn intent(status: &str) -> Value {
        json!({"id": "pi_pgtest", "object": "payment_intent", "amount": 1000, "amount_received": 1000,
               "currency": "usd", "status": status, "latest_charge": "ch_pgtest"})
    }

    fn payment_status() -> String {
        Spi::get_one::<String>(
            "SELECT status FROM payment.payments WHERE stripe_payment_intent_id = 'pi_pgtest'",
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn succeeded_event_moves_the_payment_and_a_redelivery_is_a_duplicate() {
        setup();
        let body = event(
            "evt_pg_1",
            "payment_intent.succeeded",
            1_700_000_000,
            intent("succeeded"),
        );
        assert_eq!(deliver(&body)["outcome"], "applied");
        assert_eq!(payment_status(), "succeeded");
        assert_eq!(deliver(&body)["outcome"], "duplicate");
        let count = Spi::get_one::<i64>("SELECT count(*) FROM payment.events").unwrap();
        assert_eq!(count, Some(1));
    }

    #[pg_test]
    fn a_late_processing_event_never_overwrites_succeeded() {
        setup();
        deliver(&event(
            "evt_pg_2",
            "payment_intent.succeeded",
            1_700_000_100,
            intent("succeeded"),
        ));
        let late = event(
            "evt_pg_3",
            "payment_intent.processing",
            1_700_000_000,
            intent("processing"),
        );
        assert_eq!(deliver(&late)["outcome"], "applied");
        assert_eq!(payment_status(), "succeeded");
    }

    #[pg_test]
    fn a_failing_handler_keeps_the_event_as_failed_and_rolls_back_its_changes() {
        setup();
        Spi::run(
            "CREATE FUNCTION public.broken(c jsonb) RETURNS void LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'handler says no'; END $$; \
             CREATE ROLE unit_shop_broken NOLOGIN; \
             ALTER FUNCTION public.broken(jsonb) OWNER TO unit_shop_broken; \
             SELECT payment.add_callback('payment', 'public.broken(jsonb)');",
        )
        .unwrap();
        let body = event(
            "evt_pg_4",
            "payment_intent.succeeded",
            1_700_000_000,
            intent("succeeded"),
        );
        let result = deliver(&body);
        assert_eq!(result["outcome"], "failed");
        assert!(result["error"]
            .as_str()
            .unwrap()
            .contains("handler says no"));
        assert_eq!(payment_status(), "pending");
        let stored = Spi::get_one::<String>(
            "SELECT outcome::text FROM payment.events WHERE id = 'evt_pg_4'",
        )
        .unwrap();
        assert_eq!(stored.as_deref(), Some("failed"));

        // After the fix, a redelivery applies it.
        Spi::run("CREATE OR REPLACE FUNCTION public.broken(c jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$")
            .unwrap();
        assert_eq!(deliver(&body)["outcome"], "applied");
        assert_eq!(payment_status(), "succeeded");
    }

    #[pg_test]
    fn retry_failed_events_applies_them_after_a_fix() {
        setup();
        Spi::run(
            "CREATE TABLE public.gate (open boolean); INSERT INTO public.gate VALUES (false); \
             CREATE FUNCTION public.gated(c jsonb) RETURNS void LANGUAGE plpgsql AS \
             $$ BEGIN IF NOT (SELECT open FROM public.gate) THEN RAISE EXCEPTION 'closed'; END IF; END $$; \
             CREATE ROLE unit_shop_gated NOLOGIN; GRANT SELECT ON public.gate TO unit_shop_gated; \
             ALTER FUNCTION public.gated(jsonb) OWNER TO unit_shop_gated; \
             SELECT payment.add_callback('payment', 'public.gated(jsonb)');",
        )
        .unwrap();
        deliver(&event(
            "evt_pg_5",
            "payment_intent.succeeded",
            1_700_000_000,
            intent("succeeded"),
        ));
        Spi::run("UPDATE public.gate SET open = true").unwrap();
        let retried = Spi::get_one::<pgrx::JsonB>("SELECT payment.retry_failed_events()")
            .unwrap()
            .unwrap();
        assert_eq!(retried.0["outcome"], "applied");
        assert_eq!(payment_status(), "succeeded");
    }

    #[pg_test]
    fn unknown_event_types_are_recorded_as_ignored() {
        setup();
        let body = event(
            "evt_pg_6",
            "customer.created",
            1_700_000_000,
            json!({"id": "cus_1", "object": "customer"}),
        );
        assert_eq!(deliver(&body)["outcome"], "ignored");
        let stored = Spi::get_one::<String>(
            "SELECT outcome::text FROM payment.events WHERE id = 'evt_pg_6'",
        )
        .unwrap();
        assert_eq!(stored.as_deref(), Some("ignored"));
    }

    #[pg_test(
        error = "pg_payment: no signature in the Stripe-Signature header matches the payload for any configured webhook secret"
    )]
    fn a_wrong_signature_is_refused() {
        setup();
        let body = event(
            "evt_pg_7",
            "payment_intent.succeeded",
            1_700_000_000,
            intent("succeeded"),
        );
        let header = format!(
            "t={},v1={}",
            now(),
            sign_v1(body.as_bytes(), "whsec_someone_else", now())
        );
        Spi::get_one_with_args::<pgrx::JsonB>(
            "SELECT payment.process_stripe_event($1, $2)",
            &[body.as_str().into(), header.as_str().into()],
        )
        .unwrap();
    }

    #[pg_test(error = "pg_payment: payload must not be NULL")]
    fn a_null_payload_is_refused() {
        setup();
        Spi::run("SELECT payment.process_stripe_event(NULL, 't=1,v1=00')").unwrap();
    }
}
