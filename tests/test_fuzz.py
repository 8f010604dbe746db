"""Fuzzing both services over real HTTP: hostile input gets a clear 4xx, never a 5xx, and nothing of it is stored.

One ``journeys up`` (tests/live.py) takes every case; its log must show no unhandled error at the end and
it must still shut down cleanly. Three layers:

* named hostile requests (10 000-deep JSON, gzip bombs, invalid UTF-8, NUL bytes, 10 000 properties,
  absurd timestamps, oversized bodies) against the collector and the query service;
* hypothesis: mutated Segment batches whose acknowledged, quarantined and refused events are counted and
  then checked against what the query service reports stored; random paths and parameters for reads;
  random map and segment documents;
* schemathesis, driven by each service's own ``/openapi.json``, positive and negative cases.

``FUZZ_EXAMPLES`` sets hypothesis' examples per property (default 60: a few hundred cases in all, about
a minute); e.g. ``FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py`` for a long run.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from live import Keys, Live, Reply, call
from support import basic

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),  # reproducible in CI; FUZZ_RANDOM=1 explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    database=None,
)
_ids = itertools.count()
CASES: dict[str, int] = {}  # cases sent per property, reported at the end of the module


def _count(name: str) -> None:
    CASES[name] = CASES.get(name, 0) + 1


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    service = Live(tmp_path_factory.mktemp("fuzz"))
    try:
        yield service
        assert service.alive()
        log = service.log()
        assert "unhandled error" not in log and "Traceback" not in log, log[-5000:]
        assert '"level":"ERROR"' not in log, [line for line in log.splitlines() if '"level":"ERROR"' in line][:5]
    finally:
        assert service.stop() == 0
        print("\nfuzz cases sent:", CASES, "total", sum(CASES.values()))


@pytest.fixture(scope="module")
def refused(live: Live) -> Keys:
    """A project that only ever receives requests that must be refused whole."""
    return live.project("refused")


@pytest.fixture(scope="module")
def mixed(live: Live) -> Keys:
    return live.project("mixed")


def _assert_clear_4xx(reply: Reply, what: object) -> None:
    assert 400 <= reply.status < 500, (what, reply.status, reply.body[:500])
    errors = reply.errors()
    assert errors and all(isinstance(e["field"], str) and e["reason"] for e in errors), (what, errors)


def _post(live: Live, path: str, body: bytes, key: str | None, headers: dict[str, str] | None = None) -> Reply:
    return call(
        live.collector,
        "POST",
        path,
        body,
        {"Content-Type": "application/json", **(basic(key) if key else {}), **(headers or {})},
    )


def _deep(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


def _event(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "fuzz-user", "event": "Fuzzed", "messageId": f"m-{next(_ids)}", **fields}


def _batch(*events: bytes) -> bytes:
    return b'{"batch":[' + b",".join(events) + b"]}"


def _with_raw_properties(event: dict[str, Any], raw: bytes) -> bytes:
    text = json.dumps({**event, "properties": "@@P@@"}).encode()
    return text.replace(b'"@@P@@"', raw)


HOSTILE_COLLECTOR: list[tuple[str, bytes, dict[str, str]]] = [
    ("empty body", b"", {}),
    ("not json", b"\x00\x01\x02 definitely not json", {}),
    ("truncated json", b'{"batch":[{"type":"track"', {}),
    ("json array, not object", b"[1,2,3]", {}),
    ("batch not a list", b'{"batch":"everything"}', {}),
    ("10 000-deep body", b"[" * 10_000 + b"]" * 10_000, {}),
    ("10 000-deep properties", _batch(_with_raw_properties(_event(), _deep(10_000))), {}),
    ("300-deep properties", _batch(_with_raw_properties(_event(), _deep(300))), {}),
    ("1000-deep properties", _batch(_with_raw_properties(_event(), _deep(1000))), {}),
    ("300-deep context", _batch(json.dumps(_event(context="@@C@@")).encode().replace(b'"@@C@@"', _deep(300))), {}),
    (
        "invalid UTF-8 in a string",
        _batch(json.dumps(_event(event="X")).encode().replace(b'"X"', b'"\xff\xfe\xfd"')),
        {},
    ),
    ("overlong UTF-8 encoding", _batch(json.dumps(_event(event="X")).encode().replace(b'"X"', b'"\xc0\xaf"')), {}),
    ("lone surrogate escape", _batch(json.dumps(_event(event="X")).encode().replace(b'"X"', b'"\\ud800"')), {}),
    ("raw NUL byte in a string", _batch(json.dumps(_event(event="X")).encode().replace(b'"X"', b'"a\x00b"')), {}),
    ("NUL byte outside strings", b'{"batch":[\x00]}', {}),
    ("10 000 properties", _batch(json.dumps(_event(properties={f"p{i}": i for i in range(10_000)})).encode()), {}),
    ("absurd timestamp: year 1", _batch(json.dumps(_event(timestamp="0001-01-01T00:00:00Z")).encode()), {}),
    ("absurd timestamp: year 9999", _batch(json.dumps(_event(timestamp="9999-12-31T23:59:59Z")).encode()), {}),
    ("absurd timestamp: year 10000", _batch(json.dumps(_event(timestamp="10000-01-01T00:00:00Z")).encode()), {}),
    ("absurd timestamp: not a date", _batch(json.dumps(_event(timestamp="yesterday")).encode()), {}),
    ("absurd timestamp: a number", _batch(json.dumps(_event(timestamp=1e300)).encode()), {}),
    ("absurd sentAt on the batch", b'{"sentAt":"9999-99-99","batch":[' + json.dumps(_event()).encode() + b"]}", {}),
    ("absurd sentAt: year 1", _batch(json.dumps(_event(sentAt="0001-01-01T00:00:00+14:00")).encode()), {}),
    (
        "absurd originalTimestamp",
        _batch(json.dumps(_event(originalTimestamp="9999-12-31T23:59:59.999-14:00")).encode()),
        {},
    ),
    ("huge integer id", _batch(json.dumps(_event(userId=10**40)).encode()), {}),
    ("gzip bomb", gzip.compress(b'{"batch":[' + b" " * 60_000_000 + b"]}"), {"Content-Encoding": "gzip"}),
    ("deflate bomb", zlib.compress(b" " * 60_000_000), {"Content-Encoding": "deflate"}),
    ("gzip of garbage", b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}),
    ("gzip, truncated", gzip.compress(_batch(json.dumps(_event()).encode()))[:-8], {"Content-Encoding": "gzip"}),
    ("unknown encoding", b"{}", {"Content-Encoding": "zstd"}),
    ("oversized body", b'{"batch":[' + b" " * 2_000_000 + b"]}", {}),
    ("oversized event", _batch(json.dumps(_event(properties={"pad": "x" * 100_000})).encode()), {}),
    ("wrong types everywhere", _batch(b'{"type":7,"userId":[],"event":{},"messageId":null}'), {}),
    ("event not an object", _batch(b'"track"', b"null", b"[]"), {}),
]


@pytest.mark.parametrize("name,body,headers", HOSTILE_COLLECTOR, ids=[c[0] for c in HOSTILE_COLLECTOR])
def test_hostile_requests_get_a_clear_4xx(
    live: Live, refused: Keys, name: str, body: bytes, headers: dict[str, str]
) -> None:
    _count("collector named")
    for path in ("/v1/batch", "/v1/track"):
        reply = _post(live, path, body, refused.write, headers)
        if path == "/v1/track" and reply.status == 200:
            # A batch document is itself a valid track body only when it has userId and event: it has not.
            raise AssertionError((name, reply.body))
        _assert_clear_4xx(reply, name)


def test_nothing_of_refused_requests_was_stored(live: Live, refused: Keys) -> None:
    """Runs after the named cases (file order): the project that only got refusals holds nothing."""
    assert live.alive()
    _wait_settled(live)
    stats = live.stats(refused)
    assert (stats["events"], stats["quarantined"]) == (0, 0), stats


def _wait_settled(live: Live) -> None:
    """Everything acknowledged so far is in ClickHouse: the collector's spool is empty."""
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = call(live.collector, "GET", "/readyz").json()
        if ready["checks"]["spool"]["pending_bytes"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"spool never drained: {ready}")


# --------------------------------------------------------------------------------------------------------
# hypothesis: mutated batches; every event ends up accepted, quarantined or refused with its request
# --------------------------------------------------------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\x00b",
            "'; DROP TABLE events; --",
            "{project_id:String}",
            "\\",
            "\u202e",
            "x" * 300,
            "😀" * 100,
            "\ufeff",
        ]
    ),
)
timestamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59.999-14:00",
            "2026-02-30T00:00:00Z",
            "2026-01-01T25:00:00Z",
            "",
            "Z",
            "1e10",
            "2026-01-01T00:00:00+99:00",
        ]
    ),
    hostile_text,
)
# Mutations that may or may not make an event invalid: the collector decides, the test only counts.
FIELDS = [
    "type",
    "userId",
    "anonymousId",
    "event",
    "timestamp",
    "sentAt",
    "originalTimestamp",
    "properties",
    "context",
    "traits",
    "channel",
    "touchpoint",
    "sentiment",
    "groupId",
    "previousId",
    "name",
    "integrations",
]


@st.composite
def fuzzed_event(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """An event (without its messageId: the test numbers each one it sends) and how deep to nest its properties."""
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(["track", "identify", "page", "screen", "group", "alias"])),
        "userId": draw(st.one_of(hostile_text, st.integers())),
        "event": draw(hostile_text),
        "groupId": "g",
        "previousId": "p",
    }
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        event[field] = draw(st.one_of(json_values, hostile_text, timestamps))
    return event, draw(st.sampled_from([0, 0, 0, 5, 200, 260, 600, 1100]))


Request = tuple[list[tuple[dict[str, Any], int]], str, int, int, Any]
fuzzed_request = st.tuples(
    st.lists(fuzzed_event(), min_size=1, max_size=6),
    st.sampled_from(["plain", "plain", "gzip", "truncate", "flip", "sentAt"]),
    st.integers(0, 10**6),  # where to truncate or flip, modulo the body's length
    st.integers(0, 255),  # the flipped byte
    timestamps,  # the batch's sentAt
)


def _build(request: Request) -> tuple[bytes, dict[str, str]]:
    events, kind, at, byte, sent_at = request
    texts = []
    for event, depth in events:
        text = json.dumps({**event, "messageId": f"fz-{next(_ids)}"}).encode()  # unique: stored ones count once
        if depth:
            text = text[:-1] + b', "properties": ' + _deep(depth) + b"}"
        texts.append(text)
    body = _batch(*texts)
    if kind == "truncate":
        body = body[: at % len(body)]
    elif kind == "flip":
        body = body[: at % len(body)] + bytes([byte]) + body[at % len(body) + 1 :]
    elif kind == "sentAt":
        body = b'{"sentAt":' + json.dumps(sent_at).encode() + b"," + body[1:]
    elif kind == "gzip":
        return gzip.compress(body), {"Content-Encoding": "gzip"}
    return body, {}


class Ledger:
    accepted = 0
    quarantined = 0
    refused = 0


LEDGER = Ledger()


@FUZZ
@given(request=fuzzed_request)
def test_fuzzed_batches_never_5xx_and_every_event_is_accounted_for(live: Live, mixed: Keys, request: Request) -> None:
    _count("collector batches (hypothesis)")
    body, headers = _build(request)
    reply = _post(live, "/v1/batch", body, mixed.write, headers)
    if reply.status == 200:
        result = reply.json()
        LEDGER.accepted += result["accepted"]
        LEDGER.quarantined += len(result["quarantined"])
        assert result["accepted"] >= 1
    else:
        _assert_clear_4xx(reply, body[:300])
        LEDGER.refused += 1


def test_stored_is_exactly_what_was_acknowledged(live: Live, mixed: Keys) -> None:
    """Runs after the property above: accepted events are stored once, quarantined ones are in quarantine,
    refused requests left nothing."""
    assert LEDGER.accepted + LEDGER.refused > 0
    live.wait_stats(mixed, LEDGER.accepted, LEDGER.quarantined)


@FUZZ
@given(document=json_values, route=st.sampled_from(["track", "identify", "page", "screen", "group", "alias"]))
def test_fuzzed_single_events_never_5xx(live: Live, refused: Keys, document: Any, route: str) -> None:
    _count("collector single events (hypothesis)")
    if isinstance(document, dict):
        document.pop("userId", None), document.pop("anonymousId", None)  # stays invalid: nothing is stored
    reply = _post(live, f"/v1/{route}", json.dumps(document).encode(), refused.write)
    _assert_clear_4xx(reply, document)


@FUZZ
@given(
    header=st.one_of(
        st.text(max_size=60).map(lambda t: t.encode().decode("latin-1")),
        st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    ),
    scheme=st.sampled_from(["Basic ", "Bearer ", "", "basic  ", "Digest "]),
)
def test_fuzzed_authorization_headers_are_401_never_5xx(live: Live, refused: Keys, header: str, scheme: str) -> None:
    _count("auth headers (hypothesis)")
    value = (scheme + header).replace("\r", "").replace("\n", "")
    body = json.dumps(_event()).encode()
    reply = _post(live, "/v1/track", body, None, {"Authorization": value})
    assert reply.status in (400, 401), (value, reply.status, reply.body)
    reply = call(live.query, "GET", "/v1/stats", headers={"Authorization": value})
    assert reply.status in (400, 401), (value, reply.status, reply.body)


# --------------------------------------------------------------------------------------------------------
# the query service
# --------------------------------------------------------------------------------------------------------


def _encode_segment(raw: str | bytes) -> str:
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    return quote(data, safe="")


HOSTILE_SEGMENTS: list[bytes | str] = [
    "\x00",
    "a\x00b",
    b"\xff\xfe",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    "x" * 5000,
    "..",
    ".",
    "%",
    "%00",
    "'",
    "\\",
    "{id:String}",
    "😀",
    "\u202e",
    " ",
]


@pytest.mark.parametrize("segment", HOSTILE_SEGMENTS, ids=[repr(s)[:20] for s in HOSTILE_SEGMENTS])
def test_hostile_path_segments_on_every_read(live: Live, mixed: Keys, segment: str | bytes) -> None:
    encoded = _encode_segment(segment)
    for template in (
        "/v1/customers/{}/events",
        "/v1/customers/{}/journey?map=m",
        "/v1/customers/{}",
        "/v1/maps/{}",
        "/v1/maps/{}/versions",
        "/v1/segments/{}",
        "/v1/segments/{}/versions",
    ):
        _count("query named paths")
        reply = call(live.query, "GET", template.format(encoded), headers=basic(mixed.read))
        assert reply.status < 500, (template, segment, reply.body[:300])
        if reply.status >= 400:
            _assert_clear_4xx(reply, (template, segment))
    for template in ("/v1/maps/{}", "/v1/segments/{}"):
        reply = call(
            live.query,
            "PUT",
            template.format(encoded),
            b'{"stages": []}',
            {**basic(mixed.admin), "Content-Type": "application/json"},
        )
        _assert_clear_4xx(reply, (template, segment))
    reply = call(live.query, "DELETE", f"/v1/customers/{encoded}", headers=basic(mixed.admin))
    assert reply.status < 500, (segment, reply.body[:300])


@FUZZ
@given(
    segment=st.one_of(st.text(min_size=1, max_size=300), st.binary(min_size=1, max_size=40)),
    param=st.sampled_from(["limit", "map", "version"]),
    value=st.one_of(st.text(max_size=30), st.integers().map(str), st.sampled_from(["", "1e3", "-0", "0x10", "１"])),
    template=st.sampled_from(
        [
            "/v1/customers/{}/events",
            "/v1/customers/{}/journey",
            "/v1/customers/{}",
            "/v1/maps/{}",
            "/v1/segments/{}",
            "/v1/maps/{}/versions",
            "/v1/stats#{}",
        ]
    ),
)
def test_fuzzed_reads_never_5xx(
    live: Live, mixed: Keys, segment: str | bytes, param: str, value: str, template: str
) -> None:
    _count("query reads (hypothesis)")
    path = (
        template.split("#")[0].format(_encode_segment(segment))
        + f"?{param}={quote(value.encode('utf-8', 'surrogatepass'), safe='')}"
    )
    reply = call(live.query, "GET", path, headers=basic(mixed.read))
    assert reply.status < 500, (path, reply.body[:300])
    if reply.status >= 400:
        _assert_clear_4xx(reply, path)


HOSTILE_VALUES = [
    "\u00b2",
    "9" * 5000,
    "\x00",
    "-1",
    "0",
    "1e3",
    "'",
    "\\",
    "{x:String}",
    "",
    "\u0967\u0968",
    " 1",
    "+1",
    "0x1",
    "2026-13-01",
    "2026-01-01T00:00:00",
    "9999-12-31",
    "0001-01-01",
    "*",
    "a b",
    "\ud800",
]
PARAMETER_PATHS = [
    "/v1/customers/c/events?limit={}",
    "/v1/customers/c/journey?map={}",
    "/v1/customers/c/journey?map=m&version={}",
    "/v1/maps/m?version={}",
    "/v1/segments/s?version={}",
    *(
        f"{route}?map=m&{name}={{}}"
        for route in ("/v1/kpis", "/v1/kpis/daily")
        for name in ("version", "segment", "from", "to", "format")
    ),
    "/v1/kpis?map={}",
    "/v1/kpis/daily?map={}",
]


@pytest.fixture(scope="module")
def with_a_map(live: Live, mixed: Keys) -> Keys:
    document = b'{"name": "m", "stages": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}]}'
    reply = call(live.query, "PUT", "/v1/maps/m", document, {**basic(mixed.admin), "Content-Type": "application/json"})
    assert reply.status in (200, 201), reply.body
    return mixed


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=[repr(v)[:16] for v in HOSTILE_VALUES])
def test_hostile_query_parameters_on_every_read(live: Live, with_a_map: Keys, value: str) -> None:
    for template in PARAMETER_PATHS:
        _count("query named parameters")
        path = template.format(_encode_segment(value))
        reply = call(live.query, "GET", path, headers=basic(with_a_map.read))
        assert reply.status < 500 or (reply.status == 503 and "being computed" in reply.body.decode()), (
            path,
            reply.body[:300],
        )
        if reply.status >= 400:
            _assert_clear_4xx(reply, path) if reply.status < 500 else None


HOSTILE_DOCUMENTS: list[tuple[str, bytes, str]] = [
    ("10 000-deep JSON", b"[" * 10_000 + b"]" * 10_000, "application/json"),
    ("10 000-deep YAML flow", b"[" * 10_000 + b"]" * 10_000, "application/yaml"),
    ("10 000-deep YAML block", "".join("  " * i + "- \n" for i in range(3000)).encode(), "application/yaml"),
    (
        "300-deep JSON in a condition",
        b'{"name":"m","stages":[{"id":"a","name":"A"}],"touchpoints":[{"id":"t","stage":"a",'
        b'"match":{"where":[{"property":"p","op":"in","value":[' + _deep(300) + b"]}]}}]}",
        "application/json",
    ),
    (
        "YAML alias bomb",
        b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
        "application/yaml",
    ),
    ("YAML python tag", b"!!python/object/apply:os.system ['true']", "application/yaml"),
    ("invalid UTF-8", b'{"name":"\xff"}', "application/json"),
    ("NUL in a name", b'{"name":"a\\u0000b","stages":[{"id":"a","name":"A"}]}', "application/json"),
    ("NUL in a description", b'{"stages":[{"id":"a","name":"A","description":"x\\u0000y"}]}', "application/json"),
    ("a list, not a document", b"[1,2]", "application/json"),
    ("a number", b"7", "application/json"),
    ("empty", b"", "application/json"),
    ("over 1 MiB", b'{"description":"' + b"x" * (1024 * 1024 + 10) + b'"}', "application/json"),
]


@pytest.mark.parametrize("name,body,content_type", HOSTILE_DOCUMENTS, ids=[d[0] for d in HOSTILE_DOCUMENTS])
def test_hostile_definition_documents_get_a_clear_4xx(
    live: Live, mixed: Keys, name: str, body: bytes, content_type: str
) -> None:
    for kind in ("maps", "segments"):
        _count("definition documents named")
        reply = call(live.query, "PUT", f"/v1/{kind}/fz", body, {**basic(mixed.admin), "Content-Type": content_type})
        _assert_clear_4xx(reply, name)


@FUZZ
@given(
    document=json_values,
    kind=st.sampled_from(["maps", "segments"]),
    as_yaml=st.booleans(),
    name=st.text(min_size=1, max_size=70),
)
def test_fuzzed_definition_documents_never_5xx(
    live: Live, mixed: Keys, document: Any, kind: str, as_yaml: bool, name: str
) -> None:
    _count("definition documents (hypothesis)")
    import yaml

    body = yaml.safe_dump(document).encode() if as_yaml else json.dumps(document).encode()
    content_type = "application/yaml" if as_yaml else "application/json"
    reply = call(
        live.query,
        "PUT",
        f"/v1/{kind}/{_encode_segment(name)}",
        body,
        {**basic(mixed.admin), "Content-Type": content_type},
    )
    assert reply.status < 500, (document, reply.body[:300])
    if reply.status >= 400:
        _assert_clear_4xx(reply, document)


# --------------------------------------------------------------------------------------------------------
# schemathesis, from each service's own /openapi.json
# --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("service", ["collector", "query"])
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis(live: Live, mixed: Keys, service: str, mode: str) -> None:
    """Every operation of the service's own document, schema-valid (positive) and schema-violating
    (negative) requests: never a 5xx, and every 4xx in our error shape."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error

    base = live.collector if service == "collector" else live.query
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    # The collector gets a write key, the query service an admin key (it may read and change everything).
    key = mixed.write if service == "collector" else mixed.admin
    per_operation = settings(FUZZ, max_examples=max(5, EXAMPLES // 6))
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:
        label = f"schemathesis {service} {mode}"

        @per_operation
        @given(case=operation.as_strategy(schemathesis.GenerationMode(mode), headers=basic(key)))
        def run(case: Any) -> None:
            _count(label)
            response = case.call(base_url=base, timeout=60)
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except Exception as exc:  # collect every operation's failure, not just the first
                failures.append(f"{case.method} {case.path}: {response.status_code} {exc}"[:500])
                raise
            if response.status_code >= 400 and case.path != "/readyz":
                if "x-request-id" not in {name.lower() for name in response.headers}:
                    # Refused by aiohttp's HTTP parser before any handler ran (a request line or header
                    # over 8 KiB): its own plain-text 400, the one answer that cannot carry our shape.
                    assert response.status_code == 400 and "bytes when reading" in response.text, response.text[:300]
                    return
                errors = response.json().get("errors")
                assert errors and all("field" in e and "reason" in e for e in errors), response.text[:300]

        try:
            run()
        except Unsatisfiable:
            assert mode == "negative", operation.label  # nothing to violate: no parameters, no body
    assert not failures


async def test_a_too_deep_event_in_a_good_batch_is_quarantined_with_its_first_levels(  # type: ignore[no-untyped-def]
    http, collector, stores, project
) -> None:
    """The fix for the 500 the fuzzer found: an event nested past what orjson writes is quarantined, and its
    raw JSON is kept down to 64 levels with a marker where it was cut."""
    from support import wait_drained

    good = json.dumps(_event(messageId="deep-ok")).encode()
    body = _batch(good, _with_raw_properties(_event(messageId="deep-bad"), _deep(600)))
    async with http.post(collector.make_url("/v1/batch"), data=body, headers=basic(project.write_key)) as resp:
        assert resp.status == 200
        result = await resp.json()
    assert result["accepted"] == 1
    assert result["quarantined"] == [
        {"index": 1, "errors": [{"field": "(event)", "reason": "nested deeper than 254 levels"}]}
    ]
    await wait_drained(collector)
    _, rows = await stores.clickhouse.query(
        "SELECT message_id, raw FROM quarantine WHERE project_id = {p:String}", {"p": project.id}
    )
    [(message_id, raw)] = rows
    node, levels = json.loads(raw), 0
    assert message_id == "deep-bad" and node["messageId"] == "deep-bad"
    node = node["properties"]
    while isinstance(node, dict):
        node, levels = node["a"], levels + 1
    assert node == "(nested too deep: cut here)" and levels == 63  # 64 levels kept, counting the event itself
