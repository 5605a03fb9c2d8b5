-- The payment tables. Rows the user's business depends on are marked for pg_dump;
-- secrets are deliberately not (a restore must be followed by payment.configure).

-- This database's installation id, sent in Stripe metadata so that two databases on one
-- Stripe account never apply each other's objects, and part of every Idempotency-Key.
-- Made here, at CREATE EXTENSION, so it exists before any transaction could roll it back.
-- A restore runs CREATE EXTENSION (a new row) and then brings the dumped row back: the
-- oldest row is the installation's id, and objects stamped with any of them are ours.
CREATE TABLE payment.installation (
    id         uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
INSERT INTO payment.installation DEFAULT VALUES;

CREATE TABLE payment.secrets (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('secret_key', 'publishable_key', 'webhook_secret')),
    value      text NOT NULL,
    livemode   boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- Unique on a digest, never on the value: a unique violation's DETAIL names the key's
-- columns, and that line reaches the server log.
CREATE UNIQUE INDEX secrets_kind_value_idx ON payment.secrets (kind, pg_catalog.md5(value));
COMMENT ON TABLE payment.secrets IS
    'Stripe keys and webhook secrets. Readable by payment_owner only; left out of pg_dump on purpose.';

CREATE TABLE payment.order_link (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    order_table     regclass NOT NULL,
    table_name      text NOT NULL,
    id_column       name NOT NULL,
    amount_column   name NOT NULL,
    user_column     name NOT NULL,
    status_column   name NOT NULL,
    currency_column name,
    paid_status     text NOT NULL,
    -- "col type, ..." of the linked columns when linked: the DDL guard refuses changes to it.
    column_signature text NOT NULL,
    linked_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- The one currency of all orders, when the table has no currency column (lower case).
    currency        text
);
COMMENT ON TABLE payment.order_link IS 'The application''s order table, linked once by payment.link_order_table().';

CREATE TABLE payment.callbacks (
    kind       text NOT NULL CHECK (kind IN ('payment', 'refund', 'recurring_management', 'recurring_deduction')),
    handler    regprocedure NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (kind, handler)
);
COMMENT ON TABLE payment.callbacks IS 'Business logic registered with payment.add_callback(), run from the triggers on the payment tables.';

-- One Stripe customer per order user, reused by every subscription of that user.
-- Test-mode and live-mode customers are different objects at Stripe.
CREATE TABLE payment.customers (
    user_key           text NOT NULL,
    livemode           boolean NOT NULL DEFAULT false,
    stripe_customer_id text NOT NULL UNIQUE,
    created_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (user_key, livemode)
);

CREATE SEQUENCE payment.recurring_payments_id_seq;
CREATE TABLE payment.recurring_payments (
    id                     bigint PRIMARY KEY DEFAULT pg_catalog.nextval('payment.recurring_payments_id_seq'),
    order_id               bigint NOT NULL,
    price_id               text,
    stripe_customer_id     text,
    stripe_subscription_id text UNIQUE,
    status                 text NOT NULL DEFAULT 'incomplete' CHECK (status IN (
                               'incomplete', 'incomplete_expired', 'trialing', 'active',
                               'past_due', 'canceled', 'unpaid', 'paused')),
    cancel_at_period_end   boolean NOT NULL DEFAULT false,
    current_period_start   timestamptz,
    current_period_end     timestamptz,
    canceled_at            timestamptz,
    -- What Stripe.js needs to confirm the first payment of an incomplete subscription.
    client_secret          text,
    livemode               boolean NOT NULL DEFAULT false,
    last_event_at          timestamptz,
    created_at             timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at             timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- A scheduled cancellation (Stripe's cancel_at) and the end of a trial.
    cancel_at              timestamptz,
    trial_end              timestamptz
) WITH (fillfactor = 90);
ALTER SEQUENCE payment.recurring_payments_id_seq OWNED BY payment.recurring_payments.id;
CREATE INDEX recurring_payments_order_id_idx ON payment.recurring_payments (order_id);

CREATE SEQUENCE payment.payments_id_seq;
CREATE TABLE payment.payments (
    id                       bigint PRIMARY KEY DEFAULT pg_catalog.nextval('payment.payments_id_seq'),
    order_id                 bigint NOT NULL,
    recurring_payment_id     bigint REFERENCES payment.recurring_payments (id),
    amount                   bigint NOT NULL CHECK (amount >= 0),
    currency                 text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    status                   text NOT NULL DEFAULT 'pending' CHECK (status IN (
                                 'pending', 'requires_action', 'processing', 'succeeded', 'failed',
                                 'canceled', 'partially_refunded', 'refunded')),
    amount_received          bigint NOT NULL DEFAULT 0 CHECK (amount_received >= 0),
    amount_refunded          bigint NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    stripe_payment_intent_id text,
    stripe_charge_id         text,
    stripe_invoice_id        text UNIQUE,
    client_secret            text,
    failure_code             text,
    failure_message          text,
    livemode                 boolean NOT NULL DEFAULT false,
    last_event_at            timestamptz,
    created_at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- The card issuer's reason (insufficient_funds...) beside Stripe's failure_code.
    decline_code             text
) WITH (fillfactor = 90);
ALTER SEQUENCE payment.payments_id_seq OWNED BY payment.payments.id;
CREATE INDEX payments_order_id_idx ON payment.payments (order_id);
-- A one-time payment has a PaymentIntent of its own; one PaymentIntent may pay several
-- invoices of a subscription, and each of their payment rows names it.
CREATE UNIQUE INDEX payments_one_time_intent_idx ON payment.payments (stripe_payment_intent_id)
    WHERE recurring_payment_id IS NULL;
CREATE INDEX payments_invoice_intent_idx ON payment.payments (stripe_payment_intent_id)
    WHERE recurring_payment_id IS NOT NULL;

-- Which payment a charge belongs to, for refunds that name only their charge (old API
-- versions). Kept apart so that recording a charge on its payment touches no index of
-- payments: the update stays HOT (fillfactor leaves room on the page for that).
CREATE TABLE payment.charges (
    stripe_charge_id text PRIMARY KEY,
    payment_id       bigint NOT NULL
);
CREATE INDEX payments_recurring_payment_id_idx ON payment.payments (recurring_payment_id) WHERE recurring_payment_id IS NOT NULL;

CREATE SEQUENCE payment.refunds_id_seq;
CREATE TABLE payment.refunds (
    id               bigint PRIMARY KEY DEFAULT pg_catalog.nextval('payment.refunds_id_seq'),
    payment_id       bigint NOT NULL REFERENCES payment.payments (id),
    amount           bigint NOT NULL CHECK (amount > 0),
    currency         text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN (
                         'pending', 'requires_action', 'succeeded', 'failed', 'canceled')),
    reason           text,
    stripe_refund_id text UNIQUE,
    failure_reason   text,
    -- Set when refund_payment asked for it: such refunds count as attempts in its keys.
    idempotency_key  text,
    last_event_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at       timestamptz NOT NULL DEFAULT pg_catalog.now()
) WITH (fillfactor = 90);
ALTER SEQUENCE payment.refunds_id_seq OWNED BY payment.refunds.id;
CREATE INDEX refunds_payment_id_idx ON payment.refunds (payment_id);

-- API 2025-03-31+: Stripe's InvoicePayments, what paid each invoice of a subscription
-- (src/webhook/apply/invoice_payments.rs). payment_type payment_intent or charge is money
-- Stripe received; payment_record is money paid outside Stripe.
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

-- One row per order that a payment action has touched, locked FOR UPDATE by every action on
-- that order (src/store/orders.rs, take_order_lock): a lock no role but payment_owner can
-- take, unlike an advisory lock. Not dumped: a lock needs no history.
CREATE TABLE payment.order_locks (
    order_id bigint PRIMARY KEY
);

-- Where the last sync_events call stopped in Stripe's event list (src/store/sync_state.rs):
-- one row at most. Dumped, so a restored database goes on from there.
CREATE TABLE payment.sync_state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cursor_created  timestamptz NOT NULL,
    cursor_event_id text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Numbers every change announced by NOTIFY (src/callbacks): two identical notifications
-- of one transaction are never merged, and a row's changes are told apart in order.
CREATE SEQUENCE payment.change_seq;

-- An enum, not a CHECK: every event inserts a row here, and Postgres re-reads a table's
-- CHECK expressions for each statement that writes it.
CREATE TYPE payment.event_outcome AS ENUM ('applied', 'ignored', 'failed');

CREATE TABLE payment.events (
    id           text PRIMARY KEY,
    type         text NOT NULL,
    livemode     boolean NOT NULL,
    api_version  text,
    created      timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    processed_at timestamptz,
    payload      jsonb NOT NULL,
    outcome      payment.event_outcome NOT NULL,
    error        text
);
CREATE INDEX events_failed_idx ON payment.events (received_at) WHERE outcome = 'failed';
COMMENT ON TABLE payment.events IS 'Every verified Stripe webhook event, with what processing it did (the callback-processed record).';

CREATE SEQUENCE payment.api_requests_id_seq;
CREATE TABLE payment.api_requests (
    id                bigint PRIMARY KEY DEFAULT pg_catalog.nextval('payment.api_requests_id_seq'),
    method            text NOT NULL,
    path              text NOT NULL,
    idempotency_key   text,
    http_status       integer,
    stripe_request_id text,
    duration_ms       integer NOT NULL,
    error_type        text,
    error_code        text,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now()
);
ALTER SEQUENCE payment.api_requests_id_seq OWNED BY payment.api_requests.id;
COMMENT ON TABLE payment.api_requests IS 'Every outgoing Stripe call, retries included. Never holds a key or card data.';

-- pg_dump keeps the rows the business depends on, and the sequences so new rows get fresh ids.
SELECT pg_catalog.pg_extension_config_dump('payment.installation', '');
SELECT pg_catalog.pg_extension_config_dump('payment.order_link', '');
SELECT pg_catalog.pg_extension_config_dump('payment.callbacks', '');
SELECT pg_catalog.pg_extension_config_dump('payment.customers', '');
SELECT pg_catalog.pg_extension_config_dump('payment.recurring_payments', '');
SELECT pg_catalog.pg_extension_config_dump('payment.payments', '');
SELECT pg_catalog.pg_extension_config_dump('payment.refunds', '');
SELECT pg_catalog.pg_extension_config_dump('payment.charges', '');
SELECT pg_catalog.pg_extension_config_dump('payment.events', '');
SELECT pg_catalog.pg_extension_config_dump('payment.api_requests', '');
SELECT pg_catalog.pg_extension_config_dump('payment.recurring_payments_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payment.payments_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payment.refunds_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payment.api_requests_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payment.invoice_payments', '');
SELECT pg_catalog.pg_extension_config_dump('payment.invoice_payments_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payment.sync_state', '');
