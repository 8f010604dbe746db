"""Who fetched an email pixel or link, when it was not the recipient's own mail client or browser.

Mail privacy features fetch every image of a message when it arrives, and corporate mail security
follows every link to check it: left alone, each inflates opens and clicks. We still *record* those
requests (a prefetch says the message reached an inbox; a scan says it reached a protected company), but
flag them, so a journey map can leave them out (see docs/email.md, "Bots and prefetchers").

Kinds, from least to most "not a person":

``proxy``
    fetched through the mailbox provider's image proxy *when the recipient opened the message*: a real
    open, but the device, place and any later re-open are hidden (the proxy caches the image).
``prefetch``
    fetched by the provider *whether or not* anyone opens the message.
``scanner``
    a security product or link checker following the link before (or instead of) the person.
``bot``
    anything else automated: crawlers, link previews, scripts, or no User-Agent at all.

The table is ordered: the first matching entry wins, so specific products come before the generic
patterns. User-Agent text is what these services are documented or widely observed to send; they change
it rarely but without notice, so this is a best effort, not proof. Some fetchers (Outlook.com's image
proxy, Safe Links detonation in most tenants) look like ordinary browsers and are not caught here: IP
ranges (Apple's, Google's and Microsoft's egress lists) would catch more, but need the client address
through a trusted proxy chain first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

BotKind = Literal["proxy", "prefetch", "scanner", "bot"]


@dataclass(frozen=True)
class Bot:
    name: str
    kind: BotKind


@dataclass(frozen=True)
class _Rule:
    name: str
    kind: BotKind
    user_agent: re.Pattern[str]
    why: str
    only: Literal["open", "click"] | None  # None: applies to opens and clicks


def _rule(name: str, kind: BotKind, pattern: str, why: str, only: Literal["open", "click"] | None = None) -> _Rule:
    return _Rule(name, kind, re.compile(pattern, re.IGNORECASE), why, only)


# fmt: off
RULES: tuple[_Rule, ...] = (
    _rule("Apple Mail Privacy Protection", "prefetch", r"^Mozilla/5\.0$",
          # MPP loads every remote image through Apple's relay as mail arrives on the device, opened or
          # not, and sends this bare product token as its whole User-Agent; no real browser or mail client
          # sends it without a platform comment.
          "MPP preloads all images on delivery"),
    _rule("Gmail prefetch", "prefetch", r"Edge/12\.246 Mozilla/5\.0$",
          # Gmail fetches images of mail arriving during an active session before showing it, with an
          # Edge 12 UA ending in a second "Mozilla/5.0" (reported by SparkPost); Google Image Proxy opens
          # (below) are the user-initiated ones.
          "Gmail preloads images for signed-in sessions"),
    _rule("Google Image Proxy", "proxy", r"GoogleImageProxy",
          # "... (via ggpht.com GoogleImageProxy)": Gmail serves every image through this proxy when the
          # message is opened, replacing the reader's UA and IP, and caches it (later opens are invisible).
          "Gmail proxies images on open"),
    _rule("Yahoo Mail Proxy", "proxy", r"YahooMailProxy",
          # "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html": Yahoo and AOL Mail
          # serve images through it, hiding the reader the same way Google's proxy does.
          "Yahoo/AOL Mail proxy images on open"),
    _rule("Microsoft Office link check", "scanner",
          r"Microsoft Office Existence Discovery|Microsoft Office Protocol Discovery|\bms-office\b|MSOffice 1[0-9]",
          # Office apps (Outlook desktop included) probe a link before handing it to the browser, so a
          # click there is preceded by one of these: the probe, not the person. Clicks only: Outlook
          # desktop may load *images* with a similar UA, and those are real opens.
          "Office probes links before opening them", only="click"),
    _rule("Microsoft Defender Safe Links", "scanner", r"SafeLinks|Microsoft-URLAnalyzer|BingPreview",
          # Defender for Office 365 rewrites and detonates links at delivery and at click time; its
          # fetchers identify themselves this way when they do at all (BingPreview also renders Outlook
          # link previews).
          "Defender for Office 365 scans links"),
    _rule("Proofpoint", "scanner", r"Proofpoint|urldefense",
          # Proofpoint URL Defense / Targeted Attack Protection sandboxes rewritten links at delivery.
          "Proofpoint TAP sandboxes links"),
    _rule("Mimecast", "scanner", r"Mimecast",
          # Mimecast URL Protect follows links on delivery and on click to check the target.
          "Mimecast URL Protect checks links"),
    _rule("Barracuda", "scanner", r"Barracuda",
          # Barracuda Email Protection (Sentinel, Link Protection) scans links and attachments.
          "Barracuda Link Protection scans links"),
    _rule("Security gateway", "scanner",
          r"Forcepoint|Symantec|IronPort|Trend ?Micro|Sophos|FireEye|Trellix|Cisco-?ESA|Zscaler|Cloudmark",
          # Other gateways that scan links in transit and name themselves in the UA.
          "mail security gateways scan links"),
    _rule("Link preview", "bot",
          r"facebookexternalhit|Slack(bot)?-LinkExpanding|Slackbot|Twitterbot|LinkedInBot|WhatsApp/|TelegramBot|"
          r"Discordbot|SkypeUriPreview|Iframely|embedly|redditbot",
          # A forwarded link pasted in chat gets unfurled: a fetch by the app, not a click by the recipient.
          "chat apps unfurl forwarded links"),
    _rule("HTTP library", "bot",
          r"^(curl|Wget|python-requests|python-urllib|Python/[0-9.]+ aiohttp|aiohttp|httpx|Go-http-client|"
          r"okhttp|Java/|Apache-HttpClient|libwww-perl|node-fetch|axios|undici|PostmanRuntime|Ruby|PHP)",
          # Scripts, uptime checks and tests: no person behind them.
          "programmatic HTTP clients"),
    _rule("Headless browser", "bot", r"HeadlessChrome|PhantomJS|Puppeteer|Playwright|Selenium|Lighthouse",
          # Sandboxes and scrapers drive real browser engines but usually leave these markers.
          "automated browsers"),
    _rule("Crawler", "bot", r"(?<!cu)bot\b|bot/|crawl|spider|slurp|scanner|preview|validator|monitor|checker|archiver",
          # The generic catch-all: crawlers and checkers conventionally say so ("(?<!cu)": Cubot is a
          # phone brand, and its phones' browsers say so too).
          "self-declared crawlers"),
)
# fmt: on


def classify(user_agent: str, method: str = "GET", kind: Literal["open", "click"] = "open") -> Bot | None:
    """The automated fetcher behind an open (pixel) or click request, or ``None`` when it looks like a
    person's own mail client or browser."""
    if method == "HEAD":
        # A person's mail client or browser GETs; link checkers ask HEAD to see where a link leads.
        return Bot("HEAD request", "scanner")
    user_agent = user_agent.strip()
    if not user_agent:
        # Every real mail client and browser sends a User-Agent.
        return Bot("no User-Agent", "bot")
    for rule in RULES:
        if (rule.only is None or rule.only == kind) and rule.user_agent.search(user_agent):
            return Bot(rule.name, rule.kind)
    return None
