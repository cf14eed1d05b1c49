"""The dashboard's routes: the page (``/``), its JSON (``/status.json``), sign in and out, an admin's actions.

Who may look: when no operator token is configured, anyone who reaches the page, read-only (as the
dashboard always was; ``eventworker dashboard`` listens on loopback by default). Once tokens are
configured, only a signed-in operator (or a request with an operator's bearer token), and only an
admin sees and may use the actions: requeue a failed job, retry failed handler runs, re-drive a
dead letter. Each action is a POST form with a CSRF token bound to the session and to that action
(:mod:`worker.http.dashboard.session`); it answers with a redirect to the page, which says what was
done.

Every page is rendered by Jinja2 with autoescaping, and carries a Content-Security-Policy that
allows nothing but its own nonce-tagged style, ``data:`` images and forms posting to itself: no
script at all, so a payload a producer sent shows as text and cannot run.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from worker.http.auth import bearer_token, token_role
from worker.http.dashboard import session as sessions
from worker.http.dashboard.render import content_security_policy, render, render_page
from worker.http.problems import Problem
from worker.http.routes.operator import RowId
from worker.http.state import HttpState, StateDep
from worker.ops import status_text
from worker.ops.actions import ActionRefused, redrive_dead_letter, requeue_failed_job, retry_handler_runs

router = APIRouter(include_in_schema=False)

#: The dashboard's one way in when tokens are configured: the session, else the login page.
LOGIN: Final = "/login"


def _render(name: str, status_code: int = 200, **context: Any) -> Response:
    nonce = secrets.token_urlsafe(16)
    response = Response(
        render(name, nonce, **context), status_code=status_code, media_type="text/html; charset=utf-8"
    )
    _harden(response, nonce)
    return response


def _harden(response: Response, nonce: str = "none") -> None:
    response.headers["Content-Security-Policy"] = content_security_policy(nonce)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"


def _open(state: HttpState) -> bool:
    """No operator token configured: the dashboard is read-only and needs no sign-in."""
    return not state.settings.admin_token_sha256 and not state.settings.reader_token_sha256


def _viewer(request: Request, state: HttpState) -> sessions.Session | None:
    """The signed-in operator (or one with a bearer token: a session of this request only)."""
    key = state.session_key
    found = sessions.decode_session(key, request.cookies.get(sessions.SESSION_COOKIE), time.time())
    if found is not None:
        return found
    token = bearer_token(request)
    role = None if token is None else token_role(state.settings, token)
    return None if role is None else sessions.Session(role, "bearer", int(time.time()) + 60)


class _Tokens(Mapping[str, str]):
    """The page's CSRF tokens, made when the template asks for one (``csrf["requeue-7"]``)."""

    def __init__(self, key: bytes, bound_to: str) -> None:
        self.key, self.bound_to, self.now = key, bound_to, time.time()

    def __getitem__(self, purpose: str) -> str:
        return sessions.csrf_token(self.key, self.bound_to, purpose, self.now)

    def __getattr__(self, purpose: str) -> str:
        if purpose.startswith("_"):
            raise AttributeError(purpose)
        return self[purpose]

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@router.get("/")
@router.get("/index.html")
async def page(request: Request, state: StateDep, done: str | None = None) -> Response:
    """The status page; the sign-in page first when tokens are configured and nobody is signed in."""
    viewer = None if _open(state) else _viewer(request, state)
    if viewer is None and not _open(state):
        return RedirectResponse(LOGIN, status_code=303)
    status = await state.status()
    key = state.session_key
    nonce = secrets.token_urlsafe(16)
    page = render_page(
        status,
        refresh_s=state.settings.dashboard_refresh,
        nonce=nonce,
        role=None if viewer is None else viewer.role,
        csrf=_Tokens(key, "" if viewer is None else viewer.sid),
        done=done,
    )
    response = Response(page, media_type="text/html; charset=utf-8")
    _harden(response, nonce)
    return response


@router.get("/status.json")
async def status_json(request: Request, state: StateDep) -> Response:
    """What the page shows, as ``eventworker status --json`` prints it."""
    if not _open(state) and _viewer(request, state) is None:
        raise Problem(
            "unauthorized", "sign in at /login, or send an operator token as 'Authorization: Bearer'"
        )
    response = Response(status_text.dumps(await state.status()), media_type="application/json")
    _harden(response)
    return response


@router.get(LOGIN)
async def login_page(state: StateDep) -> Response:
    """The sign-in form, its CSRF token bound to a fresh pre-login cookie."""
    if _open(state):
        return RedirectResponse("/", status_code=303)
    return _login_form(state)


def _login_form(state: HttpState, problem: str | None = None, status_code: int = 200) -> Response:
    nonce = secrets.token_urlsafe(16)
    key = state.session_key
    response = _render(
        "login.html",
        status_code=status_code,
        login_csrf=sessions.csrf_token(key, nonce, "login", time.time()),
        problem=problem,
        hours=f"{state.settings.http_session_hours:g}",
        role=None,
    )
    response.set_cookie(
        sessions.LOGIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict", path="/"
    )
    return response


@router.post(LOGIN)
async def login(
    request: Request, state: StateDep, token: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = ""
) -> Response:
    """Check the form's token and the operator token; a session cookie for 303 to the page."""
    settings = state.settings
    key = state.session_key
    nonce = request.cookies.get(sessions.LOGIN_COOKIE, "")
    problem = sessions.csrf_problem(key, nonce, "login", csrf, time.time(), settings.http_csrf_seconds)
    if problem is not None:
        return _login_form(state, problem, 403)
    role = token_role(settings, token.strip()) if token.strip() else None
    if role is None:
        return _login_form(state, "that is not an operator token", 401)
    signed_in = sessions.new_session(role, time.time(), settings.http_session_hours * 3600)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        sessions.SESSION_COOKIE,
        sessions.encode_session(key, signed_in),
        max_age=int(settings.http_session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(sessions.LOGIN_COOKIE, path="/")
    _harden(response)
    return response


async def _admin_form(request: Request, state: HttpState, purpose: str, csrf: str) -> None:
    """403 unless an admin is signed in and the form is this session's, made for this action, and fresh."""
    viewer = _viewer(request, state)
    if viewer is None or viewer.role != "admin" or viewer.sid == "bearer":
        raise Problem("forbidden", "sign in at /login with the admin token to act")
    key = state.session_key
    problem = sessions.csrf_problem(
        key, viewer.sid, purpose, csrf, time.time(), state.settings.http_csrf_seconds
    )
    if problem is not None:
        raise Problem("forbidden", problem)


@router.post("/logout")
async def logout(request: Request, state: StateDep, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session (the cookie is dropped) and go to the sign-in page."""
    viewer = _viewer(request, state)
    key = state.session_key
    if viewer is not None and sessions.csrf_problem(
        key, viewer.sid, "logout", csrf, time.time(), state.settings.http_csrf_seconds
    ):
        raise Problem("forbidden", "the form's token is not this session's: reload the page")
    response = RedirectResponse(LOGIN, status_code=303)
    response.delete_cookie(sessions.SESSION_COOKIE, path="/")
    return response


def _done(message: str) -> Response:
    response = RedirectResponse(f"/?done={quote(message)}", status_code=303)
    _harden(response)
    return response


def _refused(exc: ActionRefused) -> Problem:
    return Problem(exc.kind, exc.detail)


@router.post("/actions/failed-jobs/{failed_id}/requeue")
async def requeue(
    request: Request, state: StateDep, failed_id: RowId, csrf: Annotated[str, Form()] = ""
) -> Response:
    await _admin_form(request, state, f"requeue-{failed_id}", csrf)
    async with state.db.sessionmaker() as db_session:
        try:
            done = await requeue_failed_job(db_session, state.redis, state.settings.queue_name, failed_id)
        except ActionRefused as exc:
            raise _refused(exc) from None
    state.forget_status()
    return _done(f"failed job {done.failed_job} ({done.job}) requeued as {done.job_id}")


@router.post("/actions/handler-runs/retry-failed")
async def retry_failed(request: Request, state: StateDep, csrf: Annotated[str, Form()] = "") -> Response:
    await _admin_form(request, state, "retry-failed", csrf)
    async with state.db.sessionmaker() as db_session:
        reset, job_id = await retry_handler_runs(db_session, state.redis, state.settings.queue_name, None)
    state.forget_status()
    return _done(f"{len(reset)} handler run(s) pending again; run_handlers {job_id or 'left to the sweep'}")


@router.post("/actions/dead-letters/{dead_letter_id}/redrive")
async def redrive(
    request: Request, state: StateDep, dead_letter_id: RowId, csrf: Annotated[str, Form()] = ""
) -> Response:
    await _admin_form(request, state, f"redrive-{dead_letter_id}", csrf)
    async with state.db.sessionmaker() as db_session:
        try:
            job_id = await redrive_dead_letter(
                db_session, state.redis, state.settings.queue_name, dead_letter_id
            )
        except ActionRefused as exc:
            raise _refused(exc) from None
    state.forget_status()
    return _done(f"dead letter {dead_letter_id} re-driven as job {job_id}")
