"""The dashboard as an admin uses it, in a real browser: sign in, find a failed job, requeue it, see it pass.

Playwright for Python drives Debian's chromium through its ``executable_path`` (no browser is
downloaded). The story: a worker (one try per job) keeps a producer's ``<script>`` payload as a dead
letter, then fails an ingest job for good while the events table is away; the table comes back (the
cause fixed); the admin signs in on the dashboard, finds the failed job and requeues it, and the
page shows it gone and its events stored. The payload shows as text and never runs. The forms'
protections are checked beside it: an expired CSRF token, one made for another action, a read-only
operator, and the session cookie's flags.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import asyncpg
import httpx
import pytest
from conftest import PG_URL, pg_database_url
from httpserve import ServeProcess, sha256
from playwright.async_api import async_playwright
from sqlalchemy.engine import make_url
from support import WorkerProcess, process_env

from worker.config import Settings, load_settings
from worker.protocol.producer import EventProducer

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
#: The flags tests/e2e/test_operating.py runs Debian's chromium with (CI runs as root: no sandbox).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]
SCRIPT = "<script>document.title='pwned'</script>"
ADMIN = secrets.token_urlsafe(16)
READER = secrets.token_urlsafe(16)
#: Seconds a form stays valid here: long enough for a browser's click, short enough to wait out.
CSRF_S = 6


@pytest.fixture
def env(pg_database, redis_url, queue_name) -> dict[str, str]:
    return process_env(
        DATABASE_URL=pg_database_url(pg_database),
        REDIS_URL=redis_url,
        EVENTWORKER_QUEUE_NAME=queue_name,
        EVENTWORKER_POLL_DELAY="0.01",
        EVENTWORKER_MAX_TRIES="1",
        EVENTWORKER_ADMIN_TOKEN_SHA256=sha256(ADMIN),
        EVENTWORKER_READER_TOKEN_SHA256=sha256(READER),
        EVENTWORKER_HTTP_CSRF_SECONDS=str(CSRF_S),
    )


@pytest.fixture
def settings(env) -> Settings:
    return load_settings(
        database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"], queue_name=env["EVENTWORKER_QUEUE_NAME"]
    )


async def sql(settings: Settings, statement: str) -> object:
    url = make_url(PG_URL).set(database=make_url(settings.database_url).database)
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        return await connection.fetchval(statement)
    finally:
        await connection.close()


def form_token(page: str, action: str) -> str | None:
    """The CSRF token of the page's form posting to ``action`` (None without such a form)."""
    found = re.search(f'action="{re.escape(action)}"><input type="hidden" name="csrf" value="([^"]+)"', page)
    return None if found is None else found[1]


async def eventually(check, what: str, within: float = 30):
    deadline = time.monotonic() + within
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return result


@pytest.fixture
async def failed_job(settings, env, tmp_path):
    """A dead letter with a <script> payload, then an ingest job failed for good while `events` was away."""
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.wait_started()
        queue = settings.queue_name
        async with EventProducer(settings.redis_url, queue_name=queue) as producer:
            await producer.emit_batch([{"specversion": "1.0", "id": "x", "type": "t", "data": SCRIPT}])
            await eventually(lambda: sql(settings, "SELECT count(*) FROM dead_letters"), "the dead letter")
            await sql(settings, "ALTER TABLE events RENAME TO events_away")
            try:
                batch = [
                    {"specversion": "1.0", "id": f"order-{n}", "source": "/shop", "type": "com.example.order"}
                    for n in range(3)
                ]
                await producer.emit_batch(batch)
                await eventually(lambda: sql(settings, "SELECT count(*) FROM failed_jobs"), "the failed job")
            finally:
                await sql(settings, "ALTER TABLE events_away RENAME TO events")  # the cause, fixed
        yield worker
    finally:
        worker.kill()


async def test_an_admin_signs_in_requeues_a_failed_job_and_sees_it_succeed(
    env, settings, failed_job, tmp_path
):
    """Sign-in redirect, the failed job's requeue button, the job gone and its three events stored."""
    serve = ServeProcess(env, tmp_path / "dashboard.log", "dashboard")
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = await browser.new_page()
                await page.goto(serve.url + "/")
                assert page.url == serve.url + "/login"
                await page.fill("#token", ADMIN)
                await page.click("#login button[type=submit]")
                await page.wait_for_url(serve.url + "/")
                assert await page.inner_text("#tile-failed") == "1"
                [failure_id] = re.findall(r'id="requeue-(\d+)"', await page.content())
                await page.click(f"#requeue-{failure_id}")
                await page.wait_for_url(re.compile(r".*/\?done=.*"))
                assert "requeued as" in await page.inner_text("#done")

                async def succeeded() -> bool:
                    await page.goto(serve.url + "/")
                    return await page.inner_text("#tile-failed") == "0"

                await eventually(succeeded, "the requeued job to succeed")
                assert await sql(settings, "SELECT count(*) FROM events") == 3
                assert "failed jobs" not in await page.inner_text("#verdict")
                raw = await page.inner_text("pre.raw")
                assert SCRIPT in raw  # the payload, shown as text
                assert await page.locator("script").count() == 0
                assert await page.title() != "pwned"
                cookies = {c["name"]: c for c in await page.context.cookies()}
                assert cookies["ew_session"]["httpOnly"] is True
                assert cookies["ew_session"]["sameSite"] == "Strict"
                await page.screenshot(path=str(tmp_path / "dashboard-admin.png"), full_page=True)
            finally:
                await browser.close()
    finally:
        assert serve.stop() == 0, serve.output()


async def test_forms_refuse_an_expired_or_foreign_token_and_a_read_only_operator(
    env, settings, failed_job, tmp_path
):
    """403 and nothing done: a form older than EVENTWORKER_HTTP_CSRF_SECONDS, a token made for another
    action, no token; a read-only operator sees no form and may not post one; a wrong token is 401."""
    serve = ServeProcess(env, tmp_path / "dashboard.log", "dashboard")
    try:
        async with httpx.AsyncClient(base_url=serve.url, timeout=30) as admin:
            login = await admin.get("/login")
            token = re.search(r'name="csrf" value="([^"]+)"', login.text)[1]
            wrong = await admin.post("/login", data={"token": "guess", "csrf": token})
            assert wrong.status_code == 401
            token = re.search(r'name="csrf" value="([^"]+)"', wrong.text)[1]
            signed_in = await admin.post("/login", data={"token": ADMIN, "csrf": token})
            assert signed_in.status_code == 303
            cookie = signed_in.headers["set-cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
            page = (await admin.get("/")).text
            [failed_id] = re.findall(r'action="/actions/failed-jobs/(\d+)/requeue"', page)
            url = f"/actions/failed-jobs/{failed_id}/requeue"
            requeue_token = form_token(page, url)
            assert form_token(page, "/actions/handler-runs/retry-failed") is None  # no failed run: no form
            assert (await admin.post(url, data={})).status_code == 403
            logout_token = form_token(page, "/logout")
            foreign = await admin.post(url, data={"csrf": logout_token})
            assert foreign.status_code == 403
            assert "not this session's" in foreign.json()["detail"]
            await asyncio.sleep(CSRF_S + 1.5)
            expired = await admin.post(url, data={"csrf": requeue_token})
            assert expired.status_code == 403
            assert "older than" in expired.json()["detail"]
        async with httpx.AsyncClient(base_url=serve.url, timeout=30) as reader:
            login = await reader.get("/login")
            token = re.search(r'name="csrf" value="([^"]+)"', login.text)[1]
            assert (await reader.post("/login", data={"token": READER, "csrf": token})).status_code == 303
            page = (await reader.get("/")).text
            assert "/actions/" not in page
            assert (await reader.post(url, data={"csrf": requeue_token})).status_code == 403
        assert await sql(settings, "SELECT count(*) FROM failed_jobs WHERE requeued_at IS NULL") == 1
        async with httpx.AsyncClient() as anyone:
            assert (await anyone.get(serve.url + "/status.json")).status_code == 401
    finally:
        assert serve.stop() == 0, serve.output()
