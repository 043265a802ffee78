"""``charging-api``: serve | db | simulate | demo | token | idtags | chargepoints | transactions | tariffs.

Builds Settings (one clear line and exit code 2 on a bad value) and hands over to ``app``.
Defaults that depend on the configuration (the URLs ``simulate`` and ``demo`` connect to) are
computed from it, so ``--help`` shows the ones that will be used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from charging_api import __version__, app, logs
from charging_api.config import ConfigError, NodeRole, Settings, load_settings, parse_duration

CONFIGURATION_HELP = (
    "Configuration comes from the environment or a .env file in the working directory: every "
    "key with its default and meaning is in the Configuration table of README.md (limits in "
    "docs/security.md); .env.example has them all."
)

#: Bind-anywhere addresses: a client on this machine connects to localhost instead.
_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


def _client_url(host: str, port: int, tls: bool, path: str) -> str:
    """The URL a client on this machine uses to reach a door bound to ``host:port``."""
    host = "localhost" if host in _ANY_ADDRESS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'wss' if tls else 'ws'}://{host}:{port}{path}"


def ocpp_url(settings: Settings | None) -> str:
    """The configured OCPP door's base URL (``OCPP_HOST``, ``OCPP_PORT``, ``OCPP_TLS_CERT``)."""
    if settings is None:
        return "ws://localhost:8081/ocpp"
    tls = settings.ocpp_tls_cert is not None
    return _client_url(settings.ocpp_host, settings.ocpp_port, tls, "/ocpp")


def app_url(settings: Settings | None) -> str:
    """The configured app door's URL (``WS_API_HOST``, ``WS_API_PORT``, ``WS_API_TLS_CERT``)."""
    if settings is None:
        return "ws://localhost:8082/ws"
    tls = settings.ws_api_tls_cert is not None
    return _client_url(settings.ws_api_host, settings.ws_api_port, tls, "/ws")


def _expiry(text: str) -> float:
    """``token --expires-in``: a duration as JWT_EXPIRES_IN takes it (``3600``, ``30m``, ``7d``)."""
    try:
        return parse_duration(text, "s")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive duration; use e.g. 3600, 30m, 24h or 7d"
        ) from None


def _parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="charging-api",
        description="EV charging for apps (JSON over WebSocket) with an OCPP 1.6-J central system.",
    )
    parser.add_argument("--version", action="version", version=f"charging-api {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the app API and the OCPP central system (foreground)",
        description="Run the app API (/ws, /health, /api/stats) and the OCPP 1.6-J central "
        "system (/ocpp/{id}) in one process until SIGTERM or SIGINT; with --role, one part of "
        "a cluster on REDIS_URL and a PostgreSQL DATABASE_URL (docs/scaling.md).",
        epilog=CONFIGURATION_HELP,
    )
    serve.add_argument(
        "--role",
        choices=[role.value for role in NodeRole],
        help="all: both doors (default, or ROLE); gateway: the OCPP door only; api: the app "
        "door, REST and console",
    )

    db = sub.add_parser(
        "db",
        help="the database schema: upgrade it, or show its revision",
        description="Alembic revisions shipped with this version, run on DATABASE_URL. The "
        "server creates an empty database itself, and refuses to start on an older schema "
        "until `charging-api db upgrade` has run.",
        epilog=CONFIGURATION_HELP,
    ).add_subparsers(dest="action", required=True)
    db.add_parser(
        "upgrade",
        help="bring the schema to this version's head, in one transaction (a no-op at head)",
    )
    db.add_parser(
        "current",
        help="print the schema's revision and whether it is at head (exit 0 at head, 1 if not)",
    )

    sim = sub.add_parser(
        "simulate", help="run simulated OCPP 1.6-J charge points", epilog=CONFIGURATION_HELP
    )
    sim.add_argument("--count", type=int, default=1, help="number of charge points (default 1)")
    default_ocpp = ocpp_url(settings)
    sim.add_argument(
        "--url",
        default=default_ocpp,
        help=f"central system base URL (default {default_ocpp}: OCPP_HOST and OCPP_PORT)",
    )
    sim.add_argument("--prefix", default="SIM-", help="charge point id prefix (default SIM-)")
    sim.add_argument(
        "--meter-interval", type=float, default=10.0, help="seconds between MeterValues"
    )
    sim.add_argument("--connectors", type=int, default=1, help="connectors per charge point")

    demo = sub.add_parser(
        "demo",
        help="against a running server: one simulated charge point, one app user, start to stop",
    )
    default_app = app_url(settings)
    demo.add_argument(
        "--url",
        default=default_app,
        help=f"app API WebSocket URL (default {default_app}: WS_API_HOST and WS_API_PORT)",
    )
    demo.add_argument(
        "--ocpp-url",
        default=default_ocpp,
        help=f"OCPP base URL (default {default_ocpp}: OCPP_HOST and OCPP_PORT)",
    )
    demo.add_argument("--meter-updates", type=int, default=3, help="meter pushes to show")

    tok = sub.add_parser("token", help="print a JWT signed with JWT_SECRET")
    tok.add_argument("--user", required=True, help="user id (claim sub)")
    tok.add_argument("--id-tag", help="id tag the user charges with (claim idTag)")
    tok.add_argument("--role", choices=["user", "admin"], help="role claim")
    tok.add_argument(
        "--group",
        action="append",
        default=[],
        help="a group the user belongs to (claim groups; repeat for several)",
    )
    tok.add_argument(
        "--expires-in",
        type=_expiry,
        help="lifetime: seconds or 30m, 24h, 7d (default JWT_EXPIRES_IN)",
    )

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

    txs = sub.add_parser("transactions", help="manage transactions").add_subparsers(
        dest="action", required=True
    )
    close = txs.add_parser(
        "close",
        help="close an open transaction the charge point forgot (audited); through the running "
        "server if one answers, else in the database",
    )
    close.add_argument("id", type=int, help="transaction id")
    close.add_argument(
        "--meter-stop",
        type=int,
        metavar="WH",
        help="meter reading to stop at, in Wh (default: the last known reading)",
    )
    close.add_argument(
        "--url", help="the server's app WebSocket URL (default: from WS_API_HOST/WS_API_PORT)"
    )
    tariffs = sub.add_parser(
        "tariffs", help="manage tariffs and their assignments (docs/sessions.md)"
    ).add_subparsers(dest="action", required=True)
    tariffs.add_parser("list", help="print the tariffs and assignments as JSON")
    put = tariffs.add_parser("put", help="create or replace a tariff from a JSON file")
    put.add_argument("file", help="the tariff as JSON ('-': standard input)")
    drop = tariffs.add_parser("delete", help="delete a tariff (running sessions keep theirs)")
    drop.add_argument("id")
    assign = tariffs.add_parser("assign", help="assign a tariff to a scope (none: unassign)")
    assign.add_argument("scope", help="default, chargePoint:<id> or user:<id>")
    assign.add_argument("id", nargs="?", help="tariff id (omit to unassign)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings: Settings | None = load_settings()
        problem: ConfigError | None = None
    except ConfigError as exc:  # reported after parsing, so --help and --version still work
        settings, problem = None, exc
    args = _parser(settings).parse_args(argv)
    if settings is None:
        print(f"charging-api: {problem}", file=sys.stderr)
        return 2
    secrets = [settings.jwt_secret, settings.stats_api_key or "", settings.ws_gateway_api_key or ""]
    logs.configure(settings.log_level, settings.log_file, secrets)
    try:
        return _run(args, settings)
    except app.SchemaNotCurrent as exc:  # behind: run `db upgrade`; ahead: a newer release's
        print(f"charging-api: {exc}", file=sys.stderr)
        return 2
    except app.StorageUnavailable as exc:  # a database we cannot use: one line, not a trace
        print(f"charging-api: {exc}", file=sys.stderr)
        return 1


def _db(action: str, settings: Settings) -> int:
    """``db upgrade`` / ``db current``: one line on standard output."""
    if action == "upgrade":
        try:
            before, after = app.run(app.upgrade_database(settings))
        except app.MigrationRefused as exc:
            print(f"charging-api: db upgrade refused, nothing changed: {exc}", file=sys.stderr)
            return 1
        if before.at_head:
            print(f"database schema already at head ({after.describe()}); nothing to do")
        else:
            print(f"database schema upgraded: {before.describe()} -> {after.describe()} (head)")
        return 0
    found = app.run(app.database_revision(settings))
    if found.at_head:
        print(f"{found.describe()} (head)")
        return 0
    print(f"{found.describe()}; head is {found.head}: run charging-api db upgrade")
    return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        if args.role is not None and args.role != settings.role.value:
            try:
                settings = load_settings(role=args.role)
            except ConfigError as exc:
                print(f"charging-api: {exc}", file=sys.stderr)
                return 2
        if settings.ws_gateway_url:
            print(
                "charging-api: WS_GATEWAY_URL is the seed's split deployment; here the split is "
                "`serve --role api` and `serve --role gateway`, which find each other through "
                "REDIS_URL (docs/scaling.md); WS_GATEWAY_URL is not used",
                file=sys.stderr,
            )
        try:
            app.run(app.serve(settings))
        except app.StartupError as exc:
            print(f"charging-api: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "db":
        return _db(args.action, settings)
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
        try:
            token = app.make_token(
                settings, args.user, args.id_tag, args.role, args.expires_in, tuple(args.group)
            )
        except ValueError as exc:
            print(f"charging-api: --expires-in: {exc}", file=sys.stderr)
            return 2
        print(token)
        return 0
    if args.command == "idtags":
        if args.action == "add":
            try:
                app.run(app.add_id_tag(settings, args.tag, args.user, args.status))
            except app.IdTagSpellingConflict as exc:
                print(f"charging-api: {exc}", file=sys.stderr)
                return 1
            print(f"id tag {args.tag} registered" + (f" to {args.user}" if args.user else ""))
        else:
            for tag in app.run(app.list_id_tags(settings, args.user)):
                print(f"{tag.tag}\t{tag.status.value}")
        return 0
    if args.command == "transactions":
        try:
            closed, how = app.run(
                app.close_transaction(settings, args.id, args.meter_stop, args.url)
            )
        except app.CloseFailed as exc:
            print(f"charging-api: transaction {args.id} not closed: {exc}", file=sys.stderr)
            return 1
        print(
            f"transaction {closed['transactionId']} closed {how}: meterStop "
            f"{closed['meterStopWh']} Wh at {closed['stoppedAt']} (closedBy {closed['closedBy']})"
        )
        return 0
    if args.command == "tariffs":
        try:
            text = sys.stdin.read() if getattr(args, "file", None) == "-" else None
            if getattr(args, "file", None) not in (None, "-"):
                with open(args.file, encoding="utf-8") as handle:
                    text = handle.read()
            print(app.run(app.manage_tariffs(settings, args.action, args, text)))
        except (app.TariffCommandFailed, OSError) as exc:
            print(f"charging-api: tariffs {args.action}: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "chargepoints":
        app.run(app.add_charge_point(settings, args.id, args.password))
        print(f"charge point {args.id} registered")
        return 0
    return 2  # pragma: no cover - argparse enforces the choices
