"""Attacks on the trust boundary (DESIGN.md, "The trust boundary"; issue 15), each run as
the role that would really try it: an ordinary login that owns the order table, a
`payment_app` or `payment_webhook` login, a member of `payment_owner`, a role that
merely knows an order id.

A planted function records who runs it and tries to read `payment.secrets`. It writes
what it saw into `shop.loot` (owned by the attacker, insertable by anyone) and also
raises it as a NOTICE (so a recording survives even where an INSERT could not run). The
tests then assert that nothing the app's roles wrote ran as `payment_owner` or as a
superuser, and that no configured secret was read.

Every test here shows the attack working on 0.1.0's design; on a fixed build each one
is refused or harmless.
"""

import time
import uuid

import psycopg
import pytest

import stripe_events as ev
from e2e_helpers import APP, INSUFFICIENT_PRIVILEGE, OUTSIDER, OWNER, WEBHOOK, point_at


SECRETS = (ev.SECRET_KEY, ev.WEBHOOK_SECRET)
# 0.1.0's per-order lock (src/store/orders.rs): any login may take it.
ORDER_LOCK_KEY = 1885434221


# --------------------------------------------------------------------------
# Fixtures: the fake Stripe, and a shop whose order table an ordinary login owns




# The planted recorder: whoever runs it, it notes current_user and what it could read of
# payment.secrets. Everything is schema-qualified: the extension pins search_path.
RECORDER = """
    CREATE FUNCTION shop.record(p_what text) RETURNS void LANGUAGE plpgsql AS $fn$
    DECLARE
        stolen text;
    BEGIN
        BEGIN
            SELECT pg_catalog.string_agg(s.value, ',') INTO stolen FROM payment.secrets s;
        EXCEPTION WHEN OTHERS THEN
            stolen := 'refused: ' || SQLSTATE;
        END;
        RAISE NOTICE 'e2e-loot|%|%|%', p_what, current_user, stolen;
        BEGIN
            INSERT INTO shop.loot (what, who, stolen) VALUES (p_what, current_user, stolen);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'e2e-loot-not-stored|%|%', p_what, SQLERRM;
        END;
    END
    $fn$
"""

ORDERS_DDL = """
    CREATE TABLE shop.orders (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id text,
        price numeric(12,2) NOT NULL,
        status text NOT NULL DEFAULT 'new',
        currency text NOT NULL DEFAULT 'usd')
"""


class Attacker:
    """The ordinary login OWNER (a member of payment_admin) owning schema `shop`, its
    order table (linked) and the loot table. Notices of every connection opened through
    `watched` are kept, so a recording raised as a NOTICE is seen too."""

    def __init__(self, db):
        self.db = db
        self.notices = []
        self.conn = self.watched(OWNER)

    def watched(self, user, autocommit=True):
        conn = self.db.connect(user, autocommit=autocommit)
        conn.add_notice_handler(lambda diag: self.notices.append(diag.message_primary or ""))
        return conn

    def order(self, price="10.00", user_id="buyer_1", currency="usd"):
        return self.conn.execute(
            "INSERT INTO shop.orders (user_id, price, currency) VALUES (%s, %s, %s) RETURNING id",
            (user_id, price, currency)).fetchone()[0]

    def payment(self, order_id, amount=1000, currency="usd", status="pending"):
        """A payment row for an order, written as postgres (as conftest's Shop.payment)."""
        pi = ev.stripe_id("pi")
        pid = self.db.value(
            "INSERT INTO payment.payments (order_id, amount, currency, status, stripe_payment_intent_id, livemode)"
            " VALUES (%s, %s, %s, %s, %s, false) RETURNING id",
            (order_id, amount, currency, status, pi))
        return pid, pi

    def forget_loot(self):
        self.conn.execute("DELETE FROM shop.loot")
        self.notices.clear()

    def records(self):
        """(what, who, stolen) for every time planted code ran."""
        found = [(r["what"], r["who"], r["stolen"] or "")
                 for r in self.db.rows("SELECT what, who, stolen FROM shop.loot ORDER BY id")]
        for n in self.notices:
            if n.startswith("e2e-loot|"):
                _, what, who, stolen = n.split("|", 3)
                found.append((what, who, stolen))
        return found


def privileged_roles(db):
    return {"payment_owner"} | {r["rolname"] for r in db.rows("SELECT rolname FROM pg_roles WHERE rolsuper")}


def assert_nothing_stolen(attacker):
    """No planted code ran as payment_owner or a superuser, and none read a secret."""
    records = attacker.records()
    privileged = privileged_roles(attacker.db)
    escalated = [r for r in records if r[1] in privileged]
    assert not escalated, f"the app's code ran with the extension's rights: {escalated}"
    leaked = [r for r in records if any(s in r[2] for s in SECRETS)]
    assert not leaked, f"planted code read the Stripe secrets: {leaked}"
    return records


def link(conn, table):
    conn.execute("SELECT payment.link_order_table(%s::regclass, currency_column => 'currency')", (table,))


@pytest.fixture
def attacker(db):
    """A configured database whose order table shop.orders belongs to OWNER, who linked it."""
    db.configure()
    db.conn.execute(f"CREATE SCHEMA shop AUTHORIZATION {OWNER}")
    a = Attacker(db)
    # The schema is open to all (0.1.0's link wants payment_owner to use it), and so are the
    # loot table and the recorder, so that whoever ends up running planted code can report.
    a.conn.execute("GRANT USAGE ON SCHEMA shop TO PUBLIC")
    a.conn.execute(ORDERS_DDL)
    link(a.conn, "shop.orders")
    a.conn.execute("CREATE TABLE shop.loot (id bigint GENERATED ALWAYS AS IDENTITY, what text, who text, stolen text)")
    a.conn.execute("GRANT INSERT ON shop.loot TO PUBLIC")
    a.conn.execute(RECORDER)
    return a


def sql_error(fn, *args, **kw):
    with pytest.raises(psycopg.Error) as info:
        fn(*args, **kw)
    return info.value


def create_payment(db, conn, order_id, currency="usd", amount=1000):
    return db.row("SELECT * FROM payment.create_payment(%s, %s, %s)", (order_id, currency, amount), conn=conn)


def deliver(db, conn, evt):
    body = ev.payload(evt)
    return db.value("SELECT payment.process_stripe_event(%s::text, %s::text)", (body, ev.sign(body)), conn=conn)


# --------------------------------------------------------------------------
# 1. The order table's owner plants code that the extension evaluates


def test_order_table_owner_cannot_run_code_as_payment_owner_through_a_json_cast(attacker):
    """0.1.0's row guard evaluates to_jsonb(OLD) as payment_owner: a column type with a cast
    to json runs the owner's function with the extension's rights on any DELETE."""
    a = attacker
    # An enum they own (a domain would not do: to_json looks through domains), with casts
    # to json and jsonb through their function; a cast needs ownership of one of the types.
    a.conn.execute("CREATE TYPE shop.mood AS ENUM ('calm')")
    for target in ("json", "jsonb"):
        a.conn.execute(f"""
            CREATE FUNCTION shop.mood_{target}(m shop.mood) RETURNS {target} LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM shop.record('cast to {target}');
                RETURN pg_catalog.to_{target}(m::text);
            END
            $fn$""")
        a.conn.execute(f"CREATE CAST (shop.mood AS {target}) WITH FUNCTION shop.mood_{target}(shop.mood)")
    a.conn.execute("ALTER TABLE shop.orders ADD COLUMN mood shop.mood NOT NULL DEFAULT 'calm'")
    unpaid, paid = a.order(), a.order()
    a.payment(paid, status="succeeded")
    a.forget_loot()

    a.conn.execute("DELETE FROM shop.orders WHERE id = %s", (unpaid,))
    err = sql_error(a.conn.execute, "DELETE FROM shop.orders WHERE id = %s", (paid,))
    assert err.sqlstate == "23503", err  # the guard still guards

    assert_nothing_stolen(a)
    assert a.db.value("SELECT count(*) FROM shop.orders") == 1


def test_order_table_owner_cannot_run_code_as_payment_owner_through_a_row_security_policy(attacker, fake):
    """0.1.0's create_payment reads the order as payment_owner, so a policy on the order table
    runs the owner's function with the extension's rights."""
    a = attacker
    point_at(a.db, fake.url)
    oid = a.order(price="10.00")
    a.conn.execute("""
        CREATE FUNCTION shop.sees_order() RETURNS boolean LANGUAGE plpgsql AS $fn$
        BEGIN
            PERFORM shop.record('policy');
            RETURN true;
        END
        $fn$""")
    a.conn.execute("CREATE POLICY everyone ON shop.orders USING (shop.sees_order()) WITH CHECK (true)")
    a.conn.execute("ALTER TABLE shop.orders ENABLE ROW LEVEL SECURITY")
    # FORCE: the policy applies to the owner too, so it runs when the extension reads the
    # order as the owner (as the contract says it must).
    a.conn.execute("ALTER TABLE shop.orders FORCE ROW LEVEL SECURITY")
    a.forget_loot()

    app = a.watched(APP)
    row = create_payment(a.db, app, oid)
    assert row["stripe_payment_intent_id"].startswith("pi_")  # the action still works

    records = assert_nothing_stolen(a)
    assert any(who == OWNER for _, who, _ in records), (
        f"the order should be read as its owner, under the owner's policy: {records}")


def renewal(a):
    """A subscription of an order of shop.orders and its signed subscription_cycle
    invoice.paid, delivered by a payment_webhook login. Returns the result."""
    oid = a.order(price="10.00", user_id="subscriber_1")
    sub, customer = ev.stripe_id("sub"), ev.stripe_id("cus")
    a.db.value(
        "INSERT INTO payment.recurring_payments (order_id, price_id, stripe_customer_id, stripe_subscription_id, status)"
        " VALUES (%s, 'price_e2eMonthly', %s, %s, 'active') RETURNING id",
        (oid, customer, sub))
    a.forget_loot()
    evt = ev.invoice_event("invoice.paid", ev.stripe_id("in"), sub_id=sub, customer=customer,
                           price_id="price_e2eMonthly", billing_reason="subscription_cycle")
    hook = a.watched(WEBHOOK)
    return deliver(a.db, hook, evt)


def assert_renewal_ran_as_the_owner(a, result):
    assert result["outcome"] == "applied", result
    assert [r["status"] for r in a.db.rows("SELECT status FROM shop.orders ORDER BY id")] == ["new", "paid"]
    records = assert_nothing_stolen(a)
    assert any(who == OWNER for _, who, _ in records), (
        f"the renewal order should be inserted as the table's owner: {records}")


def test_order_table_owner_cannot_run_code_as_payment_owner_through_a_before_insert_trigger(attacker):
    """0.1.0 inserts the renewal order as payment_owner: the owner's BEFORE INSERT trigger
    runs with the extension's rights."""
    a = attacker
    a.conn.execute("""
        CREATE FUNCTION shop.on_new_order() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            PERFORM shop.record('before insert trigger');
            RETURN NEW;
        END
        $fn$""")
    a.conn.execute("CREATE TRIGGER spy BEFORE INSERT ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.on_new_order()")
    assert_renewal_ran_as_the_owner(a, renewal(a))


def test_order_table_owner_cannot_run_code_as_payment_owner_through_a_column_default(attacker):
    """Same as the trigger, through a column default. The renewal copies every column but
    the id, the status and unique columns, so the default sits on a unique column (one the
    renewal leaves to its default)."""
    a = attacker
    a.conn.execute("""
        CREATE FUNCTION shop.new_ref() RETURNS text LANGUAGE plpgsql AS $fn$
        BEGIN
            PERFORM shop.record('column default');
            RETURN pg_catalog.gen_random_uuid()::text;
        END
        $fn$""")
    a.conn.execute("ALTER TABLE shop.orders ADD COLUMN ref text UNIQUE DEFAULT shop.new_ref()")
    assert_renewal_ran_as_the_owner(a, renewal(a))


# --------------------------------------------------------------------------
# 2. A member of payment_owner can rewrite nothing that another role runs


@pytest.fixture
def intruder(db):
    """A login that is a member of payment_owner (any CREATEROLE role could grant it), with
    a schema of its own. Role membership is cluster-wide: dropped at the end, so that later
    databases see a payment_owner without members."""
    name = "e2e_intruder_" + uuid.uuid4().hex[:8]
    db.conn.execute(f"CREATE ROLE {name} LOGIN")
    db.conn.execute(f"GRANT payment_owner TO {name}")
    db.conn.execute(f"CREATE SCHEMA intr AUTHORIZATION {name}")
    conn = None
    try:
        conn = db.connect(name, autocommit=False)
        # Signatures then print schema-qualified.
        conn.execute("SET search_path = pg_catalog")
        conn.commit()
        yield name, conn
    finally:
        if conn is not None:
            conn.close()
        db.conn.execute(f"DROP OWNED BY {name} CASCADE")
        db.conn.execute(f"DROP ROLE {name}")


def attempt(conn, sql):
    """Run sql in a transaction that is always rolled back; returns the error, or None."""
    try:
        conn.execute(sql)
    except psycopg.Error as e:
        conn.rollback()
        return e
    conn.rollback()
    return None


def not_refused(conn, statements):
    """The statements that were not refused with 42501 ("must be owner" or "permission denied")."""
    problems = []
    for sql in statements:
        err = attempt(conn, sql)
        if err is None:
            problems.append(f"accepted: {sql}")
        elif err.sqlstate != INSUFFICIENT_PRIVILEGE:
            problems.append(f"{err.sqlstate} ({str(err).strip()}): {sql}")
    return problems


EXTENSION_FUNCTIONS = """
    SELECT p.oid::regprocedure::text AS sig, pg_catalog.quote_ident(p.proname) AS name, p.prokind,
           pg_catalog.pg_get_function_arguments(p.oid) AS args,
           pg_catalog.pg_get_function_result(p.oid) AS result
      FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON p.oid = d.objid
     WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
       AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'pg_payment')
       AND d.deptype = 'e' AND p.pronamespace = 'payment'::regnamespace
     ORDER BY 1
"""


def extension_functions(conn):
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(EXTENSION_FUNCTIONS).fetchall()
    conn.rollback()
    return rows


def replacement(fn):
    """CREATE OR REPLACE with exactly the same signature, defaults and result, so that only
    ownership and the schema's CREATE privilege can stop it."""
    if fn["prokind"] == "p":
        return (f"CREATE OR REPLACE PROCEDURE payment.{fn['name']}({fn['args']}) LANGUAGE plpgsql "
                "AS $x$BEGIN RAISE NOTICE 'replaced'; END$x$")
    return (f"CREATE OR REPLACE FUNCTION payment.{fn['name']}({fn['args']}) RETURNS {fn['result']} "
            "LANGUAGE plpgsql AS $x$BEGIN RAISE NOTICE 'replaced'; END$x$")


@pytest.mark.parametrize("install_mode", ["fresh", "upgraded"])
def test_a_member_of_payment_owner_cannot_alter_any_function_of_the_extension(db, intruder):
    name, conn = intruder
    functions = extension_functions(conn)
    assert len(functions) > 10, functions
    statements = []
    for fn in functions:
        kind = "PROCEDURE" if fn["prokind"] == "p" else "FUNCTION"
        statements += [
            f"ALTER {kind} {fn['sig']} SECURITY DEFINER",
            f"ALTER {kind} {fn['sig']} OWNER TO {name}",
            f"ALTER {kind} {fn['sig']} SET search_path = intr, public",
        ]
    problems = not_refused(conn, statements)
    assert not problems, f"{len(problems)} of {len(statements)} not refused:\n" + "\n".join(problems[:25])


@pytest.mark.parametrize("install_mode", ["fresh", "upgraded"])
def test_a_member_of_payment_owner_cannot_replace_any_function_of_the_extension(db, intruder):
    _, conn = intruder
    functions = extension_functions(conn)
    problems = not_refused(conn, [replacement(fn) for fn in functions])
    assert not problems, f"{len(problems)} of {len(functions)} not refused:\n" + "\n".join(problems[:25])


def test_a_member_of_payment_owner_cannot_add_an_overload_or_a_function_to_the_schema(db, intruder):
    _, conn = intruder
    problems = not_refused(conn, [
        # An overload a caller's unqualified call or an upgrade script could pick up.
        "CREATE FUNCTION payment.configure(secret_key integer) RETURNS void LANGUAGE sql AS 'SELECT'",
        "CREATE FUNCTION payment.create_payment(order_id integer, currency text, amount integer) "
        "RETURNS void LANGUAGE sql AS 'SELECT'",
        "CREATE FUNCTION payment.e2e_planted() RETURNS void LANGUAGE sql AS 'SELECT'",
    ])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("install_mode", ["fresh", "upgraded"])
def test_a_member_of_payment_owner_cannot_add_a_trigger_to_a_payment_table(db, intruder):
    _, conn = intruder
    conn.execute("CREATE FUNCTION intr.planted() RETURNS trigger LANGUAGE plpgsql AS $x$BEGIN RETURN NEW; END$x$")
    conn.commit()
    tables = [r[0] for r in conn.execute("""
        SELECT c.oid::regclass::text FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'pg_payment')
           AND d.deptype = 'e' AND c.relkind IN ('r', 'p') ORDER BY 1""").fetchall()]
    conn.rollback()
    assert "payment.payments" in tables
    problems = not_refused(conn, [
        f"CREATE TRIGGER planted BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION intr.planted()"
        for t in tables])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("install_mode", ["fresh", "upgraded"])
def test_payment_owner_owns_nothing(db):
    owned = db.rows("""
        WITH po AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'payment_owner')
        SELECT 'relation' AS kind, c.oid::regclass::text AS name FROM pg_catalog.pg_class c, po WHERE c.relowner = po.oid
        UNION ALL SELECT 'function', p.oid::regprocedure::text FROM pg_catalog.pg_proc p, po WHERE p.proowner = po.oid
        UNION ALL SELECT 'schema', n.nspname::text FROM pg_catalog.pg_namespace n, po WHERE n.nspowner = po.oid
        UNION ALL SELECT 'type', t.oid::regtype::text FROM pg_catalog.pg_type t, po WHERE t.typowner = po.oid
        UNION ALL SELECT 'event trigger', e.evtname::text FROM pg_catalog.pg_event_trigger e, po WHERE e.evtowner = po.oid
        ORDER BY 1, 2""")
    assert owned == [], f"payment_owner owns {len(owned)} objects, e.g. {owned[:10]}"


# What 0.1.0's link_order_table did (src/api/order_link.rs at 0.1.0): grants to
# payment_owner on the app's table and its sequence, the link row, the guard triggers.
LINK_0_1_0 = [
    "GRANT SELECT, INSERT, REFERENCES ON shop.orders TO payment_owner",
    "GRANT UPDATE (status) ON shop.orders TO payment_owner",
    "GRANT USAGE ON SEQUENCE shop.orders_id_seq TO payment_owner",
    """INSERT INTO payment.order_link (order_table, table_name, id_column, amount_column, user_column,
                                       status_column, currency_column, paid_status, column_signature)
       SELECT 'shop.orders'::regclass, 'shop.orders', 'id', 'price', 'user_id', 'status', 'currency', 'paid',
              string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                         ORDER BY array_position(ARRAY['id', 'price', 'user_id', 'status', 'currency'], a.attname::text))
         FROM pg_attribute a
        WHERE a.attrelid = 'shop.orders'::regclass AND a.attname IN ('id', 'price', 'user_id', 'status', 'currency')""",
    "CREATE TRIGGER pg_payment_guard_rows BEFORE DELETE OR UPDATE OF id ON shop.orders "
    "FOR EACH ROW EXECUTE FUNCTION payment.guard_order_rows('id')",
    "CREATE TRIGGER pg_payment_guard_truncate BEFORE TRUNCATE ON shop.orders "
    "FOR EACH STATEMENT EXECUTE FUNCTION payment.guard_order_rows('id')",
]


def test_an_upgrade_revokes_what_0_1_0_granted_payment_owner_on_the_order_table(new_database):
    """0.1.0's link granted payment_owner SELECT, INSERT, REFERENCES, UPDATE(status) on the
    app's table and USAGE on its sequence; after the upgrade it holds nothing there. (The
    link is made by hand, with 0.1.0's statements: today's library refuses to serve 0.1.0's
    link_order_table before the upgrade, 55000; test_upgrade.py has the released build.)"""
    d = new_database()
    d.conn.execute("CREATE EXTENSION pg_payment VERSION '0.1.0'")
    d.conn.execute(f"GRANT payment_admin TO {OWNER}")
    d.conn.execute(f"CREATE SCHEMA shop AUTHORIZATION {OWNER}")
    d.connect(OWNER).execute(ORDERS_DDL)
    for stmt in LINK_0_1_0:
        d.conn.execute(stmt)
    d.conn.execute("ALTER EXTENSION pg_payment UPDATE")
    grants = d.rows("""
        WITH po AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'payment_owner')
        SELECT c.oid::regclass::text AS rel, a.privilege_type
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a, po
         WHERE c.relnamespace = 'shop'::regnamespace AND a.grantee = po.oid
        UNION ALL
        SELECT c.oid::regclass::text || '.' || att.attname, a.privilege_type
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute att ON att.attrelid = c.oid,
               pg_catalog.aclexplode(att.attacl) a, po
         WHERE c.relnamespace = 'shop'::regnamespace AND a.grantee = po.oid""")
    assert grants == [], f"payment_owner keeps privileges on the app's table after the upgrade: {grants}"
    # The link itself survives the upgrade.
    assert d.value("SELECT table_name FROM payment.order_link") == "shop.orders"


# --------------------------------------------------------------------------
# 3. Handlers and the caller's temporary objects


def handler_ddl(name, search_path):
    """A payment handler owned by OWNER that writes to its table by an unqualified name."""
    set_clause = f"SET search_path = {search_path}" if search_path else ""
    return f"""
        CREATE FUNCTION app.{name}(cb jsonb) RETURNS void LANGUAGE plpgsql {set_clause} AS $fn$
        BEGIN
            INSERT INTO handled (payment_id, status, who)
            VALUES ((cb->>'id')::bigint, cb->>'status', current_user);
        END
        $fn$"""


@pytest.fixture
def app_schema(attacker):
    """Schema `app` of the handlers' owner (OWNER), with the table its handlers update."""
    a = attacker
    a.db.conn.execute(f"CREATE SCHEMA app AUTHORIZATION {OWNER}")
    a.conn.execute("CREATE TABLE app.handled (payment_id bigint, status text, who text)")
    return a


def add_callback(conn, handler, kind="payment"):
    conn.execute("SELECT payment.add_callback(%s, %s::regprocedure)", (kind, handler))


def test_a_handler_whose_search_path_does_not_end_with_pg_temp_is_refused(app_schema):
    a = app_schema
    a.conn.execute(handler_ddl("readme_style", "app, public"))  # as 0.1.0's README showed
    err = sql_error(add_callback, a.conn, "app.readme_style(jsonb)")
    assert err.sqlstate not in (None, "XX000"), err
    assert err.diag.message_hint, f"the refusal should say how to fix the handler: {err}"
    assert a.db.value("SELECT count(*) FROM payment.callbacks") == 0

    a.conn.execute(handler_ddl("pinned", "app, pg_temp"))
    add_callback(a.conn, "app.pinned(jsonb)")
    a.conn.execute(handler_ddl("inherits", None))  # no setting: inherits the pinned path
    add_callback(a.conn, "app.inherits(jsonb)")
    assert a.db.value("SELECT count(*) FROM payment.callbacks") == 2


def test_a_superuser_owned_handler_is_refused_at_registration(app_schema):
    a = app_schema
    a.db.conn.execute(handler_ddl("superuser_owned", "app, pg_temp"))  # created, so owned, by postgres
    err = sql_error(add_callback, a.db.conn, "app.superuser_owned(jsonb)")
    assert err.sqlstate not in (None, "XX000"), err
    assert a.db.value("SELECT count(*) FROM payment.callbacks") == 0


def plant_temp_table(a, user):
    """A login of `user` shadows the handler's table with a TEMP table of the same name,
    open to all, whose trigger records who writes to it. Returns the connection."""
    conn = a.watched(user)
    conn.execute("CREATE TEMP TABLE handled (payment_id bigint, status text, who text)")
    conn.execute("GRANT ALL ON pg_temp.handled TO PUBLIC")
    conn.execute("""
        CREATE FUNCTION pg_temp.caught() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            PERFORM shop.record('temp table trigger');
            RETURN NEW;
        END
        $fn$""")
    conn.execute("CREATE TRIGGER caught BEFORE INSERT ON pg_temp.handled FOR EACH ROW EXECUTE FUNCTION pg_temp.caught()")
    return conn


def test_a_callers_temp_table_cannot_hijack_a_handler(app_schema, fake):
    """Every handler that add_callback accepts is safe from the caller's temp tables: a
    payment_app login (create_payment) and a payment_webhook login (process_stripe_event)
    shadow its table, and their trigger never runs as the handler's owner."""
    a = app_schema
    point_at(a.db, fake.url)
    # The handler as 0.1.0's README wrote it: if add_callback accepts it (0.1.0 did), it is
    # registered, and pg_temp, searched first, shadows app.handled.
    a.conn.execute(handler_ddl("readme_style", "app, public"))
    try:
        add_callback(a.conn, "app.readme_style(jsonb)")
    except psycopg.Error:
        pass  # refused: the fixed behaviour
    a.conn.execute(handler_ddl("pinned", "app, pg_temp"))
    add_callback(a.conn, "app.pinned(jsonb)")

    oid = a.order(price="10.00")
    app = plant_temp_table(a, APP)
    row = create_payment(a.db, app, oid)
    hook = plant_temp_table(a, WEBHOOK)
    result = deliver(a.db, hook, ev.pi_event("payment_intent.succeeded", row["stripe_payment_intent_id"]))
    assert result["outcome"] == "applied", result

    records = a.records()
    hijacked = [r for r in records if r[1] in {OWNER} | privileged_roles(a.db)]
    assert not hijacked, f"the caller's temp table trigger ran as the handler's owner: {hijacked}"
    real = a.db.rows("SELECT status, who FROM app.handled WHERE payment_id = %s ORDER BY status", (row["id"],))
    assert {r["status"] for r in real} == {"pending", "succeeded"}, real
    assert {r["who"] for r in real} == {OWNER}


# --------------------------------------------------------------------------
# 4. Each handler runs in its own settings frame, in a restricted security context


def test_a_handlers_set_local_reaches_neither_the_next_handler_nor_the_caller(app_schema):
    a = app_schema
    a.conn.execute("CREATE TABLE app.seen (handler text, x text)")
    a.conn.execute("""
        CREATE FUNCTION app.a_sets(cb jsonb) RETURNS void LANGUAGE plpgsql AS $fn$
        BEGIN
            SET LOCAL app.x = 'set by handler A';
        END
        $fn$""")
    a.conn.execute("""
        CREATE FUNCTION app.b_reads(cb jsonb) RETURNS void LANGUAGE plpgsql AS $fn$
        BEGIN
            INSERT INTO app.seen VALUES ('B', pg_catalog.current_setting('app.x', true));
        END
        $fn$""")
    add_callback(a.conn, "app.a_sets(jsonb)")
    add_callback(a.conn, "app.b_reads(jsonb)")
    _, pi = a.payment(a.order())

    hook = a.watched(WEBHOOK, autocommit=False)  # one transaction: SET LOCAL would last to its end
    result = deliver(a.db, hook, ev.pi_event("payment_intent.succeeded", pi))
    in_caller = hook.execute("SELECT pg_catalog.current_setting('app.x', true)").fetchone()[0]
    hook.commit()

    assert result["outcome"] == "applied", result
    seen = a.db.rows("SELECT x FROM app.seen")
    assert len(seen) == 1 and seen[0]["x"] in (None, ""), f"handler B sees handler A's SET LOCAL: {seen}"
    assert in_caller in (None, ""), f"the caller sees the handler's SET LOCAL: {in_caller!r}"


def test_a_handler_cannot_create_temporary_objects(app_schema):
    """Handlers run in a restricted security context: a temp table would outlive the
    handler in the caller's session (and shadow names there), so the event fails."""
    a = app_schema
    a.conn.execute("""
        CREATE FUNCTION app.makes_temp(cb jsonb) RETURNS void LANGUAGE plpgsql AS $fn$
        BEGIN
            CREATE TEMP TABLE e2e_scratch (x int);
        END
        $fn$""")
    add_callback(a.conn, "app.makes_temp(jsonb)")
    pid, pi = a.payment(a.order())
    hook = a.watched(WEBHOOK)
    result = deliver(a.db, hook, ev.pi_event("payment_intent.succeeded", pi))
    assert result["outcome"] == "failed", result
    assert a.db.value("SELECT status FROM payment.payments WHERE id = %s", (pid,)) == "pending"
    assert hook.execute("SELECT to_regclass('pg_temp.e2e_scratch')").fetchone()[0] is None


# --------------------------------------------------------------------------
# 5. Tables that cannot be linked


def test_a_temporary_table_cannot_be_linked(db):
    """0.1.0 linked it; when its session ended every DDL in the database failed."""
    owner = db.connect(OWNER)
    owner.execute(ORDERS_DDL.replace("CREATE TABLE shop.orders", "CREATE TEMP TABLE orders"))
    err = sql_error(link, owner, "pg_temp.orders")
    pid = owner.info.backend_pid
    owner.close()
    assert err.sqlstate == "22023", err
    assert db.value("SELECT count(*) FROM payment.order_link") == 0

    # Whatever happened, the session's end must leave DDL working for everyone.
    deadline = time.monotonic() + 10
    while db.value("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) and time.monotonic() < deadline:
        time.sleep(0.1)
    db.conn.execute("CREATE TABLE public.after_the_temp_link (x int)")


def test_a_partitioned_table_cannot_be_linked(db):
    db.conn.execute(f"CREATE SCHEMA shop AUTHORIZATION {OWNER}")
    owner = db.connect(OWNER)
    owner.execute("GRANT USAGE ON SCHEMA shop TO PUBLIC")  # 0.1.0's link asks for it
    owner.execute("""
        CREATE TABLE shop.orders (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id text, price numeric(12,2) NOT NULL, status text NOT NULL DEFAULT 'new',
            currency text NOT NULL DEFAULT 'usd') PARTITION BY RANGE (id)""")
    owner.execute("CREATE TABLE shop.orders_1 PARTITION OF shop.orders FOR VALUES FROM (1) TO (1000000000)")
    err = sql_error(link, owner, "shop.orders")
    assert err.sqlstate == "22023", err
    assert db.value("SELECT count(*) FROM payment.order_link") == 0


# --------------------------------------------------------------------------
# 6. The guard triggers stay


@pytest.mark.parametrize("ddl", [
    "DROP TRIGGER pg_payment_guard_rows ON shop.orders",
    "DROP TRIGGER pg_payment_guard_truncate ON shop.orders",
    "ALTER TABLE shop.orders DISABLE TRIGGER ALL",
    "ALTER TABLE shop.orders DISABLE TRIGGER USER",
    "ALTER TABLE shop.orders DISABLE TRIGGER pg_payment_guard_rows",
    # Fires only when session_replication_role = replica: disabled for every ordinary session.
    "ALTER TABLE shop.orders ENABLE REPLICA TRIGGER pg_payment_guard_rows",
])
def test_order_table_owner_cannot_drop_or_disable_the_guard_triggers(attacker, ddl):
    a = attacker
    oid = a.order()
    a.payment(oid, status="succeeded")
    err = sql_error(a.conn.execute, ddl)
    assert err.sqlstate == "2BP01", err
    guards = a.db.rows("SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'shop.orders'::regclass "
                       "AND tgname LIKE 'pg_payment_guard%' ORDER BY 1")
    assert [(g["tgname"], g["tgenabled"]) for g in guards] == [
        ("pg_payment_guard_rows", "O"), ("pg_payment_guard_truncate", "O")]
    err = sql_error(a.conn.execute, "DELETE FROM shop.orders WHERE id = %s", (oid,))
    assert err.sqlstate == "23503", err


# --------------------------------------------------------------------------
# 7. Modes


def test_a_livemode_event_signed_with_the_test_secret_is_refused_and_writes_nothing(attacker):
    a = attacker
    pid, pi = a.payment(a.order())
    before = a.db.row("SELECT * FROM payment.payments WHERE id = %s", (pid,))
    events = a.db.value("SELECT count(*) FROM payment.events")
    hook = a.db.connect(WEBHOOK)
    err = sql_error(deliver, a.db, hook, ev.pi_event("payment_intent.succeeded", pi, livemode=True))
    assert err.sqlstate == "28000", err
    assert a.db.value("SELECT count(*) FROM payment.events") == events
    assert a.db.row("SELECT * FROM payment.payments WHERE id = %s", (pid,)) == before


# --------------------------------------------------------------------------
# 8. The per-order lock


def test_a_role_that_knows_an_order_id_cannot_block_its_payments(attacker, fake):
    a = attacker
    point_at(a.db, fake.url)
    oid = a.order()
    outsider = a.db.connect(OUTSIDER, autocommit=False)
    try:
        # 0.1.0's lock: an advisory lock any login may take and hold.
        outsider.execute("SELECT pg_advisory_xact_lock(%s, hashint8(%s::bigint))", (ORDER_LOCK_KEY, oid))
        app = a.db.connect(APP)
        app.execute("SET statement_timeout = '5s'")
        app.execute("SET lock_timeout = '5s'")
        row = create_payment(a.db, app, oid)
        assert row["stripe_payment_intent_id"].startswith("pi_")
    finally:
        outsider.rollback()


# --------------------------------------------------------------------------
# 9. start_subscription checks the Price against the order


@pytest.mark.parametrize("unit_amount,currency", [
    pytest.param(500, "usd", id="cheaper"),
    pytest.param(2000, "usd", id="dearer"),
    pytest.param(1000, "eur", id="other-currency"),
    # A one-time (non-recurring) Price is not covered: the fake's POST /__control/prices
    # always makes a recurring Price (add_price sets type "recurring" and an interval).
])
def test_start_subscription_refuses_a_price_that_does_not_fit_the_order(attacker, fake, unit_amount, currency):
    a = attacker
    point_at(a.db, fake.url)
    oid = a.order(price="10.00", currency="usd")
    price_id = "price_e2e_" + uuid.uuid4().hex[:10]
    fake.price(price_id, unit_amount, currency)
    app = a.db.connect(APP)
    err = sql_error(a.db.row, "SELECT * FROM payment.start_subscription(%s, %s)", (oid, price_id), conn=app)
    assert err.sqlstate == "22023", err
    assert fake.requests("/v1/subscriptions", method="POST") == []
    assert a.db.value("SELECT count(*) FROM payment.recurring_payments") == 0


def test_start_subscription_accepts_the_price_that_fits_the_order(attacker, fake):
    a = attacker
    point_at(a.db, fake.url)
    oid = a.order(price="10.00", currency="usd")
    fake.price("price_e2e_fits", 1000, "usd")
    app = a.db.connect(APP)
    row = a.db.row("SELECT * FROM payment.start_subscription(%s, 'price_e2e_fits')", (oid,), conn=app)
    assert row["stripe_subscription_id"].startswith("sub_")


# --------------------------------------------------------------------------
# 10. Where the secret key may be sent


@pytest.fixture
def loaded(db):
    """A superuser session with the library loaded (so the setting's check runs)."""
    db.configure()
    db.value("SELECT payment.publishable_key()")
    return db


@pytest.mark.parametrize("url", [
    "http://example.com",
    "http://api.stripe.com",
    "http://10.1.2.3:8080",
    "http://127.0.0.1.example.com",   # a name that merely starts like a loopback address
    "http://127.0.0.1@example.com",   # userinfo: the host is example.com
    "ftp://127.0.0.1",
])
def test_stripe_api_base_refuses_a_url_that_is_not_https_or_loopback(loaded, url):
    default = loaded.value("SHOW pg_payment.stripe_api_base")
    err = sql_error(loaded.conn.execute, f"SET pg_payment.stripe_api_base = '{url}'")
    assert err.sqlstate == "22023", err
    assert loaded.value("SHOW pg_payment.stripe_api_base") == default


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "https://api.stripe.com", "http://[::1]:1"])
def test_stripe_api_base_accepts_https_and_loopback_http(loaded, url):
    loaded.conn.execute(f"SET pg_payment.stripe_api_base = '{url}'")
    assert loaded.value("SHOW pg_payment.stripe_api_base") == url


@pytest.mark.parametrize("ddl", [
    pytest.param("ALTER TRIGGER pg_payment_guard_rows ON shop.orders RENAME TO harmless", id="rename"),
    pytest.param("CREATE OR REPLACE TRIGGER pg_payment_guard_rows BEFORE DELETE ON shop.orders "
                 "FOR EACH ROW EXECUTE FUNCTION shop.noop()", id="replace"),
])
def test_order_table_owner_cannot_rename_or_replace_the_guard_triggers(attacker, ddl):
    """A renamed guard could then be dropped or disabled under its new name."""
    a = attacker
    a.conn.execute("CREATE FUNCTION shop.noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN OLD; END$$")
    with pytest.raises(psycopg.Error) as info:
        a.conn.execute(ddl)
    assert info.value.sqlstate == "2BP01", info.value
    names = a.db.value("SELECT array_agg(tgname::text ORDER BY tgname) FROM pg_trigger"
                       " WHERE tgrelid = 'shop.orders'::regclass AND NOT tgisinternal")
    assert names == ["pg_payment_guard_rows", "pg_payment_guard_truncate"]
