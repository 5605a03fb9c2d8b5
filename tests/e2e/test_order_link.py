"""link_order_table: validation, and a link that stays valid once made."""

import psycopg
import pytest

from e2e_helpers import ADMIN, errors_out

ORDERS = """
    CREATE TABLE public.orders (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id text,
        price numeric(12,2) NOT NULL,
        status text NOT NULL DEFAULT 'new')
"""


@pytest.fixture(params=["fresh", "upgraded"])
def install_mode(request):
    """Every test here runs on a fresh install and on one updated from 0.1.0."""
    return request.param


def link(conn, table="public.orders", **kw):
    """link_order_table with the orders' currency ('usd' unless the call names one)."""
    if "currency_column" not in kw:
        kw.setdefault("currency", "usd")
    kw = {k: v for k, v in kw.items() if v is not None}
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    sql = f"SELECT payment.link_order_table(%(t)s::regclass{', ' + args if args else ''})"
    conn.execute(sql, {"t": table, **kw})


def assert_link_refused(db, table="public.orders", **kw):
    with pytest.raises(psycopg.Error) as info:
        link(db.conn, table, **kw)
    # A refusal is a clear error, not a crash or a permission problem.
    assert info.value.sqlstate not in (None, "XX000", "42501"), f"{info.value.sqlstate}: {info.value}"
    return info.value


@pytest.mark.parametrize("ddl,kw", [
    pytest.param("id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id text, price money, status text",
                 {}, id="money-amount"),
    pytest.param("id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id text, price double precision, status text",
                 {}, id="float8-amount"),
    pytest.param("id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id text, price real, status text",
                 {}, id="float4-amount"),
    pytest.param("id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id text, price text, status text",
                 {}, id="text-amount"),
    pytest.param("id bigint PRIMARY KEY, user_id text, price numeric, status text",
                 {}, id="id-without-default"),
    pytest.param("id text PRIMARY KEY DEFAULT gen_random_uuid()::text, user_id text, price numeric, status text",
                 {}, id="text-id"),
    pytest.param("id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id text, price numeric, status text",
                 {}, id="uuid-id"),
    pytest.param("id numeric PRIMARY KEY, user_id text, price numeric, status text",
                 {}, id="numeric-id"),
    pytest.param("id bigserial PRIMARY KEY, user_id text, price numeric, status text, currency integer",
                 {"currency_column": "currency"}, id="integer-currency"),
    pytest.param("id bigserial PRIMARY KEY, user_id text, price numeric, status text",
                 {"amount_column": "total"}, id="missing-amount-column"),
    pytest.param("id bigserial PRIMARY KEY, user_id text, price numeric",
                 {}, id="missing-status-column"),
    pytest.param("id bigserial PRIMARY KEY, user_id text, price numeric, status text",
                 {"currency_column": "currency"}, id="missing-currency-column"),
])
def test_link_refuses_unsuitable_order_tables(db, ddl, kw):
    db.conn.execute(f"CREATE TABLE public.orders ({ddl})")
    assert_link_refused(db, **kw)
    # Nothing was half-linked: the table can still be dropped.
    db.conn.execute("DROP TABLE public.orders")


@pytest.mark.parametrize("ddl,kw", [
    pytest.param(ORDERS, {}, id="identity-numeric"),
    pytest.param("CREATE TABLE public.orders (id serial PRIMARY KEY, user_id text, price integer, status text)",
                 {}, id="serial-integer"),
    pytest.param("CREATE TABLE public.orders (id smallserial PRIMARY KEY, owner text, total bigint,"
                 " state text, cur text)",
                 {"user_column": "owner", "amount_column": "total", "status_column": "state",
                  "currency_column": "cur", "paid_status": "settled"}, id="custom-columns"),
    pytest.param("CREATE TABLE public.orders (id bigserial PRIMARY KEY, user_id text, price numeric(10,3),"
                 " status varchar(20), currency varchar(3))",
                 {"currency_column": "currency"}, id="varchar-currency"),
])
def test_link_accepts_suitable_order_tables(db, ddl, kw):
    db.conn.execute(ddl)
    link(db.conn, **kw)
    link(db.conn, **kw)  # the same call again is harmless


@pytest.fixture
def linked(db):
    db.conn.execute(ORDERS)
    link(db.conn)
    return db


def test_a_different_second_link_is_refused(linked):
    linked.conn.execute(ORDERS.replace("public.orders", "public.other_orders"))
    assert_link_refused(linked, "public.other_orders")
    assert_link_refused(linked, "public.orders", paid_status="done")
    link(linked.conn)  # the original link still stands and may be repeated


@pytest.mark.parametrize("ddl", [
    "DROP TABLE public.orders",
    "DROP TABLE public.orders CASCADE",
    "ALTER TABLE public.orders RENAME TO purchases",
    "ALTER TABLE public.orders RENAME COLUMN price TO amount",
    "ALTER TABLE public.orders RENAME COLUMN id TO order_no",
    "ALTER TABLE public.orders RENAME COLUMN status TO state",
    "ALTER TABLE public.orders ALTER COLUMN price TYPE double precision",
    "ALTER TABLE public.orders ALTER COLUMN id TYPE integer",
    "ALTER TABLE public.orders DROP COLUMN price",
    "ALTER TABLE public.orders DROP COLUMN user_id",
])
def test_linked_table_cannot_be_dropped_renamed_or_retyped(linked, ddl):
    err = errors_out(linked.conn, ddl)
    assert "orders" in str(err) or "trigger" in str(err), f"unclear error: {err}"
    cols = linked.rows("SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
                       " WHERE attrelid = to_regclass('public.orders') AND attnum > 0 AND NOT attisdropped"
                       " ORDER BY attnum")
    assert cols == [
        {"attname": "id", "type": "bigint"},
        {"attname": "user_id", "type": "text"},
        {"attname": "price", "type": "numeric(12,2)"},
        {"attname": "status", "type": "text"},
    ]


def test_linked_table_still_takes_unrelated_changes(linked):
    linked.conn.execute("ALTER TABLE public.orders ADD COLUMN note text")
    linked.conn.execute("ALTER TABLE public.orders RENAME COLUMN note TO remark")
    linked.conn.execute("ALTER TABLE public.orders DROP COLUMN remark")
    linked.conn.execute("CREATE INDEX ON public.orders (user_id)")
    linked.conn.execute("CREATE TABLE public.unrelated (id int)")
    linked.conn.execute("DROP TABLE public.unrelated")


def test_order_with_payments_cannot_be_deleted_but_others_can(linked):
    paid = linked.value("INSERT INTO public.orders (user_id, price) VALUES ('u', 10) RETURNING id")
    spare = linked.value("INSERT INTO public.orders (user_id, price) VALUES ('u', 10) RETURNING id")
    linked.conn.execute(
        "INSERT INTO payment.payments (order_id, amount, currency, status, stripe_payment_intent_id, livemode)"
        " VALUES (%s, 1000, 'usd', 'pending', 'pi_e2eDeleteGuard000000000001', false)", (paid,))
    err = errors_out(linked.conn, "DELETE FROM public.orders WHERE id = %s", (paid,))
    assert "order" in str(err), f"unclear error: {err}"
    linked.conn.execute("DELETE FROM public.orders WHERE id = %s", (spare,))
    assert [r["id"] for r in linked.rows("SELECT id FROM public.orders")] == [paid]


def test_only_the_table_owner_may_link_it(db):
    db.conn.execute(ORDERS)  # owned by postgres
    admin = db.connect(ADMIN)
    with pytest.raises(psycopg.Error):
        link(admin)
    link(db.conn)  # the owner (here the superuser that owns it) can


def test_a_table_owner_who_is_not_a_superuser_can_link_and_is_guarded(db):
    """The documented path: link_order_table called by the table's (non-superuser) owner."""
    from e2e_helpers import OWNER
    db.conn.execute(f"CREATE SCHEMA shop AUTHORIZATION {OWNER}")
    owner = db.connect(user=OWNER)
    owner.execute("GRANT USAGE ON SCHEMA shop TO payment_owner")
    owner.execute("CREATE TABLE shop.orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                  "user_id text, price numeric(10,2) NOT NULL, status text NOT NULL DEFAULT 'new')")
    owner.execute("SELECT payment.link_order_table('shop.orders', currency => 'usd')")
    order = owner.execute("INSERT INTO shop.orders (user_id, price) VALUES ('u', 5) RETURNING id").fetchone()[0]
    db.conn.execute("INSERT INTO payment.payments (order_id, amount, currency) VALUES (%s, 500, 'usd')", (order,))
    with pytest.raises(psycopg.Error) as info:
        owner.execute("DELETE FROM shop.orders WHERE id = %s", (order,))
    assert info.value.sqlstate == "23503"


# --------------------------------------------------------------------------
# The orders' currency is always known


def test_a_new_link_without_a_currency_is_refused_with_a_hint(db):
    db.conn.execute(ORDERS)
    err = assert_link_refused(db, currency=None)
    assert err.sqlstate == "22023" and "currency" in (err.diag.message_hint or "")
    err = assert_link_refused(db, currency="usd", currency_column="status")
    assert err.sqlstate == "22023"
    assert db.value("SELECT count(*) FROM payment.order_link") == 0


def test_a_link_names_its_currency_in_lower_case(db):
    db.conn.execute(ORDERS)
    link(db.conn, currency="EUR")
    assert db.value("SELECT currency FROM payment.order_link") == "eur"
    err = assert_link_refused(db, currency="xyz")
    assert err.sqlstate in ("22023", "2BP01")


def test_a_link_made_without_a_currency_is_completed_once(db):
    """0.1.0 linked tables with neither a currency nor a currency column; calling
    link_order_table again with the same arguments plus a currency completes it, once."""
    db.conn.execute(ORDERS)
    link(db.conn, currency="usd")
    db.conn.execute("UPDATE payment.order_link SET currency = NULL")  # as 0.1.0 left it
    link(db.conn, currency="usd")
    assert db.value("SELECT currency FROM payment.order_link") == "usd"
    err = assert_link_refused(db, currency="eur")
    assert err.sqlstate == "2BP01"
    link(db.conn, currency="usd")  # and the completed link may be repeated


def test_an_id_column_of_a_domain_type_is_guarded(db):
    """link_order_table accepts a domain over an integer type; the row guard reads it."""
    db.conn.execute("CREATE DOMAIN public.order_key AS integer CHECK (VALUE > 0)")
    db.conn.execute("CREATE SEQUENCE public.order_key_seq")
    db.conn.execute("CREATE TABLE public.orders (id public.order_key PRIMARY KEY DEFAULT nextval('public.order_key_seq'),"
                    " user_id text, price numeric NOT NULL, status text)")
    link(db.conn)
    free = db.value("INSERT INTO public.orders (price) VALUES (1) RETURNING id")
    paid = db.value("INSERT INTO public.orders (price) VALUES (1) RETURNING id")
    db.conn.execute("INSERT INTO payment.payments (order_id, amount, currency, status) VALUES (%s, 100, 'usd', 'succeeded')",
                    (paid,))
    db.conn.execute("DELETE FROM public.orders WHERE id = %s", (free,))
    err = errors_out(db.conn, "DELETE FROM public.orders WHERE id = %s", (paid,))
    assert err.sqlstate == "23503"
