"""Bad input on the SQL routes gets a 4xx, never a 500: a bounded, seeded fuzz of
``POST /api/v1/sql`` and ``POST /api/v1/sql/tables/write`` on a real control plane."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import httpx
import pytest

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

SEED = 1414
ROUNDS = 60

ODD_TEXT = [
    "\u0000",
    "\ud800",  # a lone surrogate (sent as a JSON escape)
    "\u202e",
    "\u200b",
    "\ufeff",
    "é",
    "𝔘",
    "'",
    '"',
    "\\",
    ";",
    "--",
    "/*",
    "$$",
    "!",
    "\n",
]
SQL_WORDS = [
    "SELECT",
    "FROM",
    "WHERE",
    "(",
    ")",
    ",",
    "*",
    "1",
    "'x'",
    "t",
    "ml.public.t",
    "MODEL(m)!predict",
    "svc!p",
    "query(",
    "query_table(",
    "duckdb_tables()",
    "PRAGMA",
    "SET",
    "GLOBAL",
    "=",
    "USE",
    "CREATE",
    "TABLE",
    "DROP",
    "INSERT",
    "INTO",
    "VALUES",
    "WITH",
    "AS",
    "::",
    "[",
    "]",
    "{",
    "}",
    "NULL",
    "1e999",
    "-9223372036854775809",
]
JSON_VALUES = [None, 1, -1.5, True, "x", [], {}, [1, [2]], {"a": {"b": []}}, "\ud800", 10**30]


@pytest.fixture(scope="module")
def http(shared_control_plane) -> Iterator[httpx.Client]:
    session = shared_control_plane
    session.sql("CREATE DATABASE IF NOT EXISTS fuzz").collect()
    session.sql("CREATE OR REPLACE TABLE fuzz.public.t AS SELECT 1 AS a").collect()
    with httpx.Client(
        base_url=str(session._transport.base_url),
        headers={"Authorization": f"Bearer {session.token}"},
        trust_env=False,
        timeout=120,
    ) as client:
        yield client


def _sql_text(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:  # token soup
        return " ".join(rng.choice(SQL_WORDS + ODD_TEXT) for _ in range(rng.randrange(1, 40)))
    if kind == 1:  # deep nesting
        depth = rng.choice([50, 500, 3000, 20000])
        return "SELECT " + "(" * depth + "1" + ")" * depth
    if kind == 2:  # huge literal
        return "SELECT '" + "x" * rng.choice([10**5, 2 * 10**6]) + "' AS big"
    if kind == 3:  # odd unicode in names and strings
        odd = "".join(rng.choice(ODD_TEXT) for _ in range(rng.randrange(1, 8)))
        return rng.choice(
            [f'SELECT "{odd}" FROM fuzz.public.t', f"SELECT '{odd}'", f"USE SCHEMA {odd}"]
        )
    if kind == 4:  # deep function nesting and long IN lists
        if rng.random() < 0.5:
            return "SELECT " + "abs(" * 3000 + "1" + ")" * 3000
        return "SELECT 1 WHERE 1 IN (" + ",".join(["1"] * 20000) + ")"
    return rng.choice(SQL_WORDS) + rng.choice(ODD_TEXT) * rng.randrange(1, 5)


def _sql_body(rng: random.Random) -> bytes | object:
    kind = rng.randrange(5)
    if kind == 0:
        return {"sql": _sql_text(rng)}
    if kind == 1:  # wrong JSON types
        return rng.choice(
            [
                {"sql": rng.choice(JSON_VALUES)},
                rng.choice(JSON_VALUES),
                {"sql": "SELECT 1", "context": rng.choice(JSON_VALUES)},
                {"sql": "SELECT 1", "context": {"database": rng.choice(JSON_VALUES)}},
                {"sql": "SELECT 1", "context": {"role": rng.choice(JSON_VALUES)}},
            ]
        )
    if kind == 2:  # not JSON at all
        return rng.choice([b"", b"{", b"\xff\xfe", b"[" * 10000, b'{"sql": "\\ud800"}', b"null"])
    if kind == 3:  # deeply nested JSON
        return ("[" * 5000 + "]" * 5000).encode()
    return {"sql": _sql_text(rng), "context": {"database": "fuzz", "schema": "public"}}


def _send(client: httpx.Client, path: str, body: object, **kw) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"Content-Type": "application/json"}, **kw)
    return client.post(
        path,
        content=json.dumps(body).encode("utf-8", "surrogatepass"),
        headers={"Content-Type": "application/json"},
        **kw,
    )


def test_sql_endpoint_answers_bad_input_with_4xx(http) -> None:
    rng = random.Random(SEED)
    failures = []
    for _ in range(ROUNDS):
        body = _sql_body(rng)
        resp = _send(http, "/api/v1/sql", body)
        if resp.status_code >= 500:
            failures.append((repr(body)[:200], resp.status_code, resp.text[:300]))
        elif resp.status_code >= 400:
            assert resp.json().get("message"), resp.text  # a 4xx says what was wrong
    assert not failures, failures


def _table_body(rng: random.Random) -> object:
    return rng.choice(
        [
            {"records": rng.choice(JSON_VALUES)},
            {"records": [rng.choice(JSON_VALUES) for _ in range(3)]},
            {"records": [{"a": rng.choice(JSON_VALUES)}, {"a": rng.choice(JSON_VALUES)}]},
            {"records": [{"a": 1}, {"b": "x"}, {"a": [1]}]},
            {"records": []},
            {"columns": rng.choice(JSON_VALUES), "rows": [[1]]},
            {"columns": ["a", "a"], "rows": [[1, 2]]},
            {"columns": ["a"], "rows": rng.choice(JSON_VALUES)},
            {"columns": ["a", "b"], "rows": [[1], [1, 2, 3]]},
            {"columns": ["a"], "rows": [[rng.choice(JSON_VALUES)] for _ in range(3)]},
            {"columns": ["\u0000", "\ud800"], "rows": [[1, 2]]},
            {"columns": ["a"], "rows": [[10**40]]},
            {"table": rng.choice(JSON_VALUES), "records": [{"a": 1}]},
            {"records": [{"a": 1}], "context": rng.choice(JSON_VALUES)},
            {"records": [{"a": 1}], "overwrite": rng.choice(JSON_VALUES)},
            rng.choice(JSON_VALUES),
        ]
    )


def test_table_writes_answer_bad_input_with_4xx(http) -> None:
    rng = random.Random(SEED)
    failures = []
    for _ in range(ROUNDS):
        body = _table_body(rng)
        table = rng.choice(["fuzz.public.w", "", "fuzz.nope.w", '"\u202e"', "a.b.c.d", "x" * 300])
        resp = _send(http, "/api/v1/sql/tables/write", body, params={"table": table})
        if resp.status_code >= 500:
            failures.append((repr(body)[:200], table[:40], resp.status_code, resp.text[:300]))
    for raw in (b"\xff" * 100, b"ARROW1" + b"\x00" * 64, b""):  # broken Arrow streams
        resp = http.post(
            "/api/v1/sql/tables/write",
            params={"table": "fuzz.public.w"},
            content=raw,
            headers={"Content-Type": "application/vnd.apache.arrow.stream"},
        )
        if resp.status_code >= 500:
            failures.append((raw[:20], resp.status_code, resp.text[:300]))
    assert not failures, failures
