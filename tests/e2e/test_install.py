"""CREATE EXTENSION and DROP EXTENSION: UTF-8 only, a schema of its own, roles
that outlive it."""

import psycopg
import pytest

from e2e_helpers import require_extension


@pytest.fixture(autouse=True)
def _installed():
    require_extension()


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
def test_create_extension_is_refused_in_a_non_utf8_database(new_database, encoding):
    d = new_database(f"ENCODING '{encoding}' LOCALE 'C' TEMPLATE template0")
    with pytest.raises(psycopg.Error) as info:
        d.conn.execute("CREATE EXTENSION pg_payment")
    assert "utf" in str(info.value).lower(), f"unclear error: {info.value}"
    assert d.value("SELECT count(*) FROM pg_extension WHERE extname = 'pg_payment'") == 0
    assert d.value("SELECT count(*) FROM pg_namespace WHERE nspname = 'payment'") == 0


def test_create_extension_is_refused_when_a_foreign_payment_schema_exists(new_database):
    d = new_database()
    d.conn.execute("CREATE SCHEMA payment")
    d.conn.execute("CREATE TABLE payment.invoices_from_the_old_system (id int)")
    with pytest.raises(psycopg.Error) as info:
        d.conn.execute("CREATE EXTENSION pg_payment")
    assert "payment" in str(info.value), f"unclear error: {info.value}"
    assert d.value("SELECT count(*) FROM pg_extension WHERE extname = 'pg_payment'") == 0
    # the app's own schema is untouched
    assert d.value("SELECT count(*) FROM pg_tables WHERE schemaname = 'payment'") == 1


def test_schema_is_a_member_and_drop_extension_removes_it_but_keeps_roles(new_database):
    d = new_database()
    d.conn.execute("CREATE EXTENSION pg_payment")
    assert d.value("""SELECT count(*) FROM pg_depend
                      WHERE classid = 'pg_namespace'::regclass AND objid = 'payment'::regnamespace
                        AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_payment')
                        AND deptype = 'e'""") == 1
    d.conn.execute("DROP EXTENSION pg_payment")
    assert d.value("SELECT count(*) FROM pg_namespace WHERE nspname = 'payment'") == 0
    assert d.value("SELECT count(*) FROM pg_roles WHERE rolname IN"
                   " ('payment_owner', 'payment_admin', 'payment_app', 'payment_webhook')") == 4
    d.conn.execute("CREATE EXTENSION pg_payment")  # and it comes back
    assert d.value("SELECT count(*) FROM pg_namespace WHERE nspname = 'payment'") == 1


def test_second_database_reuses_the_cluster_roles(new_database):
    a, b = new_database(), new_database()
    a.conn.execute("CREATE EXTENSION pg_payment")
    oid = a.value("SELECT oid FROM pg_roles WHERE rolname = 'payment_owner'")
    b.conn.execute("CREATE EXTENSION pg_payment")
    assert b.value("SELECT oid FROM pg_roles WHERE rolname = 'payment_owner'") == oid
    # The schema is the extension owner's (DESIGN: payment_owner owns nothing).
    assert b.value("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'payment'") == "postgres"
