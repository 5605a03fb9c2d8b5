"""Roles, configuration and secrets: who may do what, and where secrets never
show up."""

import psycopg
import pytest

import stripe_events as ev
from e2e_helpers import ADMIN, APP, OUTSIDER, WEBHOOK, denied

ENTRY_POINTS = [
    "configure(text,text,text)",
    "add_webhook_secret(text)",
    "remove_webhook_secret(text)",
    "publishable_key()",
    "link_order_table(regclass,name,name,name,name,name,text,text)",
    "process_stripe_event(text,text)",
    "retry_failed_events()",
    "add_callback(text,regprocedure)",
    "remove_callback(text,regprocedure)",
]

DOCUMENTED_TABLES = ["payments", "refunds", "recurring_payments", "events", "api_requests", "callbacks"]


@pytest.fixture(params=["fresh", "upgraded"])
def install_mode(request):
    """Every test here runs on a fresh install and on one updated from 0.1.0."""
    return request.param


def load_library(conn):
    """GUCs exist once the library is loaded; calling any function loads it."""
    conn.execute("SELECT payment.publishable_key()")


# --------------------------------------------------------------------------
# Installation shape


def test_roles_exist_and_payment_owner_is_a_powerless_owner(db):
    roles = {r["rolname"]: r for r in db.rows(
        "SELECT rolname, rolsuper, rolcanlogin, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles"
        " WHERE rolname IN ('payment_owner', 'payment_admin', 'payment_app', 'payment_webhook')")}
    assert set(roles) == {"payment_owner", "payment_admin", "payment_app", "payment_webhook"}
    owner = roles["payment_owner"]
    assert not owner["rolsuper"] and not owner["rolcanlogin"]
    assert not owner["rolcreaterole"] and not owner["rolbypassrls"]


def extension_owner(db):
    return db.value("SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'pg_payment'")


def test_schema_tables_and_sequences_belong_to_the_extensions_owner(db):
    """DESIGN: every object belongs to the role that ran CREATE EXTENSION; payment_owner,
    whose rights the extension's code runs with, owns nothing it could rewrite."""
    owner = extension_owner(db)
    assert db.value("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'payment'") == owner
    owners = db.rows("SELECT c.relname, c.relkind, c.relowner::regrole::text AS owner FROM pg_class c"
                     " WHERE c.relnamespace = 'payment'::regnamespace AND c.relkind IN ('r', 'S', 'v')")
    names = {o["relname"] for o in owners}
    assert set(DOCUMENTED_TABLES) <= names
    assert [o for o in owners if o["owner"] != owner] == []


def test_entry_points_pin_search_path_and_run_with_the_callers_rights(db):
    """Functions are SECURITY INVOKER, owned by the extension's owner; their code switches
    to payment_owner for its work (src/store/identity.rs)."""
    owner = extension_owner(db)
    for sig in ENTRY_POINTS:
        r = db.row("SELECT prosecdef, proowner::regrole::text AS owner, proconfig FROM pg_proc"
                   " WHERE oid = to_regprocedure(%s)", (f"payment.{sig}",))
        assert r is not None, f"payment.{sig} does not exist"
        assert r["owner"] == owner, f"payment.{sig} is owned by {r['owner']}"
        config = [c.replace(" ", "") for c in (r["proconfig"] or [])]
        assert config == ["search_path=pg_catalog,pg_temp"], f"payment.{sig} has proconfig {r['proconfig']}"
        assert not r["prosecdef"], f"payment.{sig} is SECURITY DEFINER"


def test_every_function_in_the_schema_pins_search_path(db):
    loose = db.rows("""
        SELECT p.oid::regprocedure::text AS f, p.proconfig FROM pg_proc p
        WHERE p.pronamespace = 'payment'::regnamespace
          AND NOT coalesce(array_to_string(p.proconfig, ';') ~ 'search_path=pg_catalog, ?pg_temp', false)""")
    assert loose == []


def test_nothing_in_the_schema_is_granted_to_public(db):
    public_funcs = db.rows("""
        SELECT p.oid::regprocedure::text AS f FROM pg_proc p
        WHERE p.pronamespace = 'payment'::regnamespace
          AND (p.proacl IS NULL OR EXISTS (
                SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0))""")
    assert public_funcs == [], "functions executable by PUBLIC"
    public_tables = db.rows("""
        SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = 'payment'::regnamespace AND c.relkind IN ('r', 'v', 'S')
          AND EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = 0)""")
    assert public_tables == []


# Every privilege on the extension's objects held by anyone but their owner: exactly
# DESIGN.md's Roles section, nothing more (an upgrade must leave the same).
ADMIN_ONLY_FUNCTIONS = [
    "add_callback(text,regprocedure)", "add_webhook_secret(text)", "cancel_subscription(bigint,boolean)",
    "cancel_subscription_id(bigint,boolean)", "configure(text,text,text)", "guard_order_rows()", "health()",
    "refresh_payment(bigint)", "refresh_payment_id(bigint)", "refresh_subscription(bigint)",
    "refresh_subscription_id(bigint)",
    "link_order_table(regclass,name,name,name,name,name,text,text)", "refund_payment(bigint,bigint)",
    "refund_payment_id(bigint,bigint)", "remove_callback(text,regprocedure)", "remove_webhook_secret(text)",
    "retry_failed_events()", "sync_events(timestampwithtimezone,integer)",
]
# The *_id helpers are what the SQL wrappers of the same name call as the caller.
APP_FUNCTIONS = [
    "cancel_payment(bigint)", "cancel_payment_id(bigint)",
    "create_payment(bigint,text,bigint)", "create_payment_id(bigint,text,bigint)",
    "from_minor_units(bigint,text)", "publishable_key()", "start_subscription(bigint,text)",
    "start_subscription_id(bigint,text)", "to_minor_units(numeric,text)",
]
ALL_TABLES = ["api_requests", "callbacks", "charges", "customers", "events", "installation", "invoice_payments",
              "order_link",
              "order_locks", "payments", "recurring_payments", "refunds", "secrets", "sync_state"]
SEQUENCES = ["api_requests_id_seq", "change_seq", "invoice_payments_id_seq", "payments_id_seq", "recurring_payments_id_seq", "refunds_id_seq",
             "secrets_id_seq"]
READABLE_TABLES = ["api_requests", "callbacks", "events", "invoice_payments", "order_link", "payments",
                   "recurring_payments", "refunds"]
EXPECTED_GRANTS = sorted(
    [("schema payment", role, "USAGE") for role in ("payment_admin", "payment_app", "payment_webhook")]
    + [(f"table payment.{t}", role, "SELECT") for t in READABLE_TABLES for role in ("payment_admin", "payment_app")]
    + [(f"function payment.{f}", "payment_admin", "EXECUTE") for f in ADMIN_ONLY_FUNCTIONS + APP_FUNCTIONS]
    + [(f"function payment.{f}", "payment_app", "EXECUTE") for f in APP_FUNCTIONS]
    + [("function payment.process_stripe_event(text,text)", "payment_webhook", "EXECUTE")]
    # payment_owner: what the extension's own statements need, and nothing it could own.
    + [("schema payment", "payment_owner", "USAGE")]
    + [(f"table payment.{t}", "payment_owner", p) for t in ALL_TABLES
       for p in ("DELETE", "INSERT", "SELECT", "UPDATE")]
    + [(f"table payment.{q}", "payment_owner", "USAGE") for q in SEQUENCES]
)

GRANTS_ON_MEMBERS = """
    WITH members AS (
        SELECT classid, objid FROM pg_depend
         WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
           AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_payment')),
    acls AS (
        SELECT 'schema ' || n.nspname AS obj, n.nspacl AS acl, n.nspowner AS owner
          FROM members m JOIN pg_namespace n ON m.classid = 'pg_namespace'::regclass AND n.oid = m.objid
        UNION ALL
        SELECT 'table ' || c.oid::regclass::text, c.relacl, c.relowner
          FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
        UNION ALL
        SELECT 'column ' || c.oid::regclass::text || '.' || a.attname, a.attacl, c.relowner
          FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attacl IS NOT NULL
        UNION ALL
        SELECT 'function ' || replace(p.oid::regprocedure::text, ' ', ''),
               coalesce(p.proacl, acldefault('f', p.proowner)), p.proowner
          FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
        UNION ALL
        SELECT 'type ' || t.oid::regtype::text, coalesce(t.typacl, acldefault('T', t.typowner)), t.typowner
          FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid)
    SELECT obj, CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE x.grantee::regrole::text END, x.privilege_type
      FROM acls, aclexplode(acls.acl) x
     WHERE x.grantee <> acls.owner
     ORDER BY 1, 2, 3"""


def test_grants_on_the_extensions_objects_are_exactly_the_documented_ones(db):
    assert [tuple(r.values()) for r in db.rows(GRANTS_ON_MEMBERS)] == EXPECTED_GRANTS


def test_default_privileges_of_the_installing_role_give_nobody_anything(new_database, install_mode):
    """ALTER DEFAULT PRIVILEGES of the role that runs CREATE EXTENSION would hand every new
    table, function and the schema to another role; the install revokes it all."""
    from conftest import create_extension
    d = new_database()
    for kind, priv in (("TABLES", "SELECT, INSERT"), ("FUNCTIONS", "EXECUTE"), ("SCHEMAS", "USAGE, CREATE"),
                       ("SEQUENCES", "USAGE"), ("TYPES", "USAGE")):
        d.conn.execute(f"ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT {priv} ON {kind} TO {OUTSIDER}")
    create_extension(d.conn, install_mode)
    d.conn.execute("SELECT payment.configure(%s::text, %s::text, %s::text)",
                   (ev.SECRET_KEY, ev.PUBLISHABLE_KEY, ev.WEBHOOK_SECRET))
    analyst = d.connect(OUTSIDER)
    denied(analyst, "SELECT value FROM payment.secrets")
    denied(analyst, "SELECT payment.configure('sk_test_attackersOwnAccount00', NULL, NULL)")
    assert [r for r in d.rows(GRANTS_ON_MEMBERS) if OUTSIDER in r.values()] == []


def test_nobody_may_run_the_hardening_but_the_extensions_owner(db):
    r = db.row("SELECT proowner::regrole::text AS owner, prosecdef, proacl::text[] AS acl FROM pg_proc"
               " WHERE oid = 'payment.harden()'::regprocedure")
    assert r["owner"] == db.value("SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'pg_payment'")
    assert not r["prosecdef"]
    assert [a for a in r["acl"] if not a.startswith(r["owner"] + "=")] == []
    for role in (ADMIN, APP, WEBHOOK):
        denied(db.connect(role), "SELECT payment.harden()")


# --------------------------------------------------------------------------
# payment_app


def test_app_reads_payment_tables_but_cannot_write_them(shop):
    p = shop.payment()
    app = shop.connect(APP)
    for t in ("payments", "refunds", "recurring_payments", "events"):
        app.execute(f"SELECT * FROM payment.{t}").fetchall()
    assert app.execute("SELECT status FROM payment.payments WHERE id = %s", (p.id,)).fetchone()[0] == "pending"
    denied(app, "UPDATE payment.payments SET status = 'succeeded' WHERE id = %s", (p.id,))
    denied(app, "DELETE FROM payment.payments")
    denied(app, "INSERT INTO payment.events (id, type, outcome) VALUES ('evt_forged', 'x', 'applied')")
    assert shop.payment_row(p.id)["status"] == "pending"


def test_app_gets_the_publishable_key(shop):
    app = shop.connect(APP)
    assert app.execute("SELECT payment.publishable_key()").fetchone()[0] == ev.PUBLISHABLE_KEY


@pytest.mark.parametrize("sql", [
    "SELECT payment.configure('sk_test_aaaaaaaaaaaaaaaaaaaaaaaa', 'pk_test_aaaaaaaaaaaaaaaaaaaaaaaa', 'whsec_app_attempt')",
    "SELECT payment.add_webhook_secret('whsec_app_attempt')",
    "SELECT payment.remove_webhook_secret('whsec_test_secret_e2e')",
    "SELECT * FROM payment.retry_failed_events()",
    "SELECT payment.remove_callback('payment', 'pg_catalog.now()'::regprocedure)",
])
def test_app_cannot_administer(shop, sql):
    denied(shop.connect(APP), sql)


def test_app_role_cannot_read_any_secret_from_any_table(shop):
    secret_key = "sk_test_" + "S3cretK3y" + "q" * 15
    webhook_secret = "whsec_" + "S3cretH00k" + "r" * 10
    shop.configure(secret_key=secret_key, webhook_secret=webhook_secret)
    shop.conn.execute("SELECT payment.add_webhook_secret(%s::text)", ("whsec_S3cretRotated",))
    for role in (APP, WEBHOOK, ADMIN):
        conn = shop.connect(role)
        tables = [r[0] for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c"
            " WHERE c.relnamespace = 'payment'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')").fetchall()]
        assert tables, "no tables visible in schema payment"
        readable = 0
        for t in tables:
            try:
                rows = conn.execute(f"SELECT t::text FROM {t} AS t").fetchall()
            except psycopg.errors.InsufficientPrivilege:
                continue
            readable += 1
            text = " ".join(r[0] for r in rows)
            for s in ("S3cretK3y", "S3cretH00k", "S3cretRotated"):
                assert s not in text, f"{role} reads a secret from {t}"
        if role == APP:
            assert readable >= 4, "payment_app should read the payment tables"


def test_secrets_are_not_settings(shop):
    secret_key = "sk_test_" + "N0tAGuc" + "q" * 17
    shop.configure(secret_key=secret_key, webhook_secret="whsec_N0tAGucEither")
    for conn in (shop.conn, shop.connect(APP)):
        load_library(conn)
        leaks = conn.execute("SELECT name FROM pg_settings WHERE setting LIKE '%N0tAGuc%'").fetchall()
        assert leaks == []
    names = [r[0] for r in shop.conn.execute("SELECT name FROM pg_settings WHERE name LIKE 'pg_payment.%'")]
    assert names, "pg_payment settings are not registered"
    assert [n for n in names if "secret" in n or n.endswith("_key")] == []
    assert shop.value("SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, ' ') LIKE '%N0tAGuc%'") == 0


# --------------------------------------------------------------------------
# payment_webhook and everyone else


def test_webhook_role_can_process_events(shop):
    p = shop.payment()
    hook = shop.connect(WEBHOOK)
    assert shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi), conn=hook)["outcome"] == "applied"
    assert shop.payment_row(p.id)["status"] == "succeeded"


@pytest.mark.parametrize("sql", [
    "SELECT * FROM payment.payments",
    "SELECT * FROM payment.events",
    "SELECT payment.publishable_key()",
    "SELECT payment.configure('sk_test_aaaaaaaaaaaaaaaaaaaaaaaa')",
    "SELECT * FROM payment.retry_failed_events()",
])
def test_webhook_role_can_do_nothing_else(shop, sql):
    denied(shop.connect(WEBHOOK), sql)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM payment.payments",
    "SELECT payment.publishable_key()",
    "SELECT payment.process_stripe_event('{}', 't=1,v1=00')",
])
def test_a_role_without_membership_gets_nothing(shop, sql):
    denied(shop.connect(OUTSIDER), sql)


def test_admin_role_configures_and_retries(shop):
    admin = shop.connect(ADMIN)
    shop.configure(secret_key="rk_test_" + "a" * 24, publishable_key="pk_test_" + "b" * 24, conn=admin)
    assert shop.value("SELECT payment.publishable_key()") == "pk_test_" + "b" * 24
    admin.execute("SELECT * FROM payment.retry_failed_events()").fetchall()


# --------------------------------------------------------------------------
# configure


@pytest.mark.parametrize("secret_key,publishable_key,webhook_secret", [
    pytest.param("pk_test_" + "a" * 24, ev.PUBLISHABLE_KEY, ev.WEBHOOK_SECRET, id="publishable-as-secret"),
    pytest.param("whsec_" + "a" * 24, ev.PUBLISHABLE_KEY, ev.WEBHOOK_SECRET, id="webhook-as-secret"),
    pytest.param("test_" + "a" * 24, ev.PUBLISHABLE_KEY, ev.WEBHOOK_SECRET, id="no-prefix"),
    pytest.param(ev.SECRET_KEY, "sk_test_" + "a" * 24, ev.WEBHOOK_SECRET, id="secret-as-publishable"),
    pytest.param(ev.SECRET_KEY, ev.PUBLISHABLE_KEY, "sk_test_" + "a" * 24, id="secret-as-webhook-secret"),
    pytest.param(ev.SECRET_KEY, "pk_live_" + "a" * 24, ev.WEBHOOK_SECRET, id="test-secret-live-publishable"),
    pytest.param("sk_live_" + "a" * 24, ev.PUBLISHABLE_KEY, ev.WEBHOOK_SECRET, id="live-secret-test-publishable"),
    pytest.param("rk_live_" + "a" * 24, ev.PUBLISHABLE_KEY, ev.WEBHOOK_SECRET, id="live-restricted-test-publishable"),
    pytest.param("", ev.PUBLISHABLE_KEY, ev.WEBHOOK_SECRET, id="empty-secret"),
])
def test_configure_rejects_bad_or_mixed_keys_without_echoing_them(db, secret_key, publishable_key, webhook_secret):
    with pytest.raises(psycopg.Error) as info:
        db.configure(secret_key, publishable_key, webhook_secret)
    err = info.value
    assert err.sqlstate and err.sqlstate[:2] == "22", f"{err.sqlstate}: {err}"
    diag = err.diag
    shown = " ".join(filter(None, [str(err), diag.message_detail, diag.message_hint, diag.context]))
    for value in (secret_key, publishable_key, webhook_secret):
        if value and not value.startswith("pk_"):
            assert value not in shown, "a secret is echoed in the error"


@pytest.mark.parametrize("secret_key,publishable_key", [
    ("sk_test_" + "a" * 24, "pk_test_" + "b" * 24),
    ("rk_test_" + "a" * 24, "pk_test_" + "b" * 24),
    ("sk_live_" + "a" * 24, "pk_live_" + "b" * 24),
])
def test_configure_accepts_consistent_keys(db, secret_key, publishable_key):
    db.configure(secret_key, publishable_key, "whsec_" + "c" * 32)
    assert db.value("SELECT payment.publishable_key()") == publishable_key


def test_secret_passed_as_a_literal_never_reaches_the_server_log(shop):
    marker = "L0gLeak" + "k" * 17
    client = psycopg.ClientCursor(shop.conn)  # inlines the values into the SQL text
    with pytest.raises(psycopg.Error):
        client.execute("SELECT payment.configure(%s, %s, %s)",
                       ("sk_live_" + marker, ev.PUBLISHABLE_KEY, ev.WEBHOOK_SECRET))
    with pytest.raises(psycopg.Error):
        client.execute("SELECT payment.add_webhook_secret(%s)", ("not_a_webhook_secret_" + marker,))
    # A control: an ordinary failing statement is logged with its STATEMENT line, so
    # the log is being written and read.
    control = "C0ntrolMarker" + marker[-6:]
    with pytest.raises(psycopg.Error):
        client.execute(f"SELECT 1/0 AS {control}")
    log = shop.cluster.server_log()
    assert control in log
    assert marker not in log, "a secret passed to configure/add_webhook_secret is in the server log"


# --------------------------------------------------------------------------
# Settings


def test_settings_have_their_documented_defaults(shop):
    load_library(shop.conn)
    # boot_val: the tests point every database at a local fake Stripe.
    settings = dict(shop.conn.execute(
        "SELECT name, boot_val FROM pg_settings WHERE name LIKE 'pg_payment.%'").fetchall())
    assert settings.get("pg_payment.stripe_api_base") == "https://api.stripe.com"
    assert settings.get("pg_payment.webhook_tolerance_s") == "300"
    assert settings.get("pg_payment.notify_channel") == "pg_payment"
    assert settings.get("pg_payment.stripe_api_version")
    assert "pg_payment.http_timeout_ms" in settings
    assert "pg_payment.max_network_retries" in settings


def test_superuser_only_settings_are_superuser_only(shop):
    load_library(shop.conn)
    contexts = dict(shop.conn.execute(
        "SELECT name, context FROM pg_settings WHERE name LIKE 'pg_payment.%'").fetchall())
    for name in ("stripe_api_base", "stripe_api_version", "webhook_tolerance_s", "notify_channel"):
        assert contexts.get(f"pg_payment.{name}") == "superuser", (name, contexts.get(f"pg_payment.{name}"))
    app = shop.connect(APP)
    load_library(app)
    denied(app, "SET pg_payment.stripe_api_base = 'https://attacker.example'")
    denied(app, "SET pg_payment.webhook_tolerance_s = 600")
    denied(app, "SET pg_payment.notify_channel = 'elsewhere'")
    denied(app, "SET pg_payment.stripe_api_version = '2017-08-15'")


def test_app_may_tune_http_settings_within_bounds(shop):
    app = shop.connect(APP)
    load_library(app)
    app.execute("SET pg_payment.http_timeout_ms = 5000")
    app.execute("SET pg_payment.max_network_retries = 1")
    assert app.execute("SHOW pg_payment.http_timeout_ms").fetchone()[0] in ("5000", "5s")
    for sql in ("SET pg_payment.http_timeout_ms = -1", "SET pg_payment.max_network_retries = -1",
                "SET pg_payment.max_network_retries = 1000000"):
        with pytest.raises(psycopg.Error) as info:
            app.execute(sql)
        assert info.value.sqlstate == "22023", f"{sql}: {info.value.sqlstate} {info.value}"


@pytest.mark.parametrize("value", ["", "x" * 100])
def test_invalid_notify_channel_is_refused(shop, value):
    load_library(shop.conn)
    with pytest.raises(psycopg.Error) as info:
        shop.conn.execute("SELECT set_config('pg_payment.notify_channel', %s, false)", (value,))
    assert info.value.sqlstate[:2] == "22"


def test_unknown_setting_under_the_reserved_prefix_is_refused(shop):
    load_library(shop.conn)
    with pytest.raises(psycopg.Error):
        shop.conn.execute("SET pg_payment.secret_key = 'sk_test_aaaaaaaaaaaaaaaaaaaaaaaa'")


# --------------------------------------------------------------------------
# Webhook secrets carry the secret key's mode


def test_a_webhook_secret_before_any_secret_key_is_refused(db):
    with pytest.raises(psycopg.Error) as info:
        db.conn.execute("SELECT payment.add_webhook_secret(%s::text)", (ev.WEBHOOK_SECRET,))
    assert info.value.sqlstate == "55000" and "configure" in (info.value.diag.message_hint or "")
    assert db.value("SELECT count(*) FROM payment.secrets") == 0


def test_a_key_of_the_other_mode_drops_the_old_modes_webhook_secrets(db):
    db.conn.execute("SELECT payment.configure(%s::text, NULL, %s::text)", (ev.SECRET_KEY, ev.WEBHOOK_SECRET))
    db.conn.execute("SELECT payment.add_webhook_secret('whsec_testModeRolled00')")
    assert db.value("SELECT count(*) FROM payment.secrets WHERE kind = 'webhook_secret' AND NOT livemode") == 2
    db.conn.execute("SELECT payment.configure('sk_live_DUMMY_key_00', NULL, 'whsec_liveModeEndpoint0')")
    assert db.rows("SELECT livemode FROM payment.secrets WHERE kind = 'webhook_secret'") == [{"livemode": True}]
