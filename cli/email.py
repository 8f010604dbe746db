"""``journeys email …``: the signing key a sender needs, and signed links made from the command line.

``journeys email key --project P`` prints the project's email signing key (made on first use);
``--rotate`` replaces it, the old one verifying for ``--grace-days`` more. ``journeys email link`` signs
one open-pixel or click URL, or, with ``--csv``, a whole send list: rows of ``user_id,url[,campaign]``
in, the same rows with ``click_url`` and ``open_url`` out, on stdout. A list with any bad row prints the
problems and no links at all, so half a send list never goes out signed.

PostgreSQL only, like the other management commands: it works beside a running ``journeys up``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import timedelta
from typing import TextIO

import orjson

from cli.commands import Commands
from cli.context import open_project
from journeys.config import Settings

MAX_REPORTED_PROBLEMS = 20


def add_commands(commands: Commands) -> None:
    email = commands.group("email", help="email open pixels and tracked links", dest="email_command")
    key = email.add("key", run, help="print the project's email signing key (made on first use)")
    key.add_argument("--project", required=True, help="project name or id")
    key.add_argument(
        "--rotate",
        action="store_true",
        help="replace the key; links signed with the old one keep working for --grace-days",
    )
    key.add_argument(
        "--grace-days",
        type=float,
        default=30.0,
        help="how long a rotated-out key still verifies (default 30; 0 = stop now)",
    )
    key.add_argument("--json", action="store_true", help="print the project id and key(s) as JSON")

    link = email.add("link", run, help="sign a click link or open pixel; --csv for a whole send list")
    link.add_argument("--project", required=True, help="project name or id")
    link.add_argument("--campaign", help="campaign name (required unless every CSV row has one)")
    link.add_argument("--user", help="the customer's user id (single link)")
    link.add_argument("--url", help="target of the click link (http/https); without it, the open-pixel URL is printed")
    link.add_argument("--csv", metavar="FILE", help="CSV with a header: user_id,url[,campaign]; - for stdin")
    link.add_argument(
        "--prop",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra property carried by the link (repeatable)",
    )
    link.add_argument(
        "--base-url",
        help="the collector's public URL as recipients reach it (default: this machine's collector address)",
    )


async def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.email_command == "key":
        return await _key(settings, args)
    return await _link(settings, args)


async def _key(settings: Settings, args: argparse.Namespace) -> int:
    from collector.email_keys import current_key, list_keys, rotate_key

    if args.grace_days < 0:
        print("error: --grace-days must be 0 or more", file=sys.stderr)
        return 2

    async with open_project(settings, args.project) as project:
        if args.rotate:
            await rotate_key(project.conn, project.id, timedelta(days=args.grace_days))
        else:
            await current_key(project.conn, project.id)
        keys = await list_keys(project.conn, project.id)
    project_id = project.id
    # Current first; every key after it is retiring, so has the time it stops verifying.
    current = keys[0]
    older = [(k.secret, k.retires_at) for k in keys[1:] if k.retires_at is not None]
    if args.json:
        print(
            orjson.dumps(
                {
                    "project_id": project_id,
                    "key": current.secret,
                    "still_verifying": [{"key": secret, "until": until.isoformat()} for secret, until in older],
                }
            ).decode()
        )
        return 0
    print(f"project   {project_id}")
    print(f"email key {current.secret}   (signs open pixels and click links; keep it secret)")
    for secret, until in older:
        print(f"older key {secret[:8]}…   still verifies until {until:%Y-%m-%d %H:%M %Z}")
    return 0


def _props(pairs: list[str]) -> dict[str, str]:
    props: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--prop {pair!r}: expected KEY=VALUE")
        props[name] = value
    return props


def _base_url(settings: Settings, given: str | None) -> str:
    if given:
        return given
    host = "127.0.0.1" if settings.collector_host in ("0.0.0.0", "::") else settings.collector_host
    base = f"http://{host}:{settings.collector_port}"
    print(
        f"note: links point to {base}; pass --base-url with the collector's public URL for real mail", file=sys.stderr
    )
    return base


async def _link(settings: Settings, args: argparse.Namespace) -> int:
    from collector.email_keys import current_key
    from collector.email_tokens import TokenError, check_url

    if bool(args.csv) == bool(args.user):
        print("error: give --user (one link) or --csv FILE (a send list), not both or neither", file=sys.stderr)
        return 2
    if args.csv and args.url:
        print("error: with --csv the URLs come from its url column, not --url", file=sys.stderr)
        return 2
    if args.user and not args.campaign:
        print("error: --campaign is required", file=sys.stderr)
        return 2
    try:
        props = _props(args.prop)
        base = _base_url(settings, args.base_url)
        check_url(base, "--base-url")
    except TokenError as exc:
        print(f"error: --base-url: {exc.reason}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = base.rstrip("/")

    async with open_project(settings, args.project) as project:
        key = await current_key(project.conn, project.id)
    signer = _Signer(key, project.id, base, props)
    if args.user:
        try:
            print(
                signer.click(args.user, args.campaign, args.url) if args.url else signer.open(args.user, args.campaign)
            )
        except TokenError as exc:
            print(f"error: {exc.field}: {exc.reason}", file=sys.stderr)
            return 1
        return 0
    source = sys.stdin if args.csv == "-" else open(args.csv, encoding="utf-8-sig", newline="")
    try:
        return _sign_csv(signer, source, args.campaign, sys.stdout)
    finally:
        if source is not sys.stdin:
            source.close()


class _Signer:
    def __init__(self, key: str, project_id: str, base: str, props: dict[str, str]):
        self.key, self.project_id, self.base, self.props = key, project_id, base, props

    def open(self, user: str, campaign: str) -> str:
        from collector.email_tokens import sign

        return f"{self.base}/v1/email/open/{sign(self.key, self.project_id, 'open', user, campaign, None, self.props)}"

    def click(self, user: str, campaign: str, url: str) -> str:
        from collector.email_tokens import sign

        return f"{self.base}/v1/email/click/{sign(self.key, self.project_id, 'click', user, campaign, url, self.props)}"


def _sign_csv(signer: _Signer, source: TextIO, default_campaign: str | None, out: TextIO) -> int:
    """Sign every row, or print every problem (with its line) and nothing else."""
    from collector.email_tokens import TokenError

    reader = csv.DictReader(source)
    columns = [c.strip() for c in reader.fieldnames or []]
    if "user_id" not in columns:
        print("error: the CSV needs a header row with a user_id column (and url, campaign if wanted)", file=sys.stderr)
        return 1
    reader.fieldnames = columns
    signed: list[list[str]] = []
    problems: list[str] = []
    for row in reader:
        line = reader.line_num
        user = (row.get("user_id") or "").strip()
        url = (row.get("url") or "").strip()
        campaign = (row.get("campaign") or "").strip() or default_campaign
        if not campaign:
            problems.append(f"line {line}: no campaign (add a campaign column or --campaign)")
            continue
        try:
            click = signer.click(user, campaign, url) if url else ""
            pixel = signer.open(user, campaign)
        except TokenError as exc:
            problems.append(f"line {line}: {exc.field}: {exc.reason}")
            continue
        signed.append([user, campaign, url, click, pixel])
    if problems:
        for problem in problems[:MAX_REPORTED_PROBLEMS]:
            print(f"error: {problem}", file=sys.stderr)
        if len(problems) > MAX_REPORTED_PROBLEMS:
            print(f"error: … and {len(problems) - MAX_REPORTED_PROBLEMS} more", file=sys.stderr)
        print(f"error: {len(problems)} bad row(s); nothing signed", file=sys.stderr)
        return 1
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["user_id", "campaign", "url", "click_url", "open_url"])
    writer.writerows(signed)
    return 0
