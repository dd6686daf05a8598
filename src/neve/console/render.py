"""Server-side HTML: one Jinja2 environment with autoescaping on, and the filters pages share.

Every value a page shows goes through Jinja2's escaping (names, comments, log lines, SQL
results are all user-provided); nothing is marked safe except markup the templates build.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse

import neve
from neve.identifiers import quote

PREFIX = "/console"
TEMPLATES = Path(__file__).parent / "templates"


def when(value: Any) -> str:
    """A timestamp as 'YYYY-MM-DD HH:MM:SS' (UTC), or '' for none."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)[:19].replace("T", " ")


def object_path(*parts: str) -> str:
    """URL path segments naming catalog objects: identifiers as SQL writes them (a mixed-case
    name double-quoted), percent-encoded."""
    return "/".join(url_quote(quote(str(p)), safe="") for p in parts)


def pretty_json(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def cell(value: Any) -> str:
    """A SQL result value as text for the grid."""
    if value is None:
        return "NULL"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, pretty_json=pretty_json, cell=cell)
    env.globals.update(object_path=object_path)
    # the version busts browser caches of the static files after an upgrade
    env.globals.update(prefix=PREFIX, static=f"{PREFIX}/static", version=neve.__version__)
    return env


def page(template: str, http_status: int = 200, **values: Any) -> HTMLResponse:
    html = environment().get_template(template).render(**values)
    return HTMLResponse(html, status_code=http_status)
