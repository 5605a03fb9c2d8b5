-- Functions whose SQL signature pgrx cannot spell (regclass, name, regprocedure arguments),
-- the triggers on the payment tables, and the guards that keep the order link permanent.

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

CREATE FUNCTION payment.add_callback(kind text, handler regprocedure)
    RETURNS void VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'add_callback_wrapper';
CREATE FUNCTION payment.remove_callback(kind text, handler regprocedure)
    RETURNS void VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'remove_callback_wrapper';

-- The payment actions return their row; the Rust functions behind them return its id.
CREATE FUNCTION payment.create_payment(order_id bigint, currency text, amount bigint)
RETURNS payment.payments LANGUAGE plpgsql AS $fn$
DECLARE
    new_id bigint;
    result payment.payments;
BEGIN
    -- Call it once, into a variable: in a WHERE clause a volatile function could run per row.
    new_id := payment.create_payment_id(order_id, currency, amount);
    SELECT * INTO result FROM payment.payments WHERE id = new_id;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION payment.create_payment(bigint, text, bigint) IS
    'Charge an order: amount in minor units, checked against the order''s price; returns the payment with its client_secret.';

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

CREATE FUNCTION payment.refund_payment(payment_id bigint, refund_amount bigint DEFAULT NULL)
RETURNS payment.refunds LANGUAGE plpgsql AS $fn$
DECLARE
    new_id bigint;
    result payment.refunds;
BEGIN
    -- Call it once, into a variable: in a WHERE clause a volatile function could run per row.
    new_id := payment.refund_payment_id(payment_id, refund_amount);
    SELECT * INTO result FROM payment.refunds WHERE id = new_id;
    RETURN result;
END
$fn$;

CREATE FUNCTION payment.start_subscription(order_id bigint, price_id text)
RETURNS payment.recurring_payments LANGUAGE plpgsql AS $fn$
DECLARE
    new_id bigint;
    result payment.recurring_payments;
BEGIN
    -- Call it once, into a variable: in a WHERE clause a volatile function could run per row.
    new_id := payment.start_subscription_id(order_id, price_id);
    SELECT * INTO result FROM payment.recurring_payments WHERE id = new_id;
    RETURN result;
END
$fn$;

CREATE FUNCTION payment.cancel_subscription(recurring_payment_id bigint, at_period_end boolean DEFAULT false)
RETURNS payment.recurring_payments LANGUAGE plpgsql AS $fn$
DECLARE
    new_id bigint;
    result payment.recurring_payments;
BEGIN
    -- Call it once, into a variable: in a WHERE clause a volatile function could run per row.
    new_id := payment.cancel_subscription_id(recurring_payment_id, at_period_end);
    SELECT * INTO result FROM payment.recurring_payments WHERE id = new_id;
    RETURN result;
END
$fn$;

-- Backends keep copies of the secrets and callbacks (src/store/cache.rs); a change to
-- either table tells every backend to drop them.
CREATE FUNCTION payment.invalidate_payment_caches() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'invalidate_payment_caches_wrapper';
CREATE TRIGGER invalidate_caches AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON payment.secrets
    FOR EACH STATEMENT EXECUTE FUNCTION payment.invalidate_payment_caches();
CREATE TRIGGER invalidate_caches AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON payment.callbacks
    FOR EACH STATEMENT EXECUTE FUNCTION payment.invalidate_payment_caches();

-- Changes of a row: NOTIFY and the registered business logic (src/callbacks). A change is a
-- new row, or a new value of a field that the callbacks' `previous` lists
-- (src/callbacks/changes.rs names the same fields).
CREATE FUNCTION payment.on_status_change() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'on_status_change_wrapper';

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

-- The guards of the order link (src/api/link_guards.rs). The row guard is created on the
-- linked table by link_order_table (and kept by pg_dump with the table): an order that has
-- payments cannot be deleted, re-keyed or truncated away.
CREATE FUNCTION payment.guard_order_rows() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'guard_order_rows_wrapper';

-- DDL that would break the link (drop, rename or move the table, drop, rename or retype a
-- linked column, drop or disable a guard trigger) is refused and the whole command rolls
-- back; every other command goes through.
CREATE FUNCTION payment.guard_order_link() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'guard_order_link_ddl_wrapper';
CREATE FUNCTION payment.guard_order_link_drop() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'guard_order_link_drop_wrapper';

CREATE EVENT TRIGGER pg_payment_guard_order_link ON ddl_command_end
    EXECUTE FUNCTION payment.guard_order_link();
CREATE EVENT TRIGGER pg_payment_guard_order_link_drop ON sql_drop
    EXECUTE FUNCTION payment.guard_order_link_drop();
