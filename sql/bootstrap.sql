-- pg_payment bootstrap: refuse databases we cannot serve, create the cluster-wide roles
-- and the schema that the extension owns.
DO $bootstrap$
DECLARE
    r text;
BEGIN
    -- Stripe signs the exact bytes it sent; any other server encoding could change them.
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'pg_payment needs a UTF8 database; this one is %', pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Create the database WITH ENCODING ''UTF8'' TEMPLATE template0 and install pg_payment there.';
    END IF;

    IF EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'payment') THEN
        RAISE EXCEPTION 'a schema named "payment" already exists in this database and does not belong to pg_payment'
            USING ERRCODE = 'duplicate_schema',
                  HINT = 'Rename or drop that schema (ALTER SCHEMA payment RENAME TO ...), then CREATE EXTENSION pg_payment again.';
    END IF;

    -- Roles are cluster-wide: a second database reuses them, DROP EXTENSION leaves them.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles
               WHERE rolname = 'payment_owner' AND (rolcanlogin OR rolsuper OR rolcreaterole OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role payment_owner exists but can log in or has superuser, createrole or bypassrls rights'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'ALTER ROLE payment_owner NOLOGIN NOSUPERUSER NOCREATEROLE NOBYPASSRLS; it owns the payment tables and must stay powerless.';
    END IF;
    -- Its members would hold every right of the extension's code, the keys included.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles o ON o.oid = m.roleid
                WHERE o.rolname = 'payment_owner')
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles o ON o.oid = m.member
                   WHERE o.rolname = 'payment_owner') THEN
        RAISE EXCEPTION 'role payment_owner has members or is a member of another role'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'REVOKE payment_owner FROM every role (and every role FROM payment_owner); the extension''s code runs with its rights.';
    END IF;
    FOREACH r IN ARRAY ARRAY['payment_owner', 'payment_admin', 'payment_app', 'payment_webhook'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$bootstrap$;

CREATE SCHEMA payment;
COMMENT ON SCHEMA payment IS 'pg_payment: Stripe payments, refunds, subscriptions and their webhooks';
