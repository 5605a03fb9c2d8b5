"""pg_payment's maintenance run by pg_cron, as DESIGN.md's Operations say a shop
schedules it: a login that is a member of `payment_admin` only (never a superuser)
schedules `retry_failed_events()` and `sync_events()`, and pg_cron runs each job with the
rights of the role that scheduled it, so a job can do no more than that login.

pg_cron must be in shared_preload_libraries, so this module runs its own throwaway
cluster (the session's has no pg_cron). Jobs reach the database the way pg_cron does by
default: a libpq connection, here to 127.0.0.1 with trust authentication.

Debian's pg_cron (1.4) has no second intervals: the finest schedule is '* * * * *', one
run at the start of each minute. So one fixture prepares every case and schedules every
job at once, and the tests wait for that same minute: the module takes up to about a
minute, not a minute per test.
"""

import time
import uuid
from dataclasses import dataclass

import pytest

import stripe_events as ev
from conftest import Cluster, FakeStripe, Payment, Shop, _grant_memberships
from e2e_helpers import APP, denied, point_at, require_extension

RUNNER = "cron_runner"  # the login the jobs are scheduled by: a member of payment_admin only
EVERY_MINUTE = "* * * * *"
# From scheduling to a finished run: up to a minute to the next minute's start, plus
# pg_cron's job-cache reload and the run itself, on a busy machine.
RUN_WAIT_S = 120


class CronCluster(Cluster):
    """conftest's throwaway cluster, restarted with pg_cron preloaded and its jobs kept in
    `dbname`; jobs connect over libpq to the address and port the cluster listens on."""

    def __init__(self, dbname):
        super().__init__()
        self.dbname = dbname

    def start(self):
        super().start()
        self.admin.execute(f'CREATE DATABASE "{self.dbname}"')
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\nshared_preload_libraries = 'pg_cron'\n"
                       f"cron.database_name = '{self.dbname}'\n"
                       "cron.host = '127.0.0.1'\n")
        self.admin.close()
        r = self._run(self.pgbin / "pg_ctl", "-D", self.data, "-l", self.log_path, "-w", "-t", "60",
                      "-m", "fast", "restart", timeout=90)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed:\n{r.stdout}\n{r.stderr}\n{self.server_log()[-3000:]}")
        self.admin = self.connect("postgres")


@pytest.fixture(scope="module")
def cron_cluster():
    require_extension()
    c = CronCluster("e2e_cron_" + uuid.uuid4().hex[:8])
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def fake_stripe(tmp_path_factory):
    server = FakeStripe.start(tmp_path_factory.mktemp("cron_fake_stripe"), webhook_secret=ev.WEBHOOK_SECRET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cron_shop(cron_cluster, fake_stripe):
    """The cron database: pg_cron and pg_payment created, the test logins granted as in
    every e2e database, RUNNER able to schedule, keys configured, orders linked."""
    shop = Shop(cron_cluster, cron_cluster.dbname)
    try:
        shop.conn.execute("CREATE EXTENSION pg_cron")
        shop.conn.execute("CREATE EXTENSION pg_payment")
        _grant_memberships(shop.conn)
        shop.conn.execute(f"CREATE ROLE {RUNNER} LOGIN NOSUPERUSER IN ROLE payment_admin")
        shop.conn.execute(f"GRANT USAGE ON SCHEMA cron TO {RUNNER}")
        point_at(shop, fake_stripe.url)
        shop.configure()
        shop.create_orders()
        yield shop
    finally:
        shop.close()


# --------------------------------------------------------------------------
# The cases, prepared before any job is scheduled, and the jobs


def failed_webhook(shop):
    """A payment whose succeeded webhook was stored `failed`: its handler raised. Then the
    handler is fixed, and nobody retries."""
    shop.add_logging_callback("payment")
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    shop.set_handlers_failing(True)
    assert shop.deliver(evt)["outcome"] == "failed"
    shop.set_handlers_failing(False)
    assert shop.payment_row(p.id)["status"] == "pending"
    return p, evt["id"]


def lost_webhook(shop, fake):
    """A payment made through the API that succeeded at Stripe; its webhook never came."""
    oid = shop.order(price="10.00")
    row = shop.row("SELECT * FROM payment.create_payment(%s, 'usd', 1000)", (oid,), conn=shop.connect(APP))
    sent = fake.event("payment_intent.succeeded", row["stripe_payment_intent_id"])  # not delivered
    return row["id"], sent["event_id"]


# Fails the run unless the job's session is RUNNER's own and not a superuser's.
WHOAMI = (f"DO $$BEGIN IF session_user <> '{RUNNER}' OR current_setting('is_superuser') = 'on' THEN "
          "RAISE EXCEPTION 'job ran as % (superuser: %)', session_user, current_setting('is_superuser'); "
          "END IF; END$$")


@dataclass
class Jobs:
    retry: int
    whoami: int
    secrets: int
    sync: int
    failed_payment: Payment
    failed_event_id: str
    lost_payment_id: int
    lost_event_id: str
    deadline: float


@pytest.fixture(scope="module")
def jobs(cron_shop, fake_stripe):
    """Every job, scheduled by RUNNER at once; unscheduled at the end."""
    failed_payment, failed_event_id = failed_webhook(cron_shop)
    lost_payment_id, lost_event_id = lost_webhook(cron_shop, fake_stripe)
    runner = cron_shop.connect(RUNNER)
    scheduled = []

    def schedule(name, command):
        jobid = runner.execute("SELECT cron.schedule(%s, %s, %s)", (name, EVERY_MINUTE, command)).fetchone()[0]
        scheduled.append(jobid)
        return jobid

    try:
        yield Jobs(
            retry=schedule("pg_payment_retry", "SELECT count(*) FROM payment.retry_failed_events()"),
            whoami=schedule("whoami", WHOAMI),
            secrets=schedule("read_secrets", "SELECT * FROM payment.secrets"),
            sync=schedule("pg_payment_sync", "SELECT payment.sync_events()"),
            failed_payment=failed_payment, failed_event_id=failed_event_id,
            lost_payment_id=lost_payment_id, lost_event_id=lost_event_id,
            deadline=time.monotonic() + RUN_WAIT_S)
    finally:
        # By id and as the superuser: a job stops even if a failed test left it someone else's.
        cron_shop.conn.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobid = ANY(%s)", (scheduled,))


def wait_for(shop, jobs, what, probe):
    """probe() until it returns something true, at most until the jobs' deadline."""
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > jobs.deadline:
            runs = shop.rows("SELECT jobid, username, status, return_message FROM cron.job_run_details ORDER BY runid")
            pytest.fail(f"no {what} within {RUN_WAIT_S}s of scheduling; job runs: {runs}\n"
                        f"server log:\n{shop.cluster.server_log()[-4000:]}")
        time.sleep(0.5)


def finished_run(shop, jobs, jobid):
    """The job's first finished run in cron.job_run_details."""
    return wait_for(shop, jobs, f"finished run of job {jobid}", lambda: shop.row(
        "SELECT * FROM cron.job_run_details WHERE jobid = %s AND status IN ('succeeded', 'failed')"
        " ORDER BY runid LIMIT 1", (jobid,)))


# --------------------------------------------------------------------------


def test_retry_failed_events_from_pg_cron_applies_the_failed_event(cron_shop, jobs):
    p = jobs.failed_payment
    wait_for(cron_shop, jobs, "applied retry", lambda: cron_shop.event_row(jobs.failed_event_id)["outcome"] == "applied")
    assert cron_shop.payment_row(p.id)["status"] == "succeeded"
    assert [c["cb"]["status"] for c in cron_shop.callback_log("payment") if c["cb"]["id"] == p.id] == ["succeeded"]
    run = finished_run(cron_shop, jobs, jobs.retry)
    assert (run["status"], run["username"], run["database"]) == ("succeeded", RUNNER, cron_shop.name), run


def test_jobs_run_as_the_admin_login_never_as_a_superuser(cron_shop, jobs):
    role = cron_shop.row("SELECT rolsuper, ARRAY(SELECT m.roleid::regrole::text FROM pg_auth_members m"
                         " WHERE m.member = r.oid) AS member_of FROM pg_roles r WHERE rolname = %s", (RUNNER,))
    assert role == {"rolsuper": False, "member_of": ["payment_admin"]}
    run = finished_run(cron_shop, jobs, jobs.whoami)
    assert (run["status"], run["username"]) == ("succeeded", RUNNER), run["return_message"]


def test_a_job_can_do_no_more_than_payment_admin(cron_shop, jobs):
    run = finished_run(cron_shop, jobs, jobs.secrets)
    assert run["status"] == "failed", run
    assert "permission denied for table secrets" in run["return_message"], run["return_message"]


def test_the_runner_cannot_make_a_job_run_as_another_role(cron_shop, jobs):
    runner = cron_shop.connect(RUNNER)
    denied(runner, "UPDATE cron.job SET username = 'postgres' WHERE jobid = %s", (jobs.retry,))
    denied(runner, "SELECT cron.alter_job(%s, username => 'postgres')", (jobs.retry,))
    denied(runner, "SELECT cron.schedule_in_database('as_postgres', '* * * * *', 'SELECT 1', %s, 'postgres')",
           (cron_shop.name,))
    assert cron_shop.value("SELECT array_agg(DISTINCT username) FROM cron.job") == [RUNNER]


def test_sync_events_from_pg_cron_applies_a_lost_webhook(cron_shop, jobs):
    wait_for(cron_shop, jobs, "synced payment",
             lambda: cron_shop.payment_row(jobs.lost_payment_id)["status"] == "succeeded")
    evt = cron_shop.event_row(jobs.lost_event_id)
    assert evt is not None and evt["outcome"] == "applied", evt
    run = finished_run(cron_shop, jobs, jobs.sync)
    assert (run["status"], run["username"]) == ("succeeded", RUNNER), run
