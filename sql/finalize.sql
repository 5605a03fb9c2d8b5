-- Hand everything to payment_owner, pin every function's search_path, revoke PUBLIC,
-- and grant each role exactly its functions.
DO $finalize$
DECLARE
    ext oid := (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'pg_payment');
    obj record;
BEGIN
    EXECUTE 'ALTER SCHEMA payment OWNER TO payment_owner';
    EXECUTE 'REVOKE ALL ON SCHEMA payment FROM PUBLIC';

    -- Tables (their owned sequences and indexes follow them).
    FOR obj IN
        SELECT c.oid::regclass AS rel
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = ext AND d.deptype = 'e' AND c.relkind IN ('r', 'p')
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO payment_owner', obj.rel);
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM PUBLIC', obj.rel);
    END LOOP;

    FOR obj IN
        SELECT p.oid::regprocedure AS fn, p.proname
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON p.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = ext AND d.deptype = 'e' AND p.pronamespace = 'payment'::regnamespace
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO payment_owner', obj.fn);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', obj.fn);
        -- These run with the caller's rights on purpose (see their source); all others
        -- run as payment_owner.
        IF obj.proname IN ('link_order_table', 'add_callback', 'remove_callback') THEN
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY INVOKER SET search_path = pg_catalog, pg_temp', obj.fn);
        ELSE
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', obj.fn);
        END IF;
    END LOOP;
END
$finalize$;

-- A failing call to a function that takes a secret must not log its statement (and so the
-- key) to the server log. payment_owner may set just this one superuser setting.
GRANT SET ON PARAMETER log_min_error_statement TO payment_owner;
ALTER FUNCTION payment.configure(text, text, text) SET log_min_error_statement = panic;
ALTER FUNCTION payment.add_webhook_secret(text) SET log_min_error_statement = panic;
ALTER FUNCTION payment.remove_webhook_secret(text) SET log_min_error_statement = panic;

GRANT USAGE ON SCHEMA payment TO payment_admin, payment_app, payment_webhook;

GRANT SELECT ON payment.payments, payment.refunds, payment.recurring_payments, payment.events,
                payment.api_requests, payment.callbacks, payment.order_link, payment.customers,
                payment.charges
   TO payment_admin, payment_app;

GRANT EXECUTE ON FUNCTION
    payment.configure(text, text, text),
    payment.add_webhook_secret(text),
    payment.remove_webhook_secret(text),
    payment.add_callback(text, regprocedure),
    payment.remove_callback(text, regprocedure),
    payment.retry_failed_events(),
    payment.link_order_table(regclass, name, name, name, name, name, text)
   TO payment_admin;
GRANT EXECUTE ON FUNCTION payment.refund_payment(bigint, bigint),
                          payment.cancel_subscription(bigint, boolean)
   TO payment_admin;
GRANT EXECUTE ON FUNCTION payment.publishable_key(),
                          payment.create_payment(bigint, text, bigint),
                          payment.start_subscription(bigint, text),
                          payment.to_minor_units(numeric, text),
                          payment.from_minor_units(bigint, text)
   TO payment_admin, payment_app;
GRANT EXECUTE ON FUNCTION payment.process_stripe_event(text, text) TO payment_webhook;
