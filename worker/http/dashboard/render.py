"""The dashboard's HTML: Jinja2 templates with autoescaping, and the policy every page is served under.

Every value a template shows is escaped by Jinja2 (a dead letter's payload is whatever a producer
sent: it must show as text, never run). The one ``<style>`` element carries the response's nonce,
and the Content-Security-Policy (:func:`content_security_policy`) allows nothing else: no script at
all, images only as ``data:``, forms posting only to this server.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from worker.http.dashboard import views
from worker.ops.status import Status

#: The forms' own style, beside the page's.
FORMS_STYLE: Final = (
    "form.act{margin:0}form.who{float:right;margin:.8em 0}button{font:inherit;cursor:pointer}"
    "input[type=password]{font:inherit;padding:.2em}"
)


@functools.cache
def templates() -> Environment:
    """The dashboard's templates, made on first use; autoescaping on for every one (all are HTML)."""
    return Environment(loader=PackageLoader("worker.http.dashboard", "templates"), autoescape=True)


def content_security_policy(nonce: str) -> str:
    """The page's own nonce-tagged style and ``data:`` images; forms post to this server; nothing else."""
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src data:; base-uri 'none';"
        " form-action 'self'; frame-ancestors 'none'"
    )


def render(name: str, nonce: str, **context: Any) -> str:
    """Template ``name`` with ``context``, its style tagged with ``nonce``."""
    style = Markup(views.STYLE + FORMS_STYLE)  # noqa: S704 - constants of this module and views
    return templates().get_template(name).render(nonce=nonce, style=style, **context)


def render_page(
    status: Status,
    *,
    refresh_s: int,
    nonce: str,
    role: str | None = None,
    csrf: Mapping[str, str] | None = None,
    done: str | None = None,
) -> str:
    """The dashboard page for ``status``; ``role`` of the signed-in operator (actions for an admin)."""
    return render(
        "page.html",
        nonce,
        v=views.page(status),
        refresh_s=int(refresh_s),
        role=role,
        admin=role == "admin",
        csrf={} if csrf is None else csrf,
        done=done,
    )
