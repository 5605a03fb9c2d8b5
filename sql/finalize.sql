-- The hardening of every object of the extension, in one function that this file (at
-- CREATE EXTENSION) and every upgrade script (at ALTER EXTENSION UPDATE) call, so that an
-- object an upgrade adds gets the same owner, security setting, pinned search_path and
-- grants as the ones a fresh install made. An upgrade script that changes this function
-- carries its new body with CREATE OR REPLACE before calling it; the upgrade test checks
-- that the result is the catalog of a fresh install.
--
-- It runs as the role that runs CREATE EXTENSION or ALTER EXTENSION (a superuser), is
-- owned by the extension's owner like everything else, and nobody else may execute it.
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
