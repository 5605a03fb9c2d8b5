-- pg_payment 0.1.0 -> 0.2.0. Hand-written; run by ALTER EXTENSION pg_payment UPDATE.
--
-- Rules for this file (README, "Upgrading"): every change of the schema in 0.2.0 goes
-- here as well as into the install scripts, new columns at the end of their table; a step
-- that changes what the DDL guard (fired by every DDL command below) reads replaces the
-- guard first; the file ends by calling payment.harden(), so that every object, old or
-- new, gets the owner, security settings, pinned search_path and grants of a fresh
-- install. The upgrade test (tests/e2e/test_upgrade.py) compares the result with a fresh
-- install of 0.2.0, catalog entry by catalog entry.
\echo Use "ALTER EXTENSION pg_payment UPDATE TO '0.2.0'" to load this file. \quit

-- The DDL guard first. 0.1.0's is PL/pgSQL, owned by payment_owner (which could rewrite
-- it into code run by every superuser's DDL) and failing every DDL once the linked table is
-- gone; 0.2.0's guards are Rust, read the link as payment_owner, check only what the command
-- in hand touches, add a sql_drop guard, and leave pg_payment's own scripts alone.
CREATE OR REPLACE FUNCTION payment.guard_order_link() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'guard_order_link_ddl_wrapper';
CREATE FUNCTION payment.guard_order_link_drop() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'guard_order_link_drop_wrapper';
CREATE EVENT TRIGGER pg_payment_guard_order_link_drop ON sql_drop
    EXECUTE FUNCTION payment.guard_order_link_drop();

-- The row guard reads the order's id attribute as a Rust trigger instead of evaluating
-- to_jsonb(OLD) (the app's casts) as payment_owner.
CREATE OR REPLACE FUNCTION payment.guard_order_rows() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'guard_order_rows_wrapper';

-- The per-order lock is a row lock in a table of the extension's, not an advisory lock
-- any role could take.
CREATE TABLE payment.order_locks (
    order_id bigint PRIMARY KEY
);

-- payment_owner is granted nothing on the app's table any more: the extension reads and
-- writes it as the table's owner. Revoke what 0.1.0's link_order_table granted (SELECT,
-- INSERT, REFERENCES, UPDATE of the status column, USAGE on the id's sequence).
DO $revoke_link_grants$
DECLARE
    link record;
    seq text;
BEGIN
    FOR link IN
        SELECT l.order_table, l.id_column FROM payment.order_link l
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = l.order_table)
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM payment_owner', link.order_table);
        seq := pg_catalog.pg_get_serial_sequence(link.order_table::text, link.id_column);
        IF seq IS NOT NULL THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON SEQUENCE %s FROM payment_owner', seq);
        END IF;
    END LOOP;
END
$revoke_link_grants$;

-- Every webhook secret carries the mode of the configured secret key (0.1.0's
-- add_webhook_secret stored every added secret as test mode).
UPDATE payment.secrets w SET livemode = k.livemode
  FROM (SELECT livemode FROM payment.secrets WHERE kind = 'secret_key'
         ORDER BY created_at DESC LIMIT 1) k
 WHERE w.kind = 'webhook_secret';

-- Lifecycle. New columns go at the end of their tables (fresh and upgraded row types agree).
ALTER TABLE payment.payments ADD COLUMN decline_code text;
ALTER TABLE payment.recurring_payments ADD COLUMN cancel_at timestamptz, ADD COLUMN trial_end timestamptz;

-- NOTIFY numbers every change.
CREATE SEQUENCE payment.change_seq;

-- A change of a row is a new row or a new value of a field that `previous` lists, not
-- only a new status: a renewal (the period moves on) or a scheduled cancellation reaches the
-- callbacks even when the status stays the same.
DROP TRIGGER status_inserted ON payment.payments;
DROP TRIGGER status_changed ON payment.payments;
DROP TRIGGER status_inserted ON payment.refunds;
DROP TRIGGER status_changed ON payment.refunds;
DROP TRIGGER status_inserted ON payment.recurring_payments;
DROP TRIGGER status_changed ON payment.recurring_payments;
CREATE TRIGGER row_inserted AFTER INSERT ON payment.payments
    FOR EACH ROW EXECUTE FUNCTION payment.on_status_change();
CREATE TRIGGER row_changed AFTER UPDATE ON payment.payments
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       OR OLD.amount_received IS DISTINCT FROM NEW.amount_received
                       OR OLD.amount_refunded IS DISTINCT FROM NEW.amount_refunded
                       OR OLD.failure_code IS DISTINCT FROM NEW.failure_code
                       OR OLD.decline_code IS DISTINCT FROM NEW.decline_code)
    EXECUTE FUNCTION payment.on_status_change();
CREATE TRIGGER row_inserted AFTER INSERT ON payment.refunds
    FOR EACH ROW EXECUTE FUNCTION payment.on_status_change();
CREATE TRIGGER row_changed AFTER UPDATE ON payment.refunds
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION payment.on_status_change();
CREATE TRIGGER row_inserted AFTER INSERT ON payment.recurring_payments
    FOR EACH ROW EXECUTE FUNCTION payment.on_status_change();
CREATE TRIGGER row_changed AFTER UPDATE ON payment.recurring_payments
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       OR OLD.current_period_start IS DISTINCT FROM NEW.current_period_start
                       OR OLD.current_period_end IS DISTINCT FROM NEW.current_period_end
                       OR OLD.cancel_at_period_end IS DISTINCT FROM NEW.cancel_at_period_end
                       OR OLD.cancel_at IS DISTINCT FROM NEW.cancel_at
                       OR OLD.canceled_at IS DISTINCT FROM NEW.canceled_at
                       OR OLD.trial_end IS DISTINCT FROM NEW.trial_end
                       OR OLD.price_id IS DISTINCT FROM NEW.price_id)
    EXECUTE FUNCTION payment.on_status_change();

-- An order's currency is always known: a link names it (currency) when the table has no
-- currency column. A 0.1.0 link with neither keeps accepting any currency until
-- link_order_table is called again with the same arguments plus one of them.
ALTER TABLE payment.order_link ADD COLUMN currency text;
DROP FUNCTION payment.link_order_table(regclass, name, name, name, name, name, text);
CREATE FUNCTION payment.link_order_table(
    order_table     regclass,
    id_column       name DEFAULT 'id',
    amount_column   name DEFAULT 'price',
    user_column     name DEFAULT 'user_id',
    status_column   name DEFAULT 'status',
    currency_column name DEFAULT NULL,
    paid_status     text DEFAULT 'paid',
    currency        text DEFAULT NULL
) RETURNS void VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'link_order_table_currency_wrapper';
COMMENT ON FUNCTION payment.link_order_table(regclass, name, name, name, name, name, text, text) IS
    'Link the application''s order table, once; call it as the table''s owner.';

-- API 2025-03-31+: InvoicePayments link an invoice's payment row to its PaymentIntent.
CREATE SEQUENCE payment.invoice_payments_id_seq;
CREATE TABLE payment.invoice_payments (
    id                        bigint PRIMARY KEY DEFAULT pg_catalog.nextval('payment.invoice_payments_id_seq'),
    stripe_invoice_payment_id text NOT NULL UNIQUE,
    stripe_invoice_id         text NOT NULL,
    payment_id                bigint REFERENCES payment.payments (id),
    stripe_payment_intent_id  text,
    stripe_charge_id          text,
    amount_paid               bigint,
    currency                  text NOT NULL,
    status                    text NOT NULL,
    payment_type              text NOT NULL,
    created_at                timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at                timestamptz NOT NULL DEFAULT pg_catalog.now()
);
ALTER SEQUENCE payment.invoice_payments_id_seq OWNED BY payment.invoice_payments.id;
CREATE INDEX invoice_payments_invoice_idx ON payment.invoice_payments (stripe_invoice_id);
SELECT pg_catalog.pg_extension_config_dump('payment.invoice_payments', '');
SELECT pg_catalog.pg_extension_config_dump('payment.invoice_payments_id_seq', '');

-- One PaymentIntent may pay several invoices: unique for one-time payments only.
ALTER TABLE payment.payments DROP CONSTRAINT payments_stripe_payment_intent_id_key;
CREATE UNIQUE INDEX payments_one_time_intent_idx ON payment.payments (stripe_payment_intent_id)
    WHERE recurring_payment_id IS NULL;
CREATE INDEX payments_invoice_intent_idx ON payment.payments (stripe_payment_intent_id)
    WHERE recurring_payment_id IS NOT NULL;

-- cancel_payment: an unpaid payment's PaymentIntent canceled at Stripe.
CREATE FUNCTION payment."cancel_payment_id"(
	"payment_id" bigint /* Option < i64 > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'cancel_payment_id_wrapper';
CREATE FUNCTION payment.cancel_payment(payment_id bigint)
RETURNS payment.payments LANGUAGE plpgsql AS $fn$
DECLARE
    canceled_id bigint;
    result payment.payments;
BEGIN
    -- Call it once, into a variable: in a WHERE clause a volatile function could run per row.
    canceled_id := payment.cancel_payment_id(payment_id);
    SELECT * INTO result FROM payment.payments WHERE id = canceled_id;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION payment.cancel_payment(bigint) IS
    'Cancel the PaymentIntent of a payment that is not paid yet; returns the payment.';

-- Operations: health() answers the troubleshooting table in one query.
CREATE FUNCTION payment."health"() RETURNS TABLE (
	"name" TEXT,
	"status" TEXT,
	"detail" TEXT,
	"hint" TEXT
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'health_wrapper';

-- Operations: refresh a payment or a subscription from Stripe.
CREATE FUNCTION payment."refresh_payment_id"(
	"payment_id" bigint /* Option < i64 > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'refresh_payment_id_wrapper';
CREATE FUNCTION payment."refresh_subscription_id"(
	"recurring_payment_id" bigint /* Option < i64 > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'refresh_subscription_id_wrapper';
CREATE FUNCTION payment.refresh_payment(payment_id bigint)
RETURNS payment.payments LANGUAGE plpgsql AS $fn$
DECLARE
    refreshed_id bigint;
    result payment.payments;
BEGIN
    -- Call it once, into a variable: in a WHERE clause a volatile function could run per row.
    refreshed_id := payment.refresh_payment_id(payment_id);
    SELECT * INTO result FROM payment.payments WHERE id = refreshed_id;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION payment.refresh_payment(bigint) IS
    'Read the payment''s PaymentIntent from Stripe and apply its current state (a webhook that never arrived).';

CREATE FUNCTION payment.refresh_subscription(recurring_payment_id bigint)
RETURNS payment.recurring_payments LANGUAGE plpgsql AS $fn$
DECLARE
    refreshed_id bigint;
    result payment.recurring_payments;
BEGIN
    -- Call it once, into a variable: in a WHERE clause a volatile function could run per row.
    refreshed_id := payment.refresh_subscription_id(recurring_payment_id);
    SELECT * INTO result FROM payment.recurring_payments WHERE id = refreshed_id;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION payment.refresh_subscription(bigint) IS
    'Read the subscription from Stripe and apply its current state (a webhook that never arrived).';

-- Operations: sync_events recovers the events no webhook brought, from Stripe's Events API.
-- Where the last sync_events call stopped in Stripe's event list (src/store/sync_state.rs):
-- one row at most. Dumped, so a restored database goes on from there.
CREATE TABLE payment.sync_state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cursor_created  timestamptz NOT NULL,
    cursor_event_id text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('payment.sync_state', '');
CREATE FUNCTION payment."sync_events"(
	"since" timestamp with time zone DEFAULT NULL, /* Option < TimestampWithTimeZone > */
	"max_events" INT DEFAULT 1000 /* Option < i32 > */
) RETURNS jsonb /* JsonB */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'sync_events_wrapper';

-- The hardening, re-runnable (the same text as sql/finalize.sql).
CREATE FUNCTION payment.harden() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $harden$
DECLARE
    ext oid := (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'pg_payment');
    ext_owner text := (SELECT pg_catalog.quote_ident(extowner::regrole::text)
                         FROM pg_catalog.pg_extension WHERE extname = 'pg_payment');
    obj record;
BEGIN
    -- 1. Owners and security settings. Every object belongs to the extension's owner, and
    --    payment_owner owns nothing: as the owner of the schema, a table or a function it
    --    could add an overload, a trigger or a policy, or rewrite a function, that another
    --    role (a superuser's DDL, an upgrade script) would then run. Functions are SECURITY
    --    INVOKER with a pinned search_path; their code switches to payment_owner for its
    --    work (src/store/identity.rs), and sets log_min_error_statement itself where a key
    --    is passed (a SET clause of an invoker function would need the caller to hold SET
    --    on that superuser setting).
    EXECUTE pg_catalog.format('ALTER SCHEMA payment OWNER TO %s', ext_owner);
    FOR obj IN
        SELECT c.oid::regclass AS rel
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = ext AND d.deptype = 'e' AND c.relkind IN ('r', 'p')
    LOOP
        -- Their sequences, indexes and row types follow.
        EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO %s', obj.rel, ext_owner);
    END LOOP;
    -- A sequence no table owns, and the event triggers, are created by whoever runs the
    -- script: an upgrade run by another superuser must not leave them that role's.
    FOR obj IN
        SELECT c.oid::regclass AS rel
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = ext AND d.deptype = 'e' AND c.relkind = 'S'
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend o
                            WHERE o.classid = 'pg_catalog.pg_class'::regclass AND o.objid = c.oid
                              AND o.refclassid = 'pg_catalog.pg_class'::regclass AND o.deptype IN ('a', 'i'))
    LOOP
        EXECUTE pg_catalog.format('ALTER SEQUENCE %s OWNER TO %s', obj.rel, ext_owner);
    END LOOP;
    FOR obj IN
        SELECT e.evtname
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_event_trigger e ON e.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_event_trigger'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = ext AND d.deptype = 'e'
    LOOP
        EXECUTE pg_catalog.format('ALTER EVENT TRIGGER %I OWNER TO %s', obj.evtname, ext_owner);
    END LOOP;
    FOR obj IN
        SELECT t.oid::regtype AS typ
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_type t ON t.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = ext AND d.deptype = 'e'
    LOOP
        EXECUTE pg_catalog.format('ALTER TYPE %s OWNER TO %s', obj.typ, ext_owner);
    END LOOP;
    FOR obj IN
        SELECT p.oid::regprocedure AS fn
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON p.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = ext AND d.deptype = 'e'
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO %s', obj.fn, ext_owner);
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY INVOKER RESET ALL', obj.fn);
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', obj.fn);
    END LOOP;

    -- 2. Revoke every privilege held by anyone but the owner, PUBLIC included: privileges
    --    the installing role had by default (ALTER DEFAULT PRIVILEGES) must not survive, nor
    --    the implicit EXECUTE and USAGE that PUBLIC has on new functions and types.
    FOR obj IN
        WITH members AS (
            SELECT d.classid, d.objid
              FROM pg_catalog.pg_depend d
             WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext AND d.deptype = 'e'
        ), acls AS (
            SELECT pg_catalog.format('SCHEMA %I', n.nspname) AS target,
                   COALESCE(n.nspacl, pg_catalog.acldefault('n', n.nspowner)) AS acl, n.nspowner AS owner
              FROM members m JOIN pg_catalog.pg_namespace n ON m.classid = 'pg_catalog.pg_namespace'::regclass AND n.oid = m.objid
            UNION ALL
            SELECT CASE WHEN c.relkind = 'S' THEN 'SEQUENCE ' ELSE 'TABLE ' END || c.oid::regclass::text,
                   COALESCE(c.relacl, pg_catalog.acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner)),
                   c.relowner
              FROM members m JOIN pg_catalog.pg_class c ON m.classid = 'pg_catalog.pg_class'::regclass AND c.oid = m.objid
             WHERE c.relkind IN ('r', 'p', 'S')
            UNION ALL
            -- Column privileges: a grantee of a column alone appears in no table ACL.
            SELECT 'TABLE ' || c.oid::regclass::text, a.attacl, c.relowner
              FROM members m JOIN pg_catalog.pg_class c ON m.classid = 'pg_catalog.pg_class'::regclass AND c.oid = m.objid
              JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attacl IS NOT NULL
            UNION ALL
            SELECT 'FUNCTION ' || p.oid::regprocedure::text,
                   COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner)), p.proowner
              FROM members m JOIN pg_catalog.pg_proc p ON m.classid = 'pg_catalog.pg_proc'::regclass AND p.oid = m.objid
            UNION ALL
            SELECT 'TYPE ' || t.oid::regtype::text,
                   COALESCE(t.typacl, pg_catalog.acldefault('T', t.typowner)), t.typowner
              FROM members m JOIN pg_catalog.pg_type t ON m.classid = 'pg_catalog.pg_type'::regclass AND t.oid = m.objid
        )
        SELECT a.target,
               CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(x.grantee::regrole::text) END AS grantee
          FROM acls a, pg_catalog.aclexplode(a.acl) x
         WHERE x.grantee <> a.owner
        UNION
        -- Always PUBLIC too: a REVOKE makes every ACL explicit, so that a fresh install
        -- and an upgraded one store the same ACLs.
        SELECT a.target, 'PUBLIC' FROM acls a
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM %s CASCADE', obj.target, obj.grantee);
    END LOOP;

    -- 3. payment_owner: exactly what the extension's own statements need.
    GRANT USAGE ON SCHEMA payment TO payment_owner;
    FOR obj IN
        SELECT c.oid::regclass AS rel, c.relkind
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = ext AND d.deptype = 'e' AND c.relkind IN ('r', 'p', 'S')
    LOOP
        IF obj.relkind = 'S' THEN
            EXECUTE pg_catalog.format('GRANT USAGE ON SEQUENCE %s TO payment_owner', obj.rel);
        ELSE
            EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE %s TO payment_owner', obj.rel);
        END IF;
    END LOOP;
    -- Set by the functions that take a key, after switching (see above).
    GRANT SET ON PARAMETER log_min_error_statement TO payment_owner;

    -- 4. Exactly the grants of DESIGN.md's Roles section.
    GRANT USAGE ON SCHEMA payment TO payment_admin, payment_app, payment_webhook;

    GRANT SELECT ON payment.payments, payment.refunds, payment.recurring_payments, payment.invoice_payments,
                    payment.events, payment.api_requests, payment.callbacks, payment.order_link
       TO payment_admin, payment_app;

    GRANT EXECUTE ON FUNCTION
        payment.configure(text, text, text),
        payment.add_webhook_secret(text),
        payment.remove_webhook_secret(text),
        payment.add_callback(text, regprocedure),
        payment.remove_callback(text, regprocedure),
        payment.retry_failed_events(),
        payment.sync_events(timestamptz, integer),
        payment.health(),
        payment.refresh_payment(bigint),
        payment.refresh_payment_id(bigint),
        payment.refresh_subscription(bigint),
        payment.refresh_subscription_id(bigint),
        payment.link_order_table(regclass, name, name, name, name, name, text, text),
        payment.refund_payment(bigint, bigint),
        payment.refund_payment_id(bigint, bigint),
        payment.cancel_subscription(bigint, boolean),
        payment.cancel_subscription_id(bigint, boolean),
        -- link_order_table creates the row guard on the caller's table, which needs EXECUTE.
        payment.guard_order_rows()
       TO payment_admin;
    -- The SQL wrappers that return rows call their Rust *_id function as the caller.
    GRANT EXECUTE ON FUNCTION
        payment.publishable_key(),
        payment.create_payment(bigint, text, bigint),
        payment.create_payment_id(bigint, text, bigint),
        payment.cancel_payment(bigint),
        payment.cancel_payment_id(bigint),
        payment.start_subscription(bigint, text),
        payment.start_subscription_id(bigint, text),
        payment.to_minor_units(numeric, text),
        payment.from_minor_units(bigint, text)
       TO payment_admin, payment_app;
    GRANT EXECUTE ON FUNCTION payment.process_stripe_event(text, text) TO payment_webhook;
END
$harden$;

SELECT payment.harden();
