"""Names and assertions shared by the end-to-end tests."""

from pathlib import Path

import psycopg
import pytest

CONTROL = Path("/usr/share/postgresql/15/extension/pg_payment.control")

# The released versions, oldest first; their install scripts are in sql/released/.
RELEASED = ("0.1.0",)

# Login roles the tests act as; cluster-wide, created once per cluster.
OWNER = "e2e_owner"  # owns the app's handler functions; member of payment_admin
ADMIN = "e2e_admin"  # member of payment_admin
APP = "e2e_app"  # member of payment_app
WEBHOOK = "e2e_webhook"  # member of payment_webhook
OUTSIDER = "e2e_outsider"  # member of nothing
LOGIN_ROLES = (OWNER, ADMIN, APP, WEBHOOK, OUTSIDER)

INSUFFICIENT_PRIVILEGE = "42501"


def assert_sqlstate_class(err, classes):
    assert err.sqlstate is not None and err.sqlstate[:2] in classes, (
        f"expected SQLSTATE class {'/'.join(classes)}, got {err.sqlstate}: {err}")


def refused(fn, *args, classes=("22", "28"), **kw):
    """Call fn and expect the error a relay maps to 400: SQLSTATE class 22 or 28.
    Returns the error."""
    with pytest.raises(psycopg.Error) as info:
        fn(*args, **kw)
    assert_sqlstate_class(info.value, classes)
    return info.value


def denied(conn, sql, params=None):
    """Run sql on conn and expect 'permission denied' (42501). Returns the error."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert info.value.sqlstate == INSUFFICIENT_PRIVILEGE, (
        f"expected 42501 for {sql!r}, got {info.value.sqlstate}: {info.value}")
    return info.value


def errors_out(conn, sql, params=None):
    """Run sql on conn and expect any error. Returns it."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    return info.value


def point_at(db, url):
    """Every new connection of the test database, and the open one, call Stripe at `url`."""
    db.conn.execute(f'ALTER DATABASE "{db.name}" SET pg_payment.stripe_api_base = \'{url}\'')
    db.conn.execute(f"SET pg_payment.stripe_api_base = '{url}'")


def require_extension():
    if not CONTROL.exists():
        pytest.fail(
            f"pg_payment is not installed into the system PostgreSQL 15: {CONTROL} is missing. "
            "Install it first (cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config), "
            "then run these tests.",
            pytrace=False,
        )
