"""``journeys demo``: a demo project whose data arrived the way real data does, so every view has something
true to show.

Several hundred customers' journeys over a few months, generated from a seed and sent to the running
service over HTTP through the same doors users use:

* **the Python SDK** (``journeys_sdk.Client`` with the project's write key): ad clicks and social posts
  (from the ad and social platforms' server-side integrations), app installs, screens and orders, online
  orders, in-store visits and live till sales, call-centre calls with their sentiment, reviews, referrals,
  past email campaigns' opens and clicks (as an email service's webhook reports them), and identify/alias
  calls from the app and the CRM;
* **the browser tracker's requests** (what ``collector/static/tracker.js`` sends to ``/v1/batch``: a public
  key in the body, an ``Origin`` the project allows, anonymous ids, page views with URL, path, referrer and
  UTM in ``context.page``/``context.campaign`` and ``properties``, ``track`` and ``identify`` calls);
* **signed email links** (``GET /v1/email/open|click/{token}``, tokens signed with the project's email key as
  ``journeys email link`` signs them) for the campaign going out now;
* **a store CSV import** (``POST /v1/import`` through :mod:`cli.importer`, as ``journeys import`` does):
  the till export from before the point-of-sale integration went live.

Journeys are non-linear on purpose (repeats, regressions, skips), visitors are anonymous until they sign up
or log in (identify links, a second device, CRM aliases), and the map's targets are set so some stages meet
them and others miss: the dashboard shows a bottleneck, not a row of green.

**Re-running is safe.** Every event's ``messageId`` is derived from the seed and the customer, and event
times are placed relative to the project's creation time, so a second run sends the very same events, which
every read counts once. The campaign going out "now" goes through the real email routes, which give each
fetch a new id and the current time; a re-run therefore sends only the opens and clicks the project does not
have yet. Keys are stored hashed, so each run makes a new write, read and public key to print.

PostgreSQL is used directly, like the other management commands (project, keys, origin, email key, map,
segments: it can be shared with a running ``journeys up``); everything else is HTTP to the running service.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import math
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

from cli.commands import Commands
from cli.context import open_postgres
from journeys.config import Settings
from journeys.errors import JourneysError

DEFAULT_PROJECT = "demo"
DEFAULT_CUSTOMERS = 600
DEFAULT_DAYS = 120
DEFAULT_SEED = 1
MAP_NAME = "five-stage"
#: The demo shop's web origin: the public key sends from it (``journeys project origins``).
SHOP = "https://shop.demo.example"
LIVE_CAMPAIGN = "new-season"
#: Fixed for ever: changing it would give every demo event a new id and count re-runs twice.
_NAMESPACE = uuid.UUID("0b6f3a52-58c4-4c57-9d1e-2f7c1a4e8d30")
_DAY = 86_400_000
_HOUR = 3_600_000
_MINUTE = 60_000
#: What one tracker request may carry (tracker.js MAX_REQUEST_BYTES: what a beacon or keepalive fetch takes).
_TRACKER_REQUEST_BYTES = 60_000
_TRACKER_VERSION = "1.0.0"

# -- the demo's map and segments -------------------------------------------------------------------------

#: Conversion windows and targets per stage of the five-stage template. The windows are shorter than the
#: template's so that, within a few months of data and the dashboard's default 30-day window, many
#: outcomes are decided (a customer counts as dropped only once their window has closed: docs/kpis.md).
#: The targets sit well clear of what the generator produces, in the whole period and in the last 30 days:
#: awareness and purchase meet them, consideration and retention fall short (retention furthest: the
#: bottleneck).
DEMO_STAGES: dict[str, dict[str, Any]] = {
    "awareness": {"conversion_window_days": 7, "target": {"conversion_rate": 0.4, "median_days_to_convert": 5}},
    "consideration": {"conversion_window_days": 14, "target": {"conversion_rate": 0.75, "median_days_to_convert": 7}},
    "purchase": {"conversion_window_days": 30, "target": {"conversion_rate": 0.3, "median_days_to_convert": 30}},
    "retention": {"conversion_window_days": 21, "target": {"conversion_rate": 0.6, "median_days_to_convert": 7}},
}

DEMO_SEGMENTS: list[dict[str, Any]] = [
    {
        "name": "loyalty-members",
        "description": "Silver and gold loyalty-card holders (identify trait).",
        "match": "all",
        "rules": [{"field": "traits.loyalty_tier", "op": "in", "value": ["silver", "gold"]}],
    },
    {
        "name": "store-first",
        "description": "Met the brand in a store first.",
        "match": "all",
        "rules": [{"field": "first_channel", "op": "equals", "value": "store"}],
    },
    {
        "name": "paid-acquisition",
        "description": "First touch was a paid ad (search or social).",
        "match": "all",
        "rules": [{"field": "first_utm_medium", "op": "in", "value": ["cpc", "paid_social"]}],
    },
]


def demo_map() -> dict[str, Any]:
    """The five-stage template with the demo's windows and targets.

    One change of rule order: in the template, ``repeat-order`` (retention: an order with
    ``order_number >= 2``) comes after ``order-online`` and ``store-purchase`` (purchase), and the first
    matching rule wins, so a repeat order on the web, in the app or in a store would count as a purchase
    again and retention could only be reached by a support call. The demo puts ``repeat-order`` first."""
    import yaml

    from cli.definitions import template

    document = yaml.safe_load(template(MAP_NAME))
    for stage in document["stages"]:
        stage.update(DEMO_STAGES.get(stage["id"], {}))
    rules = document["touchpoints"]
    ids = [rule["id"] for rule in rules]
    if "repeat-order" in ids:
        repeat = rules.pop(ids.index("repeat-order"))
        rules.insert(next((i for i, rule in enumerate(rules) if rule["stage"] == "purchase"), len(rules)), repeat)
    document["description"] = (
        "Awareness → Consideration → Purchase → Retention → Advocacy (journeys demo: the five-stage template "
        "with demo targets, repeat orders counted as retention)"
    )
    return document


# -- the data set ----------------------------------------------------------------------------------------


@dataclass
class LiveEmail:
    """One fetch of a signed email URL for the campaign going out now."""

    kind: str  # "open" | "click"
    user_id: str
    user_agent: str
    url: str | None = None
    props: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoData:
    """Everything one run sends, by the door it goes through; the same for the same seed, size and anchor."""

    seed: int
    customers: int
    days: int
    anchor_ms: int
    sdk: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (Client method, keyword arguments)
    tracker: list[dict[str, Any]] = field(default_factory=list)  # events as tracker.js builds them
    store_rows: list[dict[str, Any]] = field(default_factory=list)  # the till export's rows
    live_emails: list[LiveEmail] = field(default_factory=list)
    identified: int = 0
    #: Each person's ids (user id, anonymous ids, CRM id) as they were used: the customers reads should find.
    people: dict[str, list[str]] = field(default_factory=dict)
    sample_customer: str = ""
    channels: set[str] = field(default_factory=set)

    @property
    def deterministic_events(self) -> int:
        """Events whose ids come from the seed (every door but the live email links)."""
        return len(self.sdk) + len(self.tracker) + len(self.store_rows)

    @property
    def total_events(self) -> int:
        """Unique events in the project after a complete run."""
        return self.deterministic_events + len(self.live_emails)

    @property
    def csv_cutoff_ms(self) -> int:
        """Store sales before this are in the till export (CSV); later ones come live through the SDK."""
        return self.anchor_ms - (self.days * _DAY) // 2


def iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms // 1000, timezone.utc)
        .replace(microsecond=(ms % 1000) * 1000)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


_COUNTRIES = [  # country, locale, time zone, weight
    ("GB", "en-GB", "Europe/London", 30),
    ("DE", "de-DE", "Europe/Berlin", 25),
    ("FR", "fr-FR", "Europe/Paris", 15),
    ("NL", "nl-NL", "Europe/Amsterdam", 10),
    ("US", "en-US", "America/New_York", 20),
]
_DESKTOP = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        1920,
        1080,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        1440,
        900,
    ),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", 2560, 1440),
]
_MOBILE = [
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Mobile/15E148 Safari/604.1",
        390,
        844,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
        412,
        915,
    ),
]
_MAIL_CLIENTS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
]
#: Apple Mail Privacy Protection fetches every image as mail arrives: the collector flags it (properties.bot).
_APPLE_MPP = "Mozilla/5.0"
_PRODUCTS = [  # sku, name, category, price
    ("sku-1001", "Merino Crew Jumper", "knitwear", 89.0),
    ("sku-1002", "Linen Overshirt", "shirts", 69.0),
    ("sku-1003", "Selvedge Jeans", "denim", 119.0),
    ("sku-1004", "Waxed Field Jacket", "outerwear", 229.0),
    ("sku-1005", "Canvas Tote", "accessories", 35.0),
    ("sku-1006", "Leather Derby Shoes", "footwear", 159.0),
    ("sku-1007", "Organic Cotton Tee", "basics", 29.0),
    ("sku-1008", "Wool Beanie", "accessories", 25.0),
]
_STORES = [
    ("s-001", "London Soho"),
    ("s-002", "Manchester"),
    ("s-003", "Berlin Mitte"),
    ("s-004", "Paris Marais"),
    ("s-005", "Amsterdam"),
    ("s-006", "New York SoHo"),
]
_SEARCH = ["https://www.google.com/", "https://www.bing.com/", "https://duckduckgo.com/"]
_NETWORKS = ["instagram", "tiktok", "facebook", "pinterest"]
_AD_CAMPAIGNS = ["spring-sale", "new-arrivals", "brand-search"]


class _Stop(Exception):
    """The customer's journey has reached the present: nothing later happened yet."""


@dataclass
class _Device:
    anonymous_id: str
    user_agent: str
    width: int
    height: int
    locale: str
    tz: str
    user_id: str | None = None  # set by an identify on this device, sent with every later event
    last_url: str = ""


class _Person:
    """One customer (or visitor who never became one) and the journey they take."""

    def __init__(self, gen: "_Generator", index: int):
        self.gen = gen
        self.data = gen.data
        self.rng = random.Random(f"journeys-demo/{gen.data.seed}/{index}")
        self.uid = f"c-{index + 1:05d}"
        self.n = 0
        country = self.rng.choices(_COUNTRIES, weights=[c[3] for c in _COUNTRIES])[0]
        self.country, self.locale, self.tz = country[0], country[1], country[2]
        self.tier = self.rng.choices(["none", "silver", "gold"], weights=[55, 30, 15])[0]
        self.email_opt_in = self.rng.random() < 0.8
        self.identified_at: int | None = None
        self.orders = 0
        self.complained = False
        self.channels: set[str] = set()
        self.ids: set[str] = set()
        self.stages: list[str] = []
        self.nonlinear = 0  # regressions and skips taken
        self.devices: list[_Device] = []
        self.app_device: str | None = None
        self.crm_id: str | None = None
        self.end = gen.end_ms
        days = gen.data.days
        # Journeys start throughout the period, a few more of them recently (a growing shop).
        self.t = self.end - int(days * _DAY * (self.rng.random() ** 1.15)) + self.rng.randrange(0, _HOUR)
        self.t = min(self.t, self.end - 2 * _HOUR)

    # -- time and ids ---------------------------------------------------------------------------------

    def mid(self) -> str:
        self.n += 1
        return str(uuid.uuid5(_NAMESPACE, f"{self.data.seed}/{self.uid}/{self.n}"))

    def later(self, minimum_ms: int, median_ms: float, spread: float = 0.8) -> int:
        """Move the clock on by a log-normal wait; stop the journey at the present."""
        self.t += minimum_ms + int(median_ms * math.exp(self.rng.gauss(0.0, spread)))
        if self.t > self.end:
            raise _Stop
        return self.t

    def soon(self, low_s: int = 20, high_s: int = 240) -> int:
        """A few seconds to minutes on (the next page of a visit)."""
        self.t += self.rng.randint(low_s, high_s) * 1000
        if self.t > self.end:
            raise _Stop
        return self.t

    def days(self, median: float, spread: float = 0.8) -> int:
        return self.later(10 * _MINUTE, median * _DAY, spread)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    # -- doors ----------------------------------------------------------------------------------------

    def sdk(self, method: str, via: str | None, **kwargs: Any) -> None:
        """A call on the SDK's Client; ``via`` is the channel it records (None: an identify or alias)."""
        kwargs.setdefault("timestamp", iso(self.t))
        kwargs["message_id"] = self.mid()
        self.data.sdk.append((method, kwargs))
        if via:
            self.channels.add(via)
        for key in ("user_id", "anonymous_id", "previous_id"):
            if kwargs.get(key):
                self.ids.add(kwargs[key])

    def device(self, mobile: bool) -> _Device:
        ua, width, height = self.rng.choice(_MOBILE if mobile else _DESKTOP)
        dev = _Device(
            str(uuid.uuid5(_NAMESPACE, f"{self.data.seed}/{self.uid}/device/{len(self.devices)}")),
            ua,
            width,
            height,
            self.locale,
            self.tz,
        )
        self.devices.append(dev)
        return dev

    @property
    def web(self) -> _Device:
        return self.devices[0] if self.devices else self.device(self.chance(0.45))

    def tracker(self, dev: _Device, kind: str, url: str, title: str, **fields: Any) -> None:
        """An event exactly as tracker.js builds it on ``url`` (without the batch's sentAt)."""
        parts = urlsplit(url)
        page = {
            "url": url,
            "path": parts.path or "/",
            "search": f"?{parts.query}" if parts.query else "",
            "title": title,
            "referrer": fields.pop("referrer", dev.last_url),
        }
        context: dict[str, Any] = {
            "page": page,
            "library": {"name": "journeys.js", "version": _TRACKER_VERSION},
            "userAgent": dev.user_agent,
            "locale": dev.locale,
            "screen": {"width": dev.width, "height": dev.height},
        }
        utm = {
            {
                "utm_source": "source",
                "utm_medium": "medium",
                "utm_campaign": "name",
                "utm_term": "term",
                "utm_content": "content",
            }[k]: v
            for k, v in parse_qsl(parts.query)
            if k in ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
        }
        if utm:
            context["campaign"] = utm
        context["timezone"] = dev.tz
        event: dict[str, Any] = {"type": kind}
        if kind == "page":
            event["properties"] = {**page, **fields.pop("properties", {})}
        elif kind == "track":
            event["event"] = fields.pop("event")
            event["properties"] = fields.pop("properties", {})
        else:  # identify
            event["traits"] = fields.pop("traits", {})
        event["messageId"] = self.mid()
        event["anonymousId"] = dev.anonymous_id
        if dev.user_id:
            event["userId"] = dev.user_id
        event["channel"] = "web"
        event["timestamp"] = iso(self.t)
        event["context"] = context
        self.data.tracker.append(event)
        self.channels.add("web")
        self.ids.add(dev.anonymous_id)
        if kind == "page":
            dev.last_url = url
            if dev.user_id is None and self.identified_at is not None and self.chance(0.6):
                # A customer known elsewhere (a store, the CRM, the app) browses anonymously until they log in.
                self.soon(20, 120)
                self.identify_web(dev, "login")

    # -- what people do -------------------------------------------------------------------------------

    def traits(self) -> dict[str, Any]:
        return {"loyalty_tier": self.tier, "country": self.country, "email_opt_in": self.email_opt_in}

    def visit(
        self, dev: _Device, paths: list[tuple[str, str]], landing_query: str = "", referrer: str | None = None
    ) -> None:
        """Page views of one visit: the landing page (with its campaign tags), then the rest a little apart."""
        for i, (path, title) in enumerate(paths):
            if i:
                self.soon()
            url = f"{SHOP}{path}" + (f"?{landing_query}" if landing_query and i == 0 else "")
            extra = {"referrer": referrer if referrer is not None else ""} if i == 0 else {}
            self.tracker(dev, "page", url, f"{title} — Demo Shop", **extra)

    def identify_web(self, dev: _Device, why: str) -> None:
        dev.user_id = self.uid
        self.tracker(
            dev,
            "identify",
            dev.last_url or f"{SHOP}/account",
            "Account — Demo Shop",
            traits={**self.traits(), "signup_source": why},
        )
        self.identified_at = self.identified_at or self.t

    def product(self) -> tuple[str, str, str, float]:
        return self.rng.choice(_PRODUCTS)

    def view_product(self) -> None:
        sku, name, category, price = self.product()
        if self.app_device and self.chance(0.5):
            self.sdk(
                "screen",
                "app",
                user_id=self.uid_if_known(),
                anonymous_id=self.app_device,
                name="Product",
                properties={"sku": sku},
                context=self.app_context(),
            )
            self.soon(5, 60)
            self.sdk(
                "track",
                "app",
                user_id=self.uid_if_known(),
                anonymous_id=self.app_device,
                event="Product Viewed",
                properties={"channel": "app", "sku": sku, "name": name, "category": category, "price": price},
                context=self.app_context(),
            )
            return
        dev = self.web
        self.visit(dev, [(f"/products/{sku}", name)], referrer=dev.last_url)
        self.soon(5, 40)
        self.tracker(
            dev,
            "track",
            f"{SHOP}/products/{sku}",
            f"{name} — Demo Shop",
            event="Product Viewed",
            properties={"sku": sku, "name": name, "category": category, "price": price, "currency": "EUR"},
        )

    def uid_if_known(self) -> str | None:
        return self.uid if self.identified_at is not None else None

    def app_context(self) -> dict[str, Any]:
        return {
            "app": {"name": "Demo Shop", "version": "4.2.0"},
            "device": {"type": "ios" if self.chance(0.6) else "android"},
            "locale": self.locale,
            "timezone": self.tz,
        }

    def store_visit(self) -> None:
        store, city = self.rng.choice(_STORES)
        self.sdk(
            "track",
            "store",
            user_id=self.uid,
            event="Store Visit",
            properties={"channel": "store", "store": store, "city": city, "source": "loyalty-app check-in"},
        )
        self.known("store")

    def known(self, where: str) -> None:
        """After a touch under their user id (a loyalty card at the till, a CRM record on the phone): a
        person not identified yet signs up, and the devices they used anonymously are linked to them."""
        if self.identified_at is not None:
            return
        self.soon(30, 180)
        self.identified_at = self.t
        if self.app_device:
            self.sdk(
                "identify",
                None,
                user_id=self.uid,
                anonymous_id=self.app_device,
                traits={**self.traits(), "signup_source": where},
                context=self.app_context(),
            )
        for dev in self.devices:
            self.soon(30, 600)
            self.identify_web(dev, where)
        if not self.app_device and not self.devices:
            self.sdk("identify", None, user_id=self.uid, traits={**self.traits(), "signup_source": where})

    def call(self, topic: str) -> None:
        """A call-centre call; its sentiment comes from the call's speech analytics, satisfaction from the survey."""
        satisfaction = {
            "product": self.rng.choice([3, 4, 4, 5, 5]),
            "pricing": self.rng.choice([2, 3, 4, 4, 5]),
            "availability": self.rng.choice([2, 3, 3, 4, 5]),
            "support": self.rng.choice([2, 3, 4, 4, 5, 5]),
            "returns": self.rng.choice([1, 2, 3, 3, 4, 5]),
            "complaint": self.rng.choice([1, 1, 2, 2, 3]),
        }[topic]
        sentiment = "positive" if satisfaction >= 4 else "negative" if satisfaction <= 2 else "neutral"
        self.complained |= topic == "complaint"
        user = self.uid
        if self.crm_id is None and self.chance(0.3):
            # The phone system knows the caller by a CRM record; the CRM sync links it to the shop's account.
            self.crm_id = f"crm-{self.uid[2:]}"
            user = self.crm_id
        queue = "pre-sales" if topic in ("product", "pricing", "availability") else "service"
        self.sdk(
            "touchpoint",
            "call_centre",
            user_id=user,
            channel="call_centre",
            action="Call",
            sentiment=sentiment,
            properties={
                "topic": topic,
                "satisfaction": satisfaction,
                "duration_s": self.rng.randint(90, 1500),
                "queue": queue,
            },
        )
        if user == self.crm_id:
            self.soon(60, 600)
            self.sdk("alias", None, previous_id=self.crm_id, user_id=self.uid)
        self.known("call centre")

    def order(self, channel: str) -> None:
        self.orders += 1
        sku, name, category, price = self.product()
        items = self.rng.choice([1, 1, 1, 2, 2, 3])
        total = round(price * items * self.rng.choice([1.0, 1.0, 0.9, 0.8]), 2)
        if channel == "store":
            store, city = self.rng.choice(_STORES)
            if self.t < self.data.csv_cutoff_ms:
                self.data.store_rows.append(
                    {
                        "message_id": self.mid(),
                        "customer_no": self.uid,
                        "sold_at": iso(self.t),
                        "store": store,
                        "receipt": f"{store}-{self.rng.randint(100000, 999999)}",
                        "total": f"{total:.2f}",
                        "items": str(items),
                        "order_number": str(self.orders),
                        "payment": self.rng.choice(["card", "card", "cash", "mobile"]),
                    }
                )
                self.channels.add("store")
            else:
                self.sdk(
                    "track",
                    "store",
                    user_id=self.uid,
                    event="Store Purchase",
                    properties={
                        "channel": "store",
                        "store": store,
                        "city": city,
                        "total": total,
                        "items": items,
                        "currency": "EUR",
                        "order_number": self.orders,
                    },
                )
            self.known("store")
            return
        if channel == "app":
            self.ensure_app()
            self.sdk(
                "track",
                "app",
                user_id=self.uid,
                anonymous_id=self.app_device,
                event="Order Completed",
                properties={
                    "channel": "app",
                    "order_id": f"o-{self.uid[2:]}-{self.orders}",
                    "total": total,
                    "items": items,
                    "currency": "EUR",
                    "order_number": self.orders,
                },
                context=self.app_context(),
            )
            return
        dev = self.web
        if dev.user_id is None:
            self.identify_web(dev, "checkout")
            self.soon(30, 300)
        self.visit(dev, [("/checkout", "Checkout")], referrer=dev.last_url)
        self.soon(60, 300)
        # The order is confirmed server-side (payment captured): the shop's backend sends it with the SDK.
        self.sdk(
            "track",
            "web",
            user_id=self.uid,
            anonymous_id=dev.anonymous_id,
            event="Order Completed",
            properties={
                "channel": "web",
                "order_id": f"o-{self.uid[2:]}-{self.orders}",
                "total": total,
                "items": items,
                "currency": "EUR",
                "order_number": self.orders,
                "sku": sku,
            },
        )
        self.soon(2, 10)
        self.visit(dev, [("/checkout/thank-you", "Thank you")], referrer=f"{SHOP}/checkout")

    def ensure_app(self) -> None:
        if self.app_device is None:
            self.app_device = str(uuid.uuid5(_NAMESPACE, f"{self.data.seed}/{self.uid}/app"))
            self.sdk(
                "track",
                "app",
                user_id=self.uid_if_known(),
                anonymous_id=self.app_device,
                event="App Installed",
                properties={"channel": "app", "store": "app-store"},
                context=self.app_context(),
            )
            if self.identified_at is not None:
                self.soon(30, 300)
                self.sdk(
                    "identify",
                    None,
                    user_id=self.uid,
                    anonymous_id=self.app_device,
                    traits=self.traits(),
                    context=self.app_context(),
                )

    def review(self) -> None:
        sku, name, _, _ = self.product()
        rating = self.rng.choice([1, 1, 2, 3, 4] if self.complained else [2, 3, 3, 4, 4, 5, 5, 5])
        if self.app_device and self.chance(0.4):
            self.sdk(
                "track",
                "app",
                user_id=self.uid,
                anonymous_id=self.app_device,
                event="Review Submitted",
                properties={"channel": "app", "sku": sku, "rating": rating},
                context=self.app_context(),
            )
            return
        dev = self.web
        if dev.user_id is None:
            self.identify_web(dev, "login")
            self.soon()
        self.visit(dev, [(f"/products/{sku}/review", f"Review {name}")], referrer=dev.last_url)
        self.soon(60, 400)
        self.tracker(
            dev,
            "track",
            f"{SHOP}/products/{sku}/review",
            f"Review {name} — Demo Shop",
            event="Review Submitted",
            properties={"sku": sku, "rating": rating, "words": self.rng.randint(8, 160)},
        )

    def referral(self) -> None:
        self.sdk(
            "track",
            "web",
            user_id=self.uid,
            event="Referral Sent",
            properties={"channel": "web", "program": "give-10-get-10", "invitees": self.rng.randint(1, 3)},
        )

    # -- the journey ----------------------------------------------------------------------------------

    def run(self) -> None:
        acquisition = self.rng.choices(
            ["organic", "ads", "social", "store", "email", "app"], weights=[24, 22, 14, 20, 8, 12]
        )[0]
        self.acquisition = acquisition
        try:
            converts = self.awareness(acquisition)
            if converts:
                self.consideration(acquisition)
        except _Stop:
            pass
        self.email_history()
        self.live_email()

    def awareness(self, acquisition: str) -> bool:
        """The first touches. Returns whether the person moves on (the rest is up to consideration)."""
        if acquisition in ("store", "email", "app"):
            return True  # they enter the journey further on
        self.stages.append("awareness")
        dev = self.web
        campaign = self.rng.choice(_AD_CAMPAIGNS)
        if acquisition == "ads":
            source, medium = ("google", "cpc") if self.chance(0.6) else (self.rng.choice(_NETWORKS[:2]), "paid_social")
            tags = {"source": source, "medium": medium, "name": campaign}
            self.sdk(
                "touchpoint",
                "ads",
                anonymous_id=dev.anonymous_id,
                channel="ads",
                action="Ad Clicked",
                properties={
                    "platform": "google-ads" if source == "google" else f"{source}-ads",
                    "campaign": campaign,
                    "cost": round(self.rng.uniform(0.2, 2.5), 2),
                },
                context={"campaign": tags},
            )
            self.soon(2, 8)
            query = urlencode({"utm_source": source, "utm_medium": medium, "utm_campaign": campaign})
            referrer = "https://www.google.com/" if source == "google" else f"https://www.{source}.com/"
            self.visit(dev, [("/", "Home")] + self.browse(), landing_query=query, referrer=referrer)
        elif acquisition == "social":
            network = self.rng.choice(_NETWORKS)
            post = f"post-{self.rng.randint(100, 999)}"
            tags = {"source": network, "medium": "social", "name": "lookbook"}
            self.sdk(
                "touchpoint",
                "social",
                anonymous_id=dev.anonymous_id,
                channel="social",
                action="Post Clicked",
                properties={"network": network, "post": post},
                context={"campaign": tags},
            )
            self.soon(2, 8)
            query = urlencode({"utm_source": network, "utm_medium": "social", "utm_campaign": "lookbook"})
            self.visit(
                dev, [("/", "Home")] + self.browse(), landing_query=query, referrer=f"https://www.{network}.com/"
            )
        else:
            referrer = self.rng.choice(_SEARCH + [""])
            self.visit(dev, [("/", "Home")] + self.browse(), referrer=referrer)
        if self.chance(0.18):
            self.soon(30, 200)
            self.tracker(
                dev,
                "track",
                dev.last_url or f"{SHOP}/",
                "Home — Demo Shop",
                event="Newsletter Subscribed",
                properties={"list": "weekly"},
            )
            self.soon(2, 10)
            self.identify_web(dev, "newsletter")
        moves = self.chance({"ads": 0.5, "social": 0.55, "organic": 0.6}[acquisition])
        if self.chance(0.35):  # another touch in the same stage: a repeat visit or a retargeting ad
            self.days(1.5)
            if acquisition == "ads":
                self.sdk(
                    "touchpoint",
                    "ads",
                    anonymous_id=dev.anonymous_id,
                    user_id=dev.user_id,
                    channel="ads",
                    action="Ad Impression",
                    properties={"platform": "display", "campaign": "retargeting"},
                )
            else:
                self.visit(dev, [("/", "Home")], referrer=self.rng.choice(_SEARCH))
        if not moves:
            return False
        self.days(1.6, 0.9)
        return True

    def browse(self) -> list[tuple[str, str]]:
        pages = [
            ("/collections/new-in", "New in"),
            ("/collections/sale", "Sale"),
            ("/about", "About us"),
            ("/stores", "Our stores"),
            ("/collections/knitwear", "Knitwear"),
        ]
        return self.rng.sample(pages, self.rng.choice([0, 1, 1, 2, 3]))

    def consideration(self, acquisition: str) -> None:
        skip = acquisition in ("organic", "ads", "social") and self.chance(0.12)
        if skip:
            # Straight from a first visit to buying in a store, without looking around: a skip.
            if self.identified_at is None:
                self.identify_web(self.web, "newsletter")
            self.days(3)
            self.nonlinear += 1
            self.purchase("store")
            return
        self.stages.append("consideration")
        if acquisition == "store":
            self.store_visit()
        elif acquisition == "email":
            # An existing subscriber from the CRM: a past campaign's click starts their journey.
            campaign = f"newsletter-{iso(self.t)[:10]}"
            self.sdk(
                "track",
                "email",
                user_id=self.uid,
                event="Email Opened",
                properties={"channel": "email", "touchpoint": "email-open", "campaign": campaign},
            )
            self.known("crm")
            self.soon(20, 600)
            self.sdk(
                "track",
                "email",
                user_id=self.uid,
                event="Email Clicked",
                properties={
                    "channel": "email",
                    "touchpoint": "email-click",
                    "campaign": campaign,
                    "url": f"{SHOP}/collections/new-in",
                },
            )
            self.soon(2, 10)
            query = urlencode({"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": campaign})
            self.visit(self.web, [("/collections/new-in", "New in")], landing_query=query, referrer="")
        elif acquisition == "app":
            self.ensure_app()
            self.soon(60, 900)
            self.sdk("screen", "app", anonymous_id=self.app_device, name="Home", context=self.app_context())
            self.soon(10, 120)
            self.view_product()
            if self.chance(0.7):
                self.soon(60, 900)
                self.identified_at = self.t
                self.sdk(
                    "identify",
                    None,
                    user_id=self.uid,
                    anonymous_id=self.app_device,
                    traits={**self.traits(), "signup_source": "app"},
                    context=self.app_context(),
                )
        else:
            self.view_product()
        # More looking around: product pages, a store, a question on the phone.
        for _ in range(self.rng.choice([0, 1, 1, 2, 3])):
            self.days(1.2)
            what = self.rng.choices(["product", "store", "call", "list", "phone"], weights=[55, 15, 10, 12, 8])[0]
            if what == "phone" and self.identified_at is not None and len(self.devices) == 1:
                # A second device: browses anonymously on the phone, then logs in there too.
                phone = self.device(mobile=True)
                sku, name, _, _ = self.product()
                self.visit(phone, [(f"/products/{sku}", name)], referrer=self.rng.choice(_SEARCH))
                self.soon(30, 300)
                self.identify_web(phone, "login")
            elif what in ("product", "phone"):
                self.view_product()
            elif what == "store":
                self.store_visit()
            elif what == "call":
                self.call(self.rng.choice(["product", "pricing", "availability"]))
            else:
                dev = self.web
                self.visit(dev, [("/collections/knitwear", "Knitwear")], referrer=dev.last_url)
                self.soon(3, 20)
                self.tracker(
                    dev,
                    "track",
                    dev.last_url,
                    "Knitwear — Demo Shop",
                    event="Product List Viewed",
                    properties={"category": "knitwear"},
                )
            if self.identified_at is None and self.devices and self.chance(0.35):
                self.soon()
                self.identify_web(self.web, "account")
        p = {"store": 0.5, "email": 0.38, "app": 0.35}.get(acquisition, 0.27)
        p += {"none": 0.0, "silver": 0.06, "gold": 0.12}[self.tier]
        if not self.chance(p):
            if self.chance(0.3):  # comes back for one more look, then goes quiet
                self.days(8)
                self.view_product()
            return
        self.days(4.5, 0.7)
        channel = {"store": "store", "app": "app"}.get(acquisition) or self.rng.choices(
            ["web", "store", "app"], [70, 20, 10]
        )[0]
        self.purchase(channel)

    def purchase(self, channel: str) -> None:
        self.stages.append("purchase")
        self.order(channel)
        if self.chance(0.3):  # looks at more products after buying: a regression to consideration
            self.days(3)
            self.nonlinear += 1
            self.view_product()
        p = {"none": 0.5, "silver": 0.62, "gold": 0.75}[self.tier]
        if not self.chance(p):
            if self.chance(0.2):  # reviews the first order without coming back: a skip over retention
                self.days(9)
                self.nonlinear += 1
                self.stages.append("advocacy")
                self.review()
            return
        self.days(17, 0.6)
        self.retention(channel)

    def retention(self, channel: str) -> None:
        self.stages.append("retention")
        if self.chance(0.72):
            self.order(channel if self.chance(0.7) else self.rng.choice(["web", "store", "app"]))
        else:
            self.call(self.rng.choice(["support", "support", "returns", "complaint"]))
        for _ in range(self.rng.choice([0, 0, 1, 1, 2])):
            self.days(12)
            if self.chance(0.55):
                self.order(channel)
            elif self.chance(0.5):
                self.call(self.rng.choice(["support", "returns", "complaint"]))
            else:
                self.nonlinear += 1
                self.view_product()  # browsing again: a regression
        p = 0.45 + {"none": 0.0, "silver": 0.05, "gold": 0.12}[self.tier] - (0.15 if self.complained else 0.0)
        if not self.chance(p):
            return
        self.days(14, 0.6)
        self.stages.append("advocacy")
        if self.chance(0.72):
            self.review()
        else:
            self.referral()
        if self.chance(0.25):
            self.days(20)
            self.referral() if self.chance(0.5) else self.review()
        if self.chance(0.15):  # a friend's post brings them back round: a regression to awareness
            self.days(10)
            self.nonlinear += 1
            self.sdk(
                "touchpoint",
                "social",
                user_id=self.uid,
                channel="social",
                action="Post Liked",
                properties={"network": self.rng.choice(_NETWORKS), "post": f"post-{self.rng.randint(100, 999)}"},
            )

    def email_history(self) -> None:
        """Past campaigns to opted-in customers, as the email service's webhook reported opens and clicks."""
        if self.identified_at is None or not self.email_opt_in:
            return
        try:
            self._email_history()
        except _Stop:
            pass

    def _email_history(self) -> None:
        for sent_at in self.gen.campaigns:
            assert self.identified_at is not None  # email_history only runs for identified customers
            if sent_at <= self.identified_at or sent_at > self.end:
                continue
            campaign = f"newsletter-{iso(sent_at)[:10]}"
            if not self.chance(0.35):
                continue
            self.t = sent_at + self.rng.randint(10, 36 * 60) * _MINUTE
            if self.t > self.end:
                continue
            self.sdk(
                "track",
                "email",
                user_id=self.uid,
                event="Email Opened",
                properties={"channel": "email", "touchpoint": "email-open", "campaign": campaign},
            )
            if not self.chance(0.22):
                continue
            self.t += self.rng.randint(5, 300) * 1000
            if self.t > self.end:
                continue
            url = f"{SHOP}/collections/new-in"
            self.sdk(
                "track",
                "email",
                user_id=self.uid,
                event="Email Clicked",
                properties={"channel": "email", "touchpoint": "email-click", "campaign": campaign, "url": url},
            )
            if self.devices:
                self.soon(2, 5)
                query = urlencode({"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": campaign})
                dev = self.devices[0]
                if dev.user_id is None:
                    dev.user_id = self.uid  # an email click's landing page knows the recipient (a signed-in session)
                self.visit(dev, [("/collections/new-in", "New in")], landing_query=query, referrer="")

    def live_email(self) -> None:
        """The campaign going out now: opens and clicks through the signed links, at the time of the run."""
        if self.identified_at is None or not self.email_opt_in or not self.chance(0.45):
            return
        variant = self.rng.choice(["a", "b"])
        if self.chance(0.2):
            self.data.live_emails.append(LiveEmail("open", self.uid, _APPLE_MPP, props={"variant": variant}))
        if self.chance(0.4):
            agent = self.rng.choice(_MAIL_CLIENTS)
            self.data.live_emails.append(LiveEmail("open", self.uid, agent, props={"variant": variant}))
            if self.chance(0.35):
                query = urlencode({"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": LIVE_CAMPAIGN})
                self.data.live_emails.append(
                    LiveEmail("click", self.uid, agent, f"{SHOP}/collections/new-season?{query}", {"variant": variant})
                )


class _Generator:
    def __init__(self, data: DemoData):
        self.data = data
        self.end_ms = data.anchor_ms - _MINUTE
        start = self.end_ms - data.days * _DAY
        # A newsletter every ten days, counted back from the end (never from the calendar: how many events
        # the demo has must not depend on the time of day it is anchored at).
        self.campaigns = sorted(
            self.end_ms - k * 10 * _DAY + 5 * _HOUR
            for k in range(1, data.days // 10 + 1)
            if self.end_ms - k * 10 * _DAY >= start
        )


def generate(
    seed: int = DEFAULT_SEED,
    customers: int = DEFAULT_CUSTOMERS,
    days: int = DEFAULT_DAYS,
    anchor: datetime | None = None,
) -> DemoData:
    """The demo's events for ``customers`` people over the ``days`` before ``anchor`` (default: now).

    Deterministic: the same arguments give the same events with the same ids. Customer ``i``'s events
    depend only on the seed, ``days``, ``anchor`` and ``i``, so a larger ``customers`` adds people."""
    anchor = anchor or datetime.now(timezone.utc)
    anchor_ms = int(anchor.timestamp() * 1000) // _MINUTE * _MINUTE
    data = DemoData(seed, customers, days, anchor_ms)
    gen = _Generator(data)
    best: tuple[int, ...] = (-1,)
    for index in range(customers):
        person = _Person(gen, index)
        person.run()
        data.channels |= person.channels
        data.people[person.uid] = sorted(person.ids)
        if person.identified_at is not None:
            data.identified += 1
            score = (len(set(person.stages)), person.nonlinear > 0, len(person.ids) > 2, len(person.channels), -index)
            if score > best:
                best, data.sample_customer = score, person.uid
    return data


# -- sending ---------------------------------------------------------------------------------------------


class DemoFailed(JourneysError):
    """The demo could not be loaded; the message says why, in one line."""


class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, a line every few seconds
    (and at each new phase) otherwise."""

    def __init__(self, total: int, enabled: bool, stream: Any = None):
        self.total = max(total, 1)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.phase = ""
        self.last_drawn = 0.0
        self.began = time.monotonic()

    def note(self, text: str) -> None:
        """A line of its own (a phase's outcome), above the bar."""
        if not self.enabled:
            return
        self.stream.write(("\r" + " " * 79 + "\r" if self.tty else "") + text + "\n")
        self.stream.flush()
        self.last_drawn = 0.0

    def update(self, done: int | None = None, phase: str | None = None, *, add: int = 0) -> None:
        if done is not None:
            self.done = done
        self.done += add
        new_phase = phase is not None and phase != self.phase
        if phase is not None:
            self.phase = phase
        if not self.enabled:
            return
        now = time.monotonic()
        if not new_phase and now - self.last_drawn < (0.1 if self.tty else 5.0):
            return
        self.last_drawn = now
        fraction = min(self.done / self.total, 1.0)
        filled = int(fraction * 30)
        text = (
            f"demo [{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:3.0f}%  "
            f"{self.done:,}/{self.total:,} events  {self.phase}"
        )
        if self.tty:
            self.stream.write("\r" + text[:79].ljust(79))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def _local_url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{port}"


async def _answers(session: Any, url: str) -> bool:
    import aiohttp

    try:
        async with session.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=3)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return False


def _sdk_module() -> Any:
    """The Python SDK (its own distribution, ``sdk/``). From a clone with only ``pip install -e .``, the copy
    beside this package is used."""
    try:
        import journeys_sdk
    except ImportError:
        beside = Path(__file__).resolve().parent.parent / "sdk"
        if not (beside / "journeys_sdk" / "__init__.py").is_file():
            raise DemoFailed("journeys demo sends through the Python SDK: install it (pip install -e ./sdk)") from None
        sys.path.append(str(beside))
        import journeys_sdk
    return journeys_sdk


class _LastSend:
    """When the last request carrying demo events went out (wall clock): the events are all stored once
    the project's newest received event is at least this recent (the spool drains in order)."""

    at: float = 0.0

    def mark(self) -> None:
        self.at = time.time()


async def _send_sdk(data: DemoData, collector: str, write_key: str, progress: Progress, last: _LastSend) -> None:
    sdk = _sdk_module()
    errors: list[str] = []

    def on_error(exc: Exception, events: Any) -> None:
        errors.append(str(exc))

    n = len(data.sdk)
    client = sdk.Client(
        write_key,
        host=collector,
        on_error=on_error,
        upload_size=500,
        upload_interval=0.05,
        max_queue_size=max(n + 1, 100_000),
        max_queue_bytes=max(64 * 1024 * 1024, 4096 * n),
        retry_budget=120.0,
    )
    base = progress.done
    try:
        for method, kwargs in data.sdk:
            result = getattr(client, method)(**kwargs)
            if result.status is sdk.Status.DROPPED:
                raise DemoFailed(f"the SDK refused a demo event ({result.reason}): {result.error}")
        last.mark()  # the consumer thread sends from now on
        flushing = asyncio.ensure_future(asyncio.to_thread(client.flush, 300.0))
        while not flushing.done():
            progress.update(base + client.stats.sent, "SDK")
            await asyncio.wait({flushing}, timeout=0.2)
        flushed = flushing.result()
    finally:
        stats = client.stats
        await asyncio.to_thread(client.shutdown, 5.0)
    progress.update(base + stats.sent)
    if errors or not flushed or stats.sent != n or stats.failed or stats.quarantined:
        why = errors[0] if errors else f"{stats.sent} of {n} events delivered"
        raise DemoFailed(f"the collector did not take the SDK's events: {why}")


async def _send_store_csv(
    data: DemoData, session: Any, collector: str, write_key: str, progress: Progress, last: _LastSend
) -> None:
    """The till export, imported as ``journeys import FILE --map userId=customer_no --map timestamp=sold_at
    --map "event=:Store Purchase" --map channel=:store`` does it (its ``message_id`` column maps itself)."""
    from cli.importer.mapping import parse_maps
    from cli.importer.reading import InputFile, csv_chunks
    from cli.importer.sender import Sender

    if not data.store_rows:
        return
    maps = parse_maps(["userId=customer_no", "timestamp=sold_at", "event=:Store Purchase", "channel=:store"])
    with tempfile.TemporaryDirectory(prefix="journeys-demo-") as folder:
        path = os.path.join(folder, "store-sales.csv")
        with open(path, "w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=list(data.store_rows[0]))
            writer.writeheader()
            writer.writerows(data.store_rows)
        source = InputFile(path)
        try:
            sender = Sender(session, collector, write_key, compress=False, retry_for=120.0)
            accepted = 0
            problems: list[str] = []
            for chunk in csv_chunks(source, maps, set(), ",", "utf-8", 1):
                problems += [f"line {e['line']}: {e['field']}: {e['reason']}" for e in chunk.refused]
                last.mark()
                sent = await sender.send(chunk)
                accepted += sent.accepted
                problems += [f"line {e['line']}: {e['field']}: {e['reason']}" for e in sent.errors]
                progress.update(add=sent.accepted, phase="store CSV import")
        finally:
            source.close()
    if problems or accepted != len(data.store_rows):
        raise DemoFailed(f"the store import was refused in part: {problems[0] if problems else accepted}")


async def _send_tracker(
    data: DemoData,
    session: Any,
    collector: str,
    public_key: str,
    wait_for_origin_s: float,
    progress: Progress,
    last: _LastSend,
) -> None:
    """The tracker's requests: POST /v1/batch, the public key in a text/plain JSON body, from the shop's
    origin. One request carries at most 60 kB, as tracker.js sends; several visitors' queues share a request
    here so that one machine stays within the public key's per-address rate limit."""
    events = sorted(data.tracker, key=lambda e: (e["anonymousId"], e["timestamp"]))
    bodies: list[list[bytes]] = [[]]
    size = 200
    for event in events:
        encoded = orjson.dumps(event)
        if bodies[-1] and size + len(encoded) + 1 > _TRACKER_REQUEST_BYTES:
            bodies.append([])
            size = 200
        bodies[-1].append(encoded)
        size += len(encoded) + 1
    origin_deadline = time.monotonic() + wait_for_origin_s
    told = False
    for batch in bodies:
        if not batch:
            continue
        pause = 0.5
        while True:
            sent_at = orjson.dumps(iso(int(time.time() * 1000)))
            body = (
                b'{"batch":['
                + b",".join(batch)
                + b'],"sentAt":'
                + sent_at
                + b',"writeKey":'
                + orjson.dumps(public_key)
                + b"}"
            )
            headers = {"Content-Type": "text/plain;charset=UTF-8", "Origin": SHOP, "User-Agent": _DESKTOP[0][0]}
            last.mark()
            async with session.post(f"{collector}/v1/batch", data=body, headers=headers) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                answer = await resp.json(content_type=None) if status != 204 else {}
            if status == 200:
                if answer.get("quarantined"):
                    raise DemoFailed(f"the collector quarantined tracker events: {answer['quarantined'][0]}")
                progress.update(add=len(batch), phase="tracker requests")
                break
            fields = {e.get("field") for e in (answer.get("errors") or []) if isinstance(e, dict)}
            if status == 403 and "Origin" in fields and time.monotonic() < origin_deadline:
                # Collectors reload the allowed origins every JOURNEYS_KEY_CACHE_TTL_S seconds.
                if not told:
                    progress.note(
                        f"waiting for the collector to pick up the origin {SHOP} (up to {wait_for_origin_s:.0f} s)"
                    )
                    told = True
                await asyncio.sleep(1.0)
                continue
            if status in (429, 502, 503, 504):
                await asyncio.sleep(_seconds(retry_after, pause))
                pause = min(pause * 2, 10.0)
                continue
            raise DemoFailed(f"the collector refused the tracker's events ({status}): {answer}")


def _seconds(retry_after: str | None, default: float) -> float:
    try:
        return min(max(float(retry_after or ""), 0.1), 30.0)
    except ValueError:
        return default


async def _live_emails_to_send(
    data: DemoData, session: Any, query: str, read_key: str, fresh_project: bool
) -> list[LiveEmail]:
    """The campaign's opens and clicks the project does not have yet (the email routes record every fetch
    as a new event, so a re-run must not fetch again what an earlier run already recorded)."""
    if fresh_project or not data.live_emails:
        return list(data.live_emails)
    by_user: dict[str, list[LiveEmail]] = {}
    for email in data.live_emails:
        by_user.setdefault(email.user_id, []).append(email)
    gate = asyncio.Semaphore(8)

    async def missing(user: str, planned: list[LiveEmail]) -> list[LiveEmail]:
        async with gate:
            async with session.get(
                f"{query}/v1/customers/{user}/events",
                params={"limit": "10000"},
                headers={"Authorization": _basic(read_key)},
            ) as resp:
                if resp.status != 200:
                    raise DemoFailed(f"cannot read customer {user}'s events ({resp.status}): {await resp.text()}")
                answer = await resp.json()
        have: dict[tuple[str, bool], int] = {}
        for event in answer.get("events", []):
            props = event.get("properties") or {}
            if isinstance(props, str):
                props = orjson.loads(props)
            if props.get("campaign") != LIVE_CAMPAIGN or event.get("event") not in ("Email Opened", "Email Clicked"):
                continue
            key = ("open" if event["event"] == "Email Opened" else "click", "bot" in props)
            have[key] = have.get(key, 0) + 1
        out = []
        for email in planned:
            key = (email.kind, email.user_agent == _APPLE_MPP)
            if have.get(key, 0) > 0:
                have[key] -= 1
            else:
                out.append(email)
        return out

    found = await asyncio.gather(*(missing(user, planned) for user, planned in by_user.items()))
    return [email for group in found for email in group]


async def _send_live_emails(
    emails: list[LiveEmail],
    session: Any,
    collector: str,
    project_id: str,
    signing_key: str,
    progress: Progress,
    last: _LastSend,
) -> None:
    """Fetch the signed open-pixel and click URLs, as mail clients (and Apple's privacy relay) do."""
    from collector.email_tokens import sign

    for email in emails:
        token = sign(signing_key, project_id, email.kind, email.user_id, LIVE_CAMPAIGN, email.url, email.props)  # type: ignore[arg-type]
        url = f"{collector}/v1/email/{email.kind}/{token}"
        for attempt in range(20):
            last.mark()
            async with session.get(url, headers={"User-Agent": email.user_agent}, allow_redirects=False) as resp:
                status = resp.status
                await resp.read()
            if status == (302 if email.kind == "click" else 200):
                break
            if status == 400 and attempt < 10:
                # A signing key made this second is not in the collector's cache yet; it re-reads the keys
                # at most once a second per project after a signature fails.
                await asyncio.sleep(1.1)
                continue
            if status == 503:
                await asyncio.sleep(1.0)
                continue
            raise DemoFailed(f"the collector answered {status} to a signed email {email.kind} link")
        else:
            raise DemoFailed(f"the collector kept refusing the signed email {email.kind} links")
        progress.update(add=1, phase="signed email links")


async def _wait_until_visible(
    session: Any, query: str, read_key: str, at_least: int, sent_by: float, progress: Progress, timeout: float = 120.0
) -> dict[str, Any]:
    """Poll /v1/stats until the project holds every demo event and the last one sent is stored."""
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with session.get(f"{query}/v1/stats", headers={"Authorization": _basic(read_key)}) as resp:
            if resp.status == 200:
                stats = await resp.json()
        newest = stats.get("newest_received_at")
        received = datetime.fromisoformat(newest.replace("Z", "+00:00")).timestamp() if newest else 0.0
        if stats.get("events", 0) >= at_least and received >= sent_by:
            return stats
        progress.update(phase="storing")
        await asyncio.sleep(0.25)
    raise DemoFailed(
        f"after {timeout:.0f} s the project shows {stats.get('events', 0):,} events (of at least {at_least:,}), the newest "
        f"received at {stats.get('newest_received_at')}: is the collector's inserter stuck? (its log, GET /readyz)"
    )


async def _wait_for_kpis(
    session: Any, query: str, read_key: str, window: tuple[str, str], progress: Progress, timeout: float = 180.0
) -> dict[str, Any] | None:
    """Poll /v1/kpis until it answers for the demo map and two answers a second apart agree (the query
    service's facts have caught up with the events)."""
    deadline = time.monotonic() + timeout
    params = {"map": MAP_NAME, "from": window[0], "to": window[1]}
    previous = None
    while time.monotonic() < deadline:
        async with session.get(f"{query}/v1/kpis", params=params, headers={"Authorization": _basic(read_key)}) as resp:
            answer = await resp.json(content_type=None) if resp.status == 200 else None
        if answer is not None and answer.get("rebuilding") is None:
            current = orjson.dumps(answer["segments"], option=orjson.OPT_SORT_KEYS)
            if current == previous:
                return answer
            previous = current
        progress.update(phase="KPIs")
        await asyncio.sleep(1.0)
    return None


# -- the command -----------------------------------------------------------------------------------------


def add_commands(commands: Commands) -> None:
    cmd = commands.add(
        "demo",
        run,
        help="create a demo project with realistic journeys, sent through the running collector",
        description=(
            "Creates (or reuses) a project and sends it several hundred customers' journeys over a few months "
            "through the running service (`journeys up`): SDK events, the browser tracker's requests, signed "
            "email links and a store CSV import. Then prints the keys and the dashboard's address. Re-running "
            "sends the same events again, which every read counts once."
        ),
    )
    cmd.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        metavar="NAME",
        help=f"project name (default {DEFAULT_PROJECT}; reused if it exists, with new keys)",
    )
    cmd.add_argument(
        "--customers",
        type=int,
        default=DEFAULT_CUSTOMERS,
        metavar="N",
        help=f"people to simulate, 1-100000 (default {DEFAULT_CUSTOMERS})",
    )
    cmd.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        metavar="N",
        help=f"days of history, 7-730, up to when the project was created: now, for a new one (default {DEFAULT_DAYS})",
    )
    cmd.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"random seed: the same seed sends the same events (default {DEFAULT_SEED})",
    )
    cmd.add_argument(
        "--collector", metavar="URL", help="the collector (default: this machine's, from JOURNEYS_COLLECTOR_HOST/_PORT)"
    )
    cmd.add_argument(
        "--query",
        metavar="URL",
        help="the query service and dashboard (default: this machine's, from JOURNEYS_QUERY_HOST/_PORT)",
    )
    cmd.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    cmd.add_argument("--json", action="store_true", help="print the project, keys and counts as one JSON object")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    import aiohttp

    if not 1 <= args.customers <= 100_000:
        print("error: --customers must be 1-100000", file=sys.stderr)
        return 2
    if not 7 <= args.days <= 730:
        print("error: --days must be 7-730", file=sys.stderr)
        return 2
    collector = (args.collector or _local_url(settings.collector_host, settings.collector_port)).rstrip("/")
    query = (args.query or _local_url(settings.query_host, settings.query_port)).rstrip("/")
    for option, url in (("--collector", collector), ("--query", query)):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            print(f"error: {option} {url!r}: expected http(s)://HOST[:PORT]", file=sys.stderr)
            return 2
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url, what in ((collector, "collector"), (query, "query service")):
            if not await _answers(session, url):
                print(
                    f"error: nothing answers at {url} (the {what}): run `journeys up` first, in another terminal",
                    file=sys.stderr,
                )
                return 1
        try:
            return await _demo(settings, args, session, collector, query)
        except DemoFailed as exc:
            print(("\n" if sys.stderr.isatty() else "") + f"error: {exc}", file=sys.stderr)
            return 1


@dataclass
class _Setup:
    project_id: str
    created: bool
    created_at: datetime
    write_key: str
    read_key: str
    public_key: str
    signing_key: str
    applied: list[str]


async def _prepare(settings: Settings, name: str) -> _Setup:
    """Project, keys, origin, email key, map and segments: what `journeys project create`, `key create`,
    `project origins --add`, `email key`, `map apply` and `segment apply` do, in one connection."""
    from query import definitions
    from collector.email_keys import current_key
    from journeys.keys import ProjectError, add_key, create_project, find_project
    from collector.origins import change_origins

    async with open_postgres(settings) as conn:
        project_id = await find_project(conn, name)
        created = project_id is None
        if project_id is None:
            try:
                project = await create_project(conn, name)
            except ProjectError as exc:
                raise DemoFailed(str(exc)) from None
            project_id, write_key, read_key = project.id, project.write_key, project.read_key
        else:
            write_key = await add_key(conn, project_id, "write")
            read_key = await add_key(conn, project_id, "read")
        public_key = await add_key(conn, project_id, "public")
        await change_origins(conn, project_id, [SHOP])
        signing_key = await current_key(conn, project_id)
        created_at = await conn.fetchval("SELECT created_at FROM projects WHERE id = $1", project_id)
        applied = []
        documents: list[tuple[definitions.Kind, Any]] = [("map", demo_map())]
        documents += [("segment", s) for s in DEMO_SEGMENTS]
        for kind, document in documents:
            done = await definitions.apply(conn, project_id, kind, document)
            state = f"version {done.version}" + ("" if done.changed else ", unchanged")
            applied.append(f"{kind} {done.name} ({state})")
        return _Setup(project_id, created, created_at, write_key, read_key, public_key, signing_key, applied)


async def _demo(settings: Settings, args: argparse.Namespace, session: Any, collector: str, query: str) -> int:
    began = time.monotonic()
    setup = await _prepare(settings, args.project)
    # The keys were just made in PostgreSQL: a collector that does not know them shares no database with us.
    async with session.post(
        f"{collector}/v1/batch",
        data=b'{"batch":[]}',
        headers={"Authorization": _basic(setup.write_key), "Content-Type": "application/json"},
    ) as resp:
        if resp.status in (401, 403):
            raise DemoFailed(
                f"the collector at {collector} does not know the keys just made for project {args.project!r}: is "
                f"`journeys up` using this data directory ({settings.resolved_data_dir}) and database?"
            )
    data = generate(args.seed, args.customers, args.days, setup.created_at)
    progress = Progress(data.total_events, not args.no_progress)
    anchor = iso(data.anchor_ms)
    progress.note(
        f"{'created' if setup.created else 'reusing'} project {args.project} ({setup.project_id}); "
        + "; ".join(setup.applied)
    )
    progress.note(
        f"sending {data.total_events:,} events: {args.customers:,} people ({data.identified:,} identified), "
        f"{args.days} days up to {anchor[:16].replace('T', ' ')} UTC, seed {args.seed}"
    )
    if not setup.created and datetime.now(timezone.utc) - setup.created_at > timedelta(days=2):
        progress.note(
            f"note: event times are placed relative to when project {args.project} was created ({anchor[:10]}), "
            "so a re-run sends the same events; use a new --project for data that ends today"
        )
    last = _LastSend()
    await _send_sdk(data, collector, setup.write_key, progress, last)
    await _send_store_csv(data, session, collector, setup.write_key, progress, last)
    await _send_tracker(data, session, collector, setup.public_key, settings.key_cache_ttl_s + 5.0, progress, last)
    emails = await _live_emails_to_send(data, session, query, setup.read_key, setup.created)
    progress.update(add=len(data.live_emails) - len(emails))
    await _send_live_emails(emails, session, collector, setup.project_id, setup.signing_key, progress, last)
    stats = await _wait_until_visible(session, query, setup.read_key, data.total_events, last.at - 0.5, progress)
    today = datetime.now(timezone.utc).date()
    window = (str(date.fromtimestamp(data.anchor_ms / 1000 - args.days * 86400)), str(today))
    kpis = await _wait_for_kpis(session, query, setup.read_key, window, progress)
    progress.update(phase="done")
    progress.finish()
    elapsed = time.monotonic() - began
    dashboard = query + "/"
    stages = kpis["segments"][0]["stages"] if kpis else []
    bottleneck = kpis["segments"][0].get("bottleneck") if kpis else None
    summary = {
        "project": args.project,
        "project_id": setup.project_id,
        "created": setup.created,
        "write_key": setup.write_key,
        "read_key": setup.read_key,
        "public_key": setup.public_key,
        "origin": SHOP,
        "dashboard": dashboard,
        "collector": collector,
        "map": MAP_NAME,
        "segments": [s["name"] for s in DEMO_SEGMENTS],
        "events": data.total_events,
        "project_events": stats.get("events"),
        "customers": args.customers,
        "days": args.days,
        "seed": args.seed,
        "window": {"from": window[0], "to": window[1]},
        "sample_customer": data.sample_customer,
        "stages": {s["id"]: s["status"] for s in stages},
        "bottleneck": bottleneck,
        "seconds": round(elapsed, 1),
    }
    if args.json:
        print(orjson.dumps(summary).decode())
        return 0
    print(
        f"demo project {args.project} ({setup.project_id}): {data.total_events:,} events, {args.customers:,} people, "
        f"{args.days} days; stored and counted once each ({elapsed:.0f} s)"
    )
    print(f"write key  {setup.write_key}   (ingest only: SDKs, collectors)")
    print(f"read key   {setup.read_key}   (query only: journeys, KPIs, dashboard)")
    print(f"public key {setup.public_key}   (browser tracker, from {SHOP})")
    print(
        f"dashboard  {dashboard}   (sign in with the read key; map {MAP_NAME}, segments "
        f"{', '.join(s['name'] for s in DEMO_SEGMENTS)})"
    )
    if stages:
        marks = ", ".join(f"{s['id']} {s['status'].replace('_', ' ')}" for s in stages if s["status"] != "no_target")
        print(
            f"stages     {marks}"
            + (f"; bottleneck: {bottleneck['stage']} ({bottleneck['metric']})" if bottleneck else "")
        )
        print(f"           KPIs from {window[0]} to {window[1]}: set these dates in the dashboard to see all of it")
    print(f"customer   {data.sample_customer}   (a stitched journey across channels: look it up in the Customer view)")
    print("Keys are stored hashed and cannot be shown again; each run makes new ones.")
    return 0
