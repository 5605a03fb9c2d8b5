-- Stripe webhooks straight into PostgREST (or Supabase), without a relay process.
--
--   psql -v ON_ERROR_STOP=1 -d shop -f postgrest_wrapper.sql                 # schema api, caller web_anon
--   psql -v ON_ERROR_STOP=1 -d shop -v api_schema=public -v webhook_caller=service_role \
--        -f postgrest_wrapper.sql                                            # Supabase
--
-- Run it as a superuser, in a database where pg_payment is installed and configured.
-- It is idempotent. It creates:
--
--   <api_schema>.stripe_webhook(json)   Stripe -> PostgREST directly: POST /rpc/stripe_webhook
--                                       with Stripe's own Content-Type: application/json.
--   <api_schema>.stripe_webhook(text)   The same for Content-Type: text/plain (a proxy that
--                                       rewrites the Content-Type, or any other caller).
--   <api_schema>.process_stripe_event(payload text, signature text)
--                                       Named parameters, for callers that have already read
--                                       the body and the header (a Supabase Edge Function:
--                                       supabase.rpc('process_stripe_event', {payload, signature})).
--
-- Why these shapes (PostgREST 9 and later):
-- * PostgREST passes JSON *parameters*: POST /rpc/f with {"a": 1} calls f(a := 1). Stripe's
--   body is the event itself, so a named-parameter function would see its top-level keys.
-- * A function with a single UNNAMED parameter instead receives the request body as that
--   parameter: `json`/`jsonb` for Content-Type application/json, `text` for text/plain,
--   `bytea` for application/octet-stream, `xml` for text/xml. PostgREST hands the body over
--   unchanged (it binds the raw bytes and casts them, `$1::json`), and the `json` type keeps
--   its input text verbatim, so `$1::text` is byte for byte what Stripe signed. Never use
--   `jsonb` here: it re-encodes (key order, whitespace) and the signature no longer matches.
--   Stripe always sends `Content-Type: application/json; charset=utf-8` and cannot be told
--   otherwise: the `text` variant only works behind a proxy that rewrites the Content-Type.
-- * Request headers arrive as the transaction-scoped setting `request.headers`, a JSON
--   object with lower-cased names:
--       current_setting('request.headers', true)::json->>'stripe-signature'
-- * Status: PostgREST answers 200 when the function returns; `response.status` overrides it
--   and the transaction still COMMITs (so a `failed` event stays recorded for the retry);
--   an error rolls back and is mapped by SQLSTATE (class 22 -> 400 but class 28 -> 403,
--   55000/57014/40001 -> 500); RAISE SQLSTATE 'PT400' answers exactly 400.
--
-- The wrappers are SECURITY DEFINER, owned by the NOLOGIN role stripe_webhook_api, which is
-- a member of payment_webhook and nothing else. The caller role (PostgREST's anonymous role:
-- Stripe cannot send a JWT; or Supabase's service_role, which is NOINHERIT, so membership of
-- payment_webhook would not help it) gets EXECUTE on these three functions only, never
-- membership of payment_webhook, and still cannot read a payment table.

\if :{?api_schema}
\else
  \set api_schema api
\endif
\if :{?webhook_caller}
\else
  \set webhook_caller web_anon
\endif
\set ON_ERROR_STOP on

BEGIN;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'stripe_webhook_api') THEN
        CREATE ROLE stripe_webhook_api NOLOGIN;
    END IF;
END
$$;
GRANT payment_webhook TO stripe_webhook_api;

CREATE SCHEMA IF NOT EXISTS :"api_schema";
GRANT USAGE ON SCHEMA :"api_schema" TO stripe_webhook_api, :"webhook_caller";

-- The body as text/plain, and the core of the other two.
CREATE OR REPLACE FUNCTION :"api_schema".stripe_webhook(text)
RETURNS jsonb
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    result jsonb;
BEGIN
    BEGIN
        result := payment.process_stripe_event(
            $1,
            nullif(current_setting('request.headers', true), '')::json ->> 'stripe-signature');
    EXCEPTION
        -- A bad or stale signature (class 28), or a body that is not a Stripe event or no
        -- header at all (class 22): 400 with a short reason, as the Python relay answers.
        -- (Nothing was written; other errors pass through and PostgREST answers 500.)
        WHEN invalid_authorization_specification OR data_exception THEN
            RAISE SQLSTATE 'PT400' USING MESSAGE =
                CASE WHEN SQLSTATE LIKE '28%' THEN 'signature verification failed'
                     ELSE 'invalid payload' END;
    END;
    IF result ->> 'outcome' = 'failed' THEN
        -- Your callback raised: 500 so Stripe delivers the event again. The transaction
        -- commits, so payment.events keeps the event as failed, with the error (not sent
        -- back to Stripe).
        PERFORM set_config('response.status', '500', true);
        RETURN jsonb_build_object('event_id', result -> 'event_id', 'type', result -> 'type',
                                  'outcome', 'failed');
    END IF;
    RETURN result;  -- applied, duplicate or ignored: 200
END
$fn$;

-- The body as Stripe sends it (application/json). `json`, not `jsonb`: see above.
CREATE OR REPLACE FUNCTION :"api_schema".stripe_webhook(json)
RETURNS jsonb
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT :"api_schema".stripe_webhook($1::text);
END;

-- Named parameters: the caller passes the raw body and the header itself and maps the
-- outcome (and the SQLSTATE of an error) to a status, like relay.py.
CREATE OR REPLACE FUNCTION :"api_schema".process_stripe_event(payload text, signature text)
RETURNS jsonb
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT payment.process_stripe_event(payload, signature);
END;

ALTER FUNCTION :"api_schema".stripe_webhook(text) OWNER TO stripe_webhook_api;
ALTER FUNCTION :"api_schema".stripe_webhook(json) OWNER TO stripe_webhook_api;
ALTER FUNCTION :"api_schema".process_stripe_event(text, text) OWNER TO stripe_webhook_api;

-- EXECUTE for the caller only: not PUBLIC, and not the roles that default privileges may
-- have added (Supabase grants new functions in public to anon and authenticated).
REVOKE ALL ON FUNCTION :"api_schema".stripe_webhook(text), :"api_schema".stripe_webhook(json),
    :"api_schema".process_stripe_event(text, text) FROM PUBLIC;
SELECT format('REVOKE ALL ON FUNCTION %s FROM %I', p.oid::regprocedure, r.rolname)
  FROM pg_catalog.pg_proc p
 CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) a
  JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
 WHERE p.pronamespace = :'api_schema'::regnamespace
   AND p.proname IN ('stripe_webhook', 'process_stripe_event')
   AND r.rolname NOT IN ('stripe_webhook_api', :'webhook_caller')
\gexec
GRANT EXECUTE ON FUNCTION :"api_schema".stripe_webhook(text), :"api_schema".stripe_webhook(json),
    :"api_schema".process_stripe_event(text, text) TO :"webhook_caller";

COMMIT;

-- Tell a running PostgREST to reload its schema cache (harmless when none listens).
NOTIFY pgrst, 'reload schema';
