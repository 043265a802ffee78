"""``charging-api``: serve | simulate | token | idtags | chargepoints.

Builds Settings (one clear line and exit code 2 on a bad value) and hands over to ``app``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from charging_api import __version__, app, logs
from charging_api.config import ConfigError, Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="charging-api",
        description="EV charging for apps (JSON over WebSocket) with an OCPP 1.6-J central system.",
    )
    parser.add_argument("--version", action="version", version=f"charging-api {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the app API and the OCPP central system (foreground)")

    sim = sub.add_parser("simulate", help="run simulated OCPP 1.6-J charge points")
    sim.add_argument("--count", type=int, default=1, help="number of charge points (default 1)")
    sim.add_argument("--url", default="ws://localhost:8081/ocpp", help="central system base URL")
    sim.add_argument("--prefix", default="SIM-", help="charge point id prefix (default SIM-)")
    sim.add_argument(
        "--meter-interval", type=float, default=10.0, help="seconds between MeterValues"
    )
    sim.add_argument("--connectors", type=int, default=1, help="connectors per charge point")

    demo = sub.add_parser(
        "demo",
        help="against a running server: one simulated charge point, one app user, start to stop",
    )
    demo.add_argument("--url", default="ws://localhost:8082/ws", help="app API WebSocket URL")
    demo.add_argument("--ocpp-url", default="ws://localhost:8081/ocpp", help="OCPP base URL")
    demo.add_argument("--meter-updates", type=int, default=3, help="meter pushes to show")

    tok = sub.add_parser("token", help="print a JWT signed with JWT_SECRET")
    tok.add_argument("--user", required=True, help="user id (claim sub)")
    tok.add_argument("--id-tag", help="id tag the user charges with (claim idTag)")
    tok.add_argument("--role", choices=["user", "admin"], help="role claim")
    tok.add_argument("--expires-in", type=float, help="seconds (default JWT_EXPIRES_IN)")

    tags = sub.add_parser("idtags", help="manage id tags").add_subparsers(
        dest="action", required=True
    )
    add_tag = tags.add_parser("add", help="register an id tag to a user")
    add_tag.add_argument("tag")
    add_tag.add_argument("--user", help="owner user id")
    add_tag.add_argument(
        "--status", default="Accepted", choices=["Accepted", "Blocked", "Expired", "Invalid"]
    )
    list_tags = tags.add_parser("list", help="list a user's id tags")
    list_tags.add_argument("--user", required=True)

    cps = sub.add_parser("chargepoints", help="manage charge points").add_subparsers(
        dest="action", required=True
    )
    add_cp = cps.add_parser("add", help="register a charge point (required in production)")
    add_cp.add_argument("id")
    add_cp.add_argument("--password", help="Basic-auth password (OCPP Security Profile 1/2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings: Settings = load_settings()
    except ConfigError as exc:
        print(f"charging-api: {exc}", file=sys.stderr)
        return 2
    secrets = [settings.jwt_secret, settings.stats_api_key or "", settings.ws_gateway_api_key or ""]
    logs.configure(settings.log_level, settings.log_file, secrets)
    try:
        return _run(args, settings)
    except app.StorageUnavailable as exc:  # a database we cannot use: one line, not a trace
        print(f"charging-api: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        if settings.ws_gateway_url:
            print(
                "charging-api: WS_GATEWAY_URL is for the split deployment, which this version does "
                "not have; the OCPP central system runs in this process (OCPP_HOST/OCPP_PORT)",
                file=sys.stderr,
            )
        app.run(app.serve(settings))
        return 0
    if args.command == "simulate":
        app.run(
            app.simulate(args.url, args.count, args.prefix, args.meter_interval, args.connectors)
        )
        return 0
    if args.command == "demo":
        app.run(app.demo(settings, args.url, args.ocpp_url, args.meter_updates))
        return 0
    if args.command == "token":
        if not settings.jwt_algorithm.startswith("HS"):
            print(
                f"charging-api: token signs with JWT_SECRET; JWT_ALGORITHM={settings.jwt_algorithm} "
                "tokens come from your identity provider",
                file=sys.stderr,
            )
            return 2
        print(app.make_token(settings, args.user, args.id_tag, args.role, args.expires_in))
        return 0
    if args.command == "idtags":
        if args.action == "add":
            app.run(app.add_id_tag(settings, args.tag, args.user, args.status))
            print(f"id tag {args.tag} registered" + (f" to {args.user}" if args.user else ""))
        else:
            for tag in app.run(app.list_id_tags(settings, args.user)):
                print(f"{tag.tag}\t{tag.status.value}")
        return 0
    if args.command == "chargepoints":
        app.run(app.add_charge_point(settings, args.id, args.password))
        print(f"charge point {args.id} registered")
        return 0
    return 2  # pragma: no cover - argparse enforces the choices
