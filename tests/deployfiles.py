"""The deployment files read as data: Dockerfile instructions, compose.yaml, haproxy.cfg.

Shared by ``tests/unit/test_deploy.py`` (what the files say) and ``tests/e2e/test_deploy.py``
(running what they say: the image's health check, HAProxy's routing).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from pydantic import AliasChoices

from charging_api.cli import _parser
from charging_api.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"

#: Settings and flags the deploy files may name before the code knows them (none now: every
#: key and flag they use is checked against config.py and the CLI parser).
PENDING_KEYS: frozenset[str] = frozenset()
PENDING_FLAGS: frozenset[str] = frozenset()


def settings_keys() -> set[str]:
    """Every environment key ``Settings`` reads (aliases included)."""
    keys: set[str] = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            keys |= {choice for choice in alias.choices if isinstance(choice, str)}
        else:
            keys.add(name.upper())
    return keys


def _serve_options() -> set[str]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices["serve"]._option_string_actions)


def parse_command(argv: list[str]) -> argparse.Namespace:
    """``argv`` (after ``charging-api``) through the real parser; a pending flag this code does
    not know yet is set aside with its value (see :data:`PENDING_FLAGS`)."""
    args = list(argv)
    known = _serve_options()
    for flag in PENDING_FLAGS - known:
        if flag in args:
            at = args.index(flag)
            del args[at : at + 2]
    return _parser().parse_args(args)


@dataclass
class Instruction:
    keyword: str
    arguments: str
    stage: int  # 0 for the first FROM's stage

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD / ENTRYPOINT / HEALTHCHECK ... CMD."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3 :]
        found = json.loads(text.strip())
        assert isinstance(found, list) and all(isinstance(a, str) for a in found)
        return found


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    stage = -1
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, arguments.strip(), stage))
    return instructions


def dockerfile_env() -> dict[str, str]:
    """``ENV`` of the last stage (``KEY=value`` pairs)."""
    last = max(i.stage for i in dockerfile())
    pairs: dict[str, str] = {}
    for instruction in dockerfile():
        if instruction.keyword == "ENV" and instruction.stage == last:
            for item in instruction.arguments.split():
                key, _, value = item.partition("=")
                pairs[key] = value
    return pairs


def healthcheck_code() -> str:
    """The Python program the image's HEALTHCHECK runs (``python -c CODE``)."""
    (check,) = [i for i in dockerfile() if i.keyword == "HEALTHCHECK"]
    argv = check.exec_form()
    assert argv[:2] == ["python", "-c"], argv
    return argv[2]


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@dataclass
class Backend:
    name: str
    servers: list[tuple[str, str, int, int | None]] = field(default_factory=list)
    #: (name, host, port, check port)
    lines: list[str] = field(default_factory=list)


@dataclass
class HaproxyConfig:
    defaults: list[str]
    frontend: list[str]
    backends: dict[str, Backend]

    def timeout(self, name: str) -> float:
        """A ``timeout NAME`` of the defaults section, in seconds."""
        for line in self.defaults:
            parts = line.split()
            if parts[:2] == ["timeout", name]:
                return _haproxy_seconds(parts[2])
        raise KeyError(name)

    def bind_port(self) -> int:
        (bind,) = [line for line in self.frontend if line.startswith("bind ")]
        return int(bind.split()[1].rsplit(":", 1)[1])


def _haproxy_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", text)
    assert match, text
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2] or "ms"]
    return int(match[1]) * unit


def haproxy_config(text: str | None = None) -> HaproxyConfig:
    """The sections of ``haproxy.cfg`` that matter here, as lines without comments."""
    sections: dict[str, list[str]] = {}
    current = ""
    source = HAPROXY_CFG.read_text(encoding="utf-8") if text is None else text
    for raw in source.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not raw[0].isspace():
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(line.strip())
    backends: dict[str, Backend] = {}
    for header, lines in sections.items():
        if header.startswith("backend "):
            backend = Backend(header.split()[1], lines=lines)
            for line in lines:
                parts = line.split()
                if parts[0] == "server":
                    host, port = parts[2].rsplit(":", 1)
                    check_port = int(parts[parts.index("port") + 1]) if "port" in parts else None
                    backend.servers.append((parts[1], host, int(port), check_port))
            backends[backend.name] = backend
    (frontend,) = [lines for header, lines in sections.items() if header.startswith("frontend ")]
    return HaproxyConfig(sections["defaults"], frontend, backends)


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
