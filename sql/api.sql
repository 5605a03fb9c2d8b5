-- Functions whose SQL signature pgrx cannot spell (regclass, name, regprocedure arguments),
-- the triggers on the payment tables, and the guards that keep the order link permanent.

CREATE FUNCTION payment.link_order_table(
    order_table     regclass,
    id_column       name DEFAULT 'id',
    amount_column   name DEFAULT 'price',
    user_column     name DEFAULT 'user_id',
    status_column   name DEFAULT 'status',
    currency_column name DEFAULT NULL,
    paid_status     text DEFAULT 'paid'
) RETURNS void VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'link_order_table_wrapper';
COMMENT ON FUNCTION payment.link_order_table(regclass, name, name, name, name, name, text) IS
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

-- Status changes: NOTIFY and the registered business logic (src/callbacks).
CREATE FUNCTION payment.on_status_change() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'on_status_change_wrapper';

CREATE TRIGGER status_inserted AFTER INSERT ON payment.payments
    FOR EACH ROW EXECUTE FUNCTION payment.on_status_change();
CREATE TRIGGER status_changed AFTER UPDATE OF status ON payment.payments
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION payment.on_status_change();
CREATE TRIGGER status_inserted AFTER INSERT ON payment.refunds
    FOR EACH ROW EXECUTE FUNCTION payment.on_status_change();
CREATE TRIGGER status_changed AFTER UPDATE OF status ON payment.refunds
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION payment.on_status_change();
CREATE TRIGGER status_inserted AFTER INSERT ON payment.recurring_payments
    FOR EACH ROW EXECUTE FUNCTION payment.on_status_change();
CREATE TRIGGER status_changed AFTER UPDATE OF status ON payment.recurring_payments
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION payment.on_status_change();

-- On the linked order table (created by link_order_table, kept by pg_dump with the table):
-- an order that has payments cannot be deleted, re-keyed or truncated away.
CREATE FUNCTION payment.guard_order_rows() RETURNS trigger LANGUAGE plpgsql AS $guard$
DECLARE
    linked_id bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM payment.payments) OR EXISTS (SELECT 1 FROM payment.recurring_payments) THEN
            RAISE EXCEPTION 'pg_payment: % is linked to payments and cannot be truncated', TG_TABLE_NAME
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = 'Payments refer to its orders; delete only orders that have none.';
        END IF;
        RETURN NULL;
    END IF;
    linked_id := (pg_catalog.to_jsonb(OLD) ->> TG_ARGV[0])::bigint;
    IF TG_OP = 'UPDATE' AND (pg_catalog.to_jsonb(NEW) ->> TG_ARGV[0])::bigint IS NOT DISTINCT FROM linked_id THEN
        RETURN NEW;
    END IF;
    IF EXISTS (SELECT 1 FROM payment.payments p WHERE p.order_id = linked_id)
       OR EXISTS (SELECT 1 FROM payment.recurring_payments r WHERE r.order_id = linked_id) THEN
        RAISE EXCEPTION 'pg_payment: order % has payments and cannot be %', linked_id,
                        CASE TG_OP WHEN 'DELETE' THEN 'deleted' ELSE 'given another id' END
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Keep orders that have payments; mark them with a status instead.';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$guard$;

-- DDL that would break the link (drop or rename the table, drop, rename or retype a
-- linked column) is refused: it is checked after every DDL command, cheaply, and the
-- whole command rolls back.
CREATE FUNCTION payment.guard_order_link() RETURNS event_trigger LANGUAGE plpgsql AS $guard$
DECLARE
    link record;
    current_name text;
    current_signature text;
BEGIN
    SELECT * INTO link FROM payment.order_link;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) INTO current_name
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = link.order_table;
    IF current_name IS NULL THEN
        RAISE EXCEPTION 'pg_payment: % is the linked order table and cannot be dropped', link.table_name
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Payments refer to its orders; the link is permanent.';
    END IF;
    IF current_name <> link.table_name THEN
        RAISE EXCEPTION 'pg_payment: % is the linked order table and cannot be renamed or moved', link.table_name
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Payments refer to it by name after a dump and restore; the link is permanent.';
    END IF;
    SELECT pg_catalog.string_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod), ', '
                                 ORDER BY pg_catalog.array_position(cols, a.attname::text))
      INTO current_signature
      FROM (SELECT ARRAY[link.id_column::text, link.amount_column::text, link.user_column::text,
                         link.status_column::text, link.currency_column::text] AS cols) k
      JOIN pg_catalog.pg_attribute a
        ON a.attrelid = link.order_table AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname::text = ANY (k.cols);
    IF current_signature IS DISTINCT FROM link.column_signature THEN
        RAISE EXCEPTION 'pg_payment: the linked columns of % cannot be dropped, renamed or retyped', link.table_name
            USING ERRCODE = 'dependent_objects_still_exist',
                  DETAIL = pg_catalog.format('Linked: %s. Now: %s.', link.column_signature,
                                             COALESCE(current_signature, 'none')),
                  HINT = 'The link is permanent; add new columns instead of changing these.';
    END IF;
END
$guard$;

CREATE EVENT TRIGGER pg_payment_guard_order_link ON ddl_command_end
    EXECUTE FUNCTION payment.guard_order_link();
