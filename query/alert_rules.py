"""Alert rules: the documents that say when a stage's KPI falls short of its target (docs/alerts.md).

A rule names a map, a stage and a metric, optionally the segments to watch, a rolling window of entry days
and a threshold (the map's own target by default). It is versioned and applied like maps and segments
(query/definitions.py). What the shape alone can check is checked here; what needs the project's maps
and segments (the map, stage, target and segments exist) is checked by :func:`check_against`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

import yarl
from pydantic import Field, field_validator

from query.maps import SLUG, SLUG_RULE, DefinitionError, JourneyMap, Segment, _Doc, _shape, slug

#: Metrics a higher value is better for (the others must stay at or below their threshold).
HIGHER_IS_BETTER = frozenset({"conversion_rate"})
#: Metrics whose default threshold is the map's target of the same name.
TARGET_METRICS = frozenset({"conversion_rate", "median_days_to_convert"})
#: Without ``recover_at``, a firing rule resolves only once the metric has come this share of the way from the
#: threshold towards the ideal (a rate of 1; 0 for the others): a stage on the edge does not flap.
DEFAULT_HYSTERESIS = Fraction(5, 100)
MAX_WEBHOOKS = 10
MAX_URL_CHARS = 2048


class Webhook(_Doc):
    """Where a rule's notifications go: ``json`` (our payload) or ``slack`` (an incoming-webhook message)."""

    url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    format: Literal["json", "slack"] = "json"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        problem = url_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class AlertRule(_Doc):
    name: str
    description: str = ""
    enabled: bool = True
    map: str
    stage: str = Field(min_length=1, max_length=255)
    #: The targets' metrics, the drop-off rate and the count of customers in progress.
    metric: Literal["conversion_rate", "median_days_to_convert", "drop_off_rate", "in_progress"]
    threshold: Annotated[float, Field(ge=0)] | None = None
    recover_at: Annotated[float, Field(ge=0)] | None = None
    #: Absent or empty: all customers. ``"*"``: all customers and every segment, each watched on its own.
    segments: Union[Literal["*"], list[str]] = Field(default_factory=list)
    window_days: Annotated[int, Field(ge=1, le=3660)] = 7
    min_decided: Annotated[int, Field(ge=1, le=1_000_000_000)] = 20
    notify: list[Webhook] = Field(default_factory=list, max_length=MAX_WEBHOOKS)

    @field_validator("name", "map")
    @classmethod
    def _slug(cls, value: str) -> str:
        return slug(value)


def url_problem(url: str) -> str | None:
    """Why a webhook URL cannot be used, or ``None``: http or https, a host, nothing a request would drop, and
    parsed alike by the standard library (shown, redacted) and by yarl (what aiohttp sends to)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
        sent = yarl.URL(url)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if "\\" in url or sent.host != parts.hostname:
        return "not a valid URL: its host is ambiguous (a backslash, or characters parsers read differently)"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.fragment:
        return "must not have a #fragment (it is never sent)"
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "must not contain spaces or control characters"
    return None


def redact(url: str) -> str:
    """The URL as logs and read keys see it: scheme, host and port only. Webhook URLs carry secrets (Slack's
    path is its token; a receiver may take ``user:password@``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def thresholds(rule: AlertRule, journey_map: JourneyMap) -> tuple[Fraction, Fraction] | None:
    """(threshold, recover_at) as exact fractions, the map's target filling in a missing threshold; ``None``
    when there is none (the map has no such target). The decimals the author wrote are taken exactly."""
    threshold = rule.threshold
    if threshold is None and rule.metric in TARGET_METRICS:
        stage = next((s for s in journey_map.stages if s.id == rule.stage), None)
        target = None if stage is None else stage.target
        threshold = None if target is None else getattr(target, rule.metric)
    if threshold is None:
        return None
    goal = Fraction(str(threshold))
    if rule.recover_at is not None:
        return goal, Fraction(str(rule.recover_at))
    if rule.metric in HIGHER_IS_BETTER:  # a share: 0.5 recovers at 0.525, 0.96 at 0.962
        return goal, goal + (1 - goal) * DEFAULT_HYSTERESIS
    return goal, goal * (1 - DEFAULT_HYSTERESIS)


def validate_alert_rule(document: Any) -> AlertRule:
    """Parse and check a rule on its own; raise :class:`DefinitionError` with every problem found."""
    rule, problems = _shape(AlertRule, document)
    if problems:
        raise DefinitionError(problems)
    assert rule is not None
    rate = rule.metric in ("conversion_rate", "drop_off_rate")
    for field in ("threshold", "recover_at"):
        value = getattr(rule, field)
        if value is None:
            continue
        if not math.isfinite(value):
            problems.append({"path": field, "reason": "must be a finite number"})
        elif rate and not 0 < value <= 1:
            problems.append({"path": field, "reason": f"{rule.metric} is a share: must be above 0 and at most 1"})
        elif rule.metric == "median_days_to_convert" and value <= 0:
            problems.append({"path": field, "reason": "days must be above 0"})
        elif rule.metric == "in_progress" and value != int(value):
            problems.append({"path": field, "reason": "in_progress counts customers: must be a whole number"})
    if rule.recover_at is not None and rule.threshold is None:
        problems.append({"path": "recover_at", "reason": "needs a threshold beside it (the map's target can change)"})
    elif rule.recover_at is not None and rule.threshold is not None:
        higher = rule.metric in HIGHER_IS_BETTER
        if (rule.recover_at < rule.threshold) if higher else (rule.recover_at > rule.threshold):
            side = "at or above" if higher else "at or below"
            problems.append({"path": "recover_at", "reason": f"must be {side} the threshold ({rule.threshold})"})
    if rule.threshold is None and rule.metric not in TARGET_METRICS:
        problems.append({"path": "threshold", "reason": f"required for {rule.metric} (maps have no target for it)"})
    if isinstance(rule.segments, list):
        for i, name in enumerate(rule.segments):
            if not SLUG.match(name):
                problems.append({"path": f"segments[{i}]", "reason": SLUG_RULE})
        if len(set(rule.segments)) != len(rule.segments):
            problems.append({"path": "segments", "reason": "names a segment twice"})
    if problems:
        raise DefinitionError(problems)
    return rule


def check_against(rule: AlertRule, maps: dict[str, JourneyMap], segments: dict[str, Segment]) -> None:
    """Check a rule against the project's latest maps and segments (raise :class:`DefinitionError`): a rule
    that could never be evaluated is refused when it is applied, not discovered silent later."""
    problems = []
    journey_map = maps.get(rule.map)
    if journey_map is None:
        known = ", ".join(sorted(maps)) or "none yet"
        problems.append({"path": "map", "reason": f"no map {rule.map!r} in this project (maps: {known})"})
    else:
        order = journey_map.ordered_stage_ids()
        if rule.stage not in order:
            problems.append(
                {
                    "path": "stage",
                    "reason": f"map {rule.map!r} has no stage {rule.stage!r} (stages: {', '.join(order)})",
                }
            )
        elif rule.stage == order[-1]:
            problems.append(
                {"path": "stage", "reason": f"{rule.stage!r} is the map's last stage: nobody converts from it"}
            )
        elif thresholds(rule, journey_map) is None:
            problems.append(
                {
                    "path": "threshold",
                    "reason": f"stage {rule.stage!r} of map {rule.map!r} has no {rule.metric} target: give a threshold",
                }
            )
    if isinstance(rule.segments, list):
        for i, name in enumerate(rule.segments):
            if SLUG.match(name) and name not in segments:
                problems.append({"path": f"segments[{i}]", "reason": f"no segment {name!r} in this project"})
    if problems:
        raise DefinitionError(problems)
