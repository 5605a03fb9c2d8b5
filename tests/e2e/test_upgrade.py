"""ALTER EXTENSION pg_payment UPDATE from every released version.

The released version runs as it was released: its commit built once (scripts/setup.sh,
`ensure_released_builds`) and installed into a private copy of PostgreSQL 15's tree, so
its library, not today's, makes the data. Then today's build is installed into that tree
(as an operator installs a new package), the old schema is served by the new library for
a while (the upgrade window), and `ALTER EXTENSION pg_payment UPDATE` runs. The result
must be the catalog of a fresh install, with every row kept and working.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

import stripe_events as ev
from conftest import Cluster, Shop, _grant_memberships
from e2e_helpers import OWNER, RELEASED, point_at, require_extension

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stripe_servers"))
from fake_stripe import FakeStripe  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PG_CONFIG = "/usr/lib/postgresql/15/bin/pg_config"
CURRENT = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)


def pg_config(flag):
    return subprocess.run([PG_CONFIG, flag], capture_output=True, text=True, check=True).stdout.strip()


def released_build(version):
    var = "PG_PAYMENT_RELEASED_" + version.replace(".", "_")
    path = os.environ.get(var)
    if not path or not (Path(path) / "lib" / "pg_payment.so").exists():
        pytest.fail(f"{var} does not name a build of pg_payment {version}: run the README's test "
                    "command (scripts/test), which builds it once and caches it", pytrace=False)
    return Path(path)


class PrivateTree:
    """A copy of PostgreSQL 15's bin/, lib/ and share/ whose $libdir and extension folder
    are its own (PostgreSQL finds both relative to its binaries)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="pg_payment_tree_"))
        os.chmod(self.root, 0o755)
        self.pkglibdir = self.root / pg_config("--pkglibdir").lstrip("/")
        self.sharedir = self.root / pg_config("--sharedir").lstrip("/")
        self.bindir = self.root / pg_config("--bindir").lstrip("/")
        shutil.copytree(pg_config("--bindir"), self.bindir, symlinks=True)
        shutil.copytree(pg_config("--pkglibdir"), self.pkglibdir, symlinks=True)
        shutil.copytree(pg_config("--sharedir"), self.sharedir, symlinks=True)
        for old in (self.sharedir / "extension").glob("pg_payment*"):
            old.unlink()
        (self.pkglibdir / "pg_payment.so").unlink(missing_ok=True)

    def install(self, library, scripts):
        """Install a build the way a package does: the library replaced by a rename (a
        running backend keeps the file it mapped), the SQL files copied."""
        staged = self.pkglibdir / ".pg_payment.so.new"
        shutil.copyfile(library, staged)
        os.replace(staged, self.pkglibdir / "pg_payment.so")
        for script in scripts:
            shutil.copy(script, self.sharedir / "extension" / Path(script).name)

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)


def current_build_files():
    ext = Path(pg_config("--sharedir")) / "extension"
    return Path(pg_config("--pkglibdir")) / "pg_payment.so", sorted(ext.glob("pg_payment*"))


# --------------------------------------------------------------------------
# The catalog of the schema `payment`, as text that two databases can compare

def sorted_acl(expr):
    return f"(SELECT array_agg(x::text ORDER BY x::text) FROM unnest({expr}) x)"


MEMBERS = """(SELECT classid, objid FROM pg_depend WHERE refclassid = 'pg_extension'::regclass
               AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_payment') AND deptype = 'e')"""

CATALOG = {
    "extension": """SELECT extname, extowner::regrole::text, extnamespace::regnamespace::text, extrelocatable,
                           extversion FROM pg_extension WHERE extname = 'pg_payment'""",
    "members": f"""SELECT pg_describe_object(classid, objid, 0) FROM {MEMBERS} m ORDER BY 1""",
    "schema": f"""SELECT nspname, nspowner::regrole::text, {sorted_acl('nspacl')}
                    FROM pg_namespace WHERE nspname = 'payment'""",
    "relations": f"""SELECT relname, relkind, relowner::regrole::text, {sorted_acl('relacl')}, reloptions,
                            relpersistence, relrowsecurity, relforcerowsecurity, relreplident
                       FROM pg_class WHERE relnamespace = 'payment'::regnamespace ORDER BY 1""",
    # Columns by their position among the live ones: a dropped column leaves a gap in
    # attnum, but the row type that users see is the order of the live columns.
    "columns": f"""SELECT c.relname, row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
                          format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, a.attgenerated,
                          pg_get_expr(d.adbin, d.adrelid), {sorted_acl('a.attacl')}, a.attcollation::regcollation::text
                     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                    WHERE c.relnamespace = 'payment'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
                    ORDER BY 1, 2""",
    "constraints": """SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid), condeferrable
                        FROM pg_constraint WHERE connamespace = 'payment'::regnamespace ORDER BY 1, 2""",
    "indexes": """SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                   WHERE c.relnamespace = 'payment'::regnamespace ORDER BY 1""",
    "triggers": """SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
                     FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                    WHERE c.relnamespace = 'payment'::regnamespace AND NOT t.tgisinternal ORDER BY 1, 2""",
    "functions": f"""SELECT p.oid::regprocedure::text, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
                            p.proowner::regrole::text, p.prosecdef, p.proconfig, {sorted_acl('p.proacl')},
                            l.lanname, p.prosrc, p.probin, p.provolatile, p.proisstrict, p.proparallel,
                            p.procost, p.prorows, p.proretset, p.prokind, p.proleakproof
                       FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                      WHERE p.pronamespace = 'payment'::regnamespace ORDER BY 1""",
    "sequences": """SELECT s.seqrelid::regclass::text, s.seqtypid::regtype::text, s.seqstart, s.seqincrement,
                           s.seqmax, s.seqmin, s.seqcache, s.seqcycle,
                           (SELECT d.refobjid::regclass::text || '.' || a.attname
                              FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                             WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid AND d.deptype IN ('a', 'i')
                               AND d.refclassid = 'pg_class'::regclass)
                      FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
                     WHERE c.relnamespace = 'payment'::regnamespace ORDER BY 1""",
    "types": f"""SELECT typname, typtype, typowner::regrole::text, {sorted_acl('typacl')},
                        (SELECT array_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid)
                   FROM pg_type t WHERE typnamespace = 'payment'::regnamespace ORDER BY 1""",
    "dump_marks": """SELECT cfg::regclass::text, cond
                       FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(cfg, cond)
                      WHERE e.extname = 'pg_payment' ORDER BY 1""",
    "init_privs": f"""SELECT pg_describe_object(i.classoid, i.objoid, i.objsubid), i.privtype,
                             {sorted_acl('i.initprivs')}
                        FROM pg_init_privs i JOIN {MEMBERS} m ON m.classid = i.classoid AND m.objid = i.objoid
                       ORDER BY 1""",
    "event_triggers": """SELECT evtname, evtevent, evtowner::regrole::text, evtfoid::regprocedure::text, evtenabled, evttags
                           FROM pg_event_trigger ORDER BY 1""",
    "comments": f"""SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
                      FROM pg_description d JOIN {MEMBERS} m ON m.classid = d.classoid AND m.objid = d.objoid
                     ORDER BY 1""",
    "policies": """SELECT polrelid::regclass::text, polname, polcmd, pg_get_expr(polqual, polrelid)
                     FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
                    WHERE c.relnamespace = 'payment'::regnamespace ORDER BY 1, 2""",
}


def frozen(value):
    return tuple(frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def catalog(conn):
    out = {}
    with conn.cursor() as cur:
        for name, sql in CATALOG.items():
            cur.execute(sql)
            out[name] = [frozen(r) for r in cur.fetchall()]
    return out


def catalog_differences(upgraded, fresh):
    diffs = []
    for name in CATALOG:
        a, b = set(upgraded[name]), set(fresh[name])
        for row in sorted(a - b, key=repr):
            diffs.append(f"{name}: only after the upgrade: {row}")
        for row in sorted(b - a, key=repr):
            diffs.append(f"{name}: only in a fresh install: {row}")
    return diffs


# --------------------------------------------------------------------------
# Released scripts and the library's symbols

def symbols_named_by(script):
    return set(re.findall(r"AS\s+'MODULE_PATHNAME',\s*'([A-Za-z0-9_]+)'", Path(script).read_text()))


def exported_symbols(library):
    out = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def script_items(path):
    """pgrx orders the items of a generated script by a dependency graph ("not stable"),
    so two builds of one commit are compared as sets of items."""
    return sorted(Path(path).read_text().split("/* <begin connected objects> */"))


def test_released_scripts_are_what_their_release_built():
    for version in RELEASED:
        built = released_build(version) / "extension" / f"pg_payment--{version}.sql"
        committed = REPO / "sql" / "released" / f"pg_payment--{version}.sql"
        assert script_items(committed) == script_items(built), (
            f"sql/released/pg_payment--{version}.sql is not the script that {version}'s commit generates")


def test_every_symbol_a_released_script_names_is_in_todays_library():
    """A released install or upgrade script binds its C functions to symbols of the
    library by name; removing or renaming one breaks every database still on that
    version (and the upgrade window). Keep the old symbol, raising 55000, instead."""
    require_extension()
    library, _ = current_build_files()
    have = exported_symbols(library)
    scripts = sorted((REPO / "sql" / "released").glob("pg_payment--*.sql")) + sorted(
        (REPO / "sql").glob("pg_payment--*--*.sql"))
    assert scripts, "no released or upgrade scripts found"
    missing = {str(s.name): sorted(symbols_named_by(s) - have) for s in scripts}
    assert {k: v for k, v in missing.items() if v} == {}, "symbols that today's library lacks"
    # And the check can fail: a symbol that no library has is noticed.
    assert "no_such_function_wrapper" not in have


# --------------------------------------------------------------------------
# The upgrade, from each released version, with data made by that version

@pytest.fixture(params=RELEASED)
def released(request, tmp_path):
    """A private cluster running the released version's library, a shop database made by
    it, and a fake Stripe it talks to."""
    require_extension()
    version = request.param
    build = released_build(version)
    tree = PrivateTree()
    tree.install(build / "lib" / "pg_payment.so", sorted((build / "extension").glob("pg_payment*")))
    cluster = Cluster(pgbin=tree.bindir)
    fake = FakeStripe.start(tmp_path / "fake_stripe", webhook_secret=ev.WEBHOOK_SECRET)
    shops = []
    try:
        cluster.start()

        def new_shop():
            name = f"upgrade_{len(shops)}"
            cluster.admin.execute(f'CREATE DATABASE "{name}"')
            s = Shop(cluster, name)
            shops.append(s)
            return s

        yield version, tree, cluster, fake, new_shop
    finally:
        for s in shops:
            s.close()
        fake.stop()
        cluster.stop()
        tree.remove()



def deliver_from(fake, shop, type_, object_id, **kw):
    sent = fake.event(type_, object_id, **kw)
    return shop.value("SELECT payment.process_stripe_event(%s, %s)", (sent["payload"], sent["signature"]))


def confirm(fake, pi):
    import urllib.parse
    import urllib.request
    data = urllib.parse.urlencode({"payment_method": "pm_card_visa"}).encode()
    req = urllib.request.Request(f"{fake.url}/v1/payment_intents/{pi}/confirm", data=data,
                                 headers={"Authorization": f"Bearer {ev.SECRET_KEY}"})
    with urllib.request.urlopen(req, timeout=10):
        pass


def make_history(shop, fake):
    """What a shop has after some weeks on the released version: a link, a handler for
    every callback kind, a paid and partly refunded payment, a pending one, a subscription
    with its first invoice and a renewal, a failed event, the request log."""
    shop.configure()
    shop.create_orders()
    point_at(shop, fake.url)
    for kind in ("payment", "refund", "recurring_management", "recurring_deduction"):
        shop.add_logging_callback(kind)

    paid_order = shop.order(price="25.00")
    paid = shop.row("SELECT * FROM payment.create_payment(%s, 'usd', 2500)", (paid_order,))
    confirm(fake, paid["stripe_payment_intent_id"])
    assert deliver_from(fake, shop, "payment_intent.succeeded", paid["stripe_payment_intent_id"])["outcome"] == "applied"
    refund = shop.row("SELECT * FROM payment.refund_payment(%s, 500)", (paid["id"],))
    assert deliver_from(fake, shop, "refund.updated", refund["stripe_refund_id"])["outcome"] == "applied"

    pending_order = shop.order(price="9.99")
    pending = shop.row("SELECT * FROM payment.create_payment(%s, 'usd', 999)", (pending_order,))

    sub_order = shop.order(price="10.00", user_id="subscriber_1")
    sub = shop.row("SELECT * FROM payment.start_subscription(%s, 'price_monthly')", (sub_order,))
    s = sub["stripe_subscription_id"]
    assert deliver_from(fake, shop, "customer.subscription.updated", s,
                        overrides={"status": "active"})["outcome"] == "applied"
    assert deliver_from(fake, shop, "invoice.paid", s)["outcome"] == "applied"  # the renewal

    shop.set_handlers_failing(True)
    failed = shop.deliver(ev.pi_event("payment_intent.processing", pending["stripe_payment_intent_id"],
                                      amount=999, currency="usd"))
    assert failed["outcome"] == "failed"
    shop.set_handlers_failing(False)
    return {"paid": paid, "refund": refund, "pending": pending, "subscription": sub}


TABLES = ("installation", "order_link", "callbacks", "customers", "recurring_payments", "payments",
          "refunds", "charges", "events", "api_requests")


def contents(shop):
    """Every row of every table, and the app's orders."""
    out = {t: shop.rows(f"SELECT * FROM payment.{t} ORDER BY 1") for t in TABLES}
    out["orders"] = shop.rows("SELECT * FROM public.orders ORDER BY id")
    return out


def test_upgrade_gives_a_fresh_install_and_keeps_every_row_working(released):
    version, tree, cluster, fake, new_shop = released
    shop = new_shop()
    shop.conn.execute("CREATE EXTENSION pg_payment")
    assert shop.value("SELECT extversion FROM pg_extension WHERE extname = 'pg_payment'") == version
    _grant_memberships(shop.conn)
    made = make_history(shop, fake)
    before = contents(shop)
    assert all(before[t] for t in TABLES), [t for t in TABLES if not before[t]]
    assert {r["kind"] for r in shop.callback_log()} == {
        "payment", "refund", "recurring_management", "recurring_deduction"}
    shop.close()

    # The new build is installed; this database still has the old schema.
    library, scripts = current_build_files()
    tree.install(library, scripts)
    window = Shop(cluster, shop.name)
    try:
        upgrade_window_changes_nothing_half_new(window, fake, made, before)
        window.conn.execute("ALTER EXTENSION pg_payment UPDATE")
        assert window.value("SELECT extversion FROM pg_extension WHERE extname = 'pg_payment'") == CURRENT

        # The catalog is the one a fresh install of today's version gives.
        cluster.admin.execute('CREATE DATABASE "fresh"')
        fresh = Shop(cluster, "fresh")
        try:
            fresh.conn.execute("CREATE EXTENSION pg_payment")
            diffs = catalog_differences(catalog(window.conn), catalog(fresh.conn))
        finally:
            fresh.close()
        assert diffs == [], "\n".join(diffs)

        # Every C function of the upgraded schema resolves to a symbol of today's library.
        window.conn.execute("""
            SELECT fmgr_c_validator(p.oid) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
             WHERE l.lanname = 'c' AND p.pronamespace = 'payment'::regnamespace""")

        # Every row is still there, with the values it had (new columns come at the end).
        after = contents(window)
        assert {t: [{k: r[k] for k in rows[0]} for r in after[t]] if rows else after[t]
                for t, rows in before.items()} == before
        # 0.1.0 granted payment_owner rights on the app's table and its sequence; the
        # extension now reads and writes the table as its owner, so the upgrade revoked them.
        assert window.value("""
            SELECT has_table_privilege('payment_owner', 'public.orders', 'SELECT, INSERT, UPDATE, REFERENCES')
                OR has_column_privilege('payment_owner', 'public.orders', 'status', 'UPDATE')
                OR has_sequence_privilege('payment_owner', pg_get_serial_sequence('public.orders', 'id'), 'USAGE')
        """) is False
        upgraded_rows_still_work(window, fake, made)
    finally:
        window.close()


def upgrade_window_changes_nothing_half_new(shop, fake, made, before):
    """Between installing the new build and UPDATE, every entry point works as the old
    version did or refuses with 55000 naming the command that finishes the upgrade;
    nothing is written either way."""
    requests_before = len(fake.requests())
    pi = made["pending"]["stripe_payment_intent_id"]
    body = ev.payload(ev.pi_event("payment_intent.succeeded", pi, amount=999, currency="usd"))
    calls = [
        ("SELECT payment.process_stripe_event(%s, %s)", (body, ev.sign(body, ev.WEBHOOK_SECRET))),
        ("SELECT * FROM payment.create_payment(%s, 'usd', 999)", (made["pending"]["order_id"],)),
        ("SELECT * FROM payment.refund_payment(%s, 100)", (made["paid"]["id"],)),
        ("SELECT * FROM payment.retry_failed_events()", None),
        ("SELECT payment.configure(%s, %s, %s)", (ev.SECRET_KEY, ev.PUBLISHABLE_KEY, ev.WEBHOOK_SECRET)),
    ]
    for sql, params in calls:
        try:
            shop.conn.execute(sql, params)
        except psycopg.Error as e:
            assert e.sqlstate == "55000", f"{sql}: {e.sqlstate} {e}"
            assert "ALTER EXTENSION pg_payment UPDATE" in (e.diag.message_hint or ""), e.diag.message_hint
        else:
            # Working as the released version did is allowed; today's library refuses all
            # of these, so reaching here means the version check is gone.
            pytest.fail(f"{sql} ran on the old schema with the new library")
    assert contents(shop) == before
    assert len(fake.requests()) == requests_before, "a call reached Stripe during the upgrade window"


def upgraded_rows_still_work(shop, fake, made):
    point_at(shop, fake.url)
    logged = len(shop.callback_log())

    # A new webhook applies to a payment the old version made, and its handler runs.
    pending = made["pending"]
    confirm(fake, pending["stripe_payment_intent_id"])
    assert deliver_from(fake, shop, "payment_intent.succeeded",
                        pending["stripe_payment_intent_id"])["outcome"] == "applied"
    assert shop.payment_row(pending["id"])["status"] == "succeeded"
    new_logs = shop.callback_log()[logged:]
    assert [(r["kind"], r["who"]) for r in new_logs] == [("payment", OWNER)]

    # A refund of an old payment counts with the old one.
    paid = made["paid"]
    refund = shop.row("SELECT * FROM payment.refund_payment(%s, 700)", (paid["id"],))
    assert deliver_from(fake, shop, "refund.updated", refund["stripe_refund_id"])["outcome"] == "applied"
    row = shop.payment_row(paid["id"])
    assert (row["amount_refunded"], row["status"]) == (1200, "partially_refunded")

    # The failed event applies once its handler is fixed.
    results = shop.rows("SELECT * FROM payment.retry_failed_events()")
    assert [r["retry_failed_events"]["outcome"] for r in results] == ["applied"]

    # The link still guards.
    with pytest.raises(psycopg.Error) as info:
        shop.conn.execute("DELETE FROM public.orders WHERE id = %s", (paid["order_id"],))
    assert info.value.sqlstate == "23503"
    with pytest.raises(psycopg.Error) as info:
        shop.conn.execute("ALTER TABLE public.orders DROP COLUMN price")
    assert info.value.sqlstate == "2BP01"

    # Ids go on from the old sequences.
    new = shop.row("SELECT * FROM payment.create_payment(%s, 'usd', 1500)", (shop.order(price="15.00"),))
    assert new["id"] > max(made[k]["id"] for k in ("paid", "pending"))
