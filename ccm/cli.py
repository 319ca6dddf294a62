"""``cloudsigma-ccm`` command line: ``run`` (default) and ``doctor``.

Flags are generated from :class:`ccm.config.Settings`, so every setting is both ``CLOUDSIGMA_<NAME>`` and
``--<name>``; flags win over the environment. Configuration errors (including an unusable kubeconfig) print one
line and exit with code 2; any other exception that escapes start-up prints one line, through the log redactor,
and exits with code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import typing
from collections.abc import Sequence
from typing import Any

import structlog
from pydantic.fields import FieldInfo

from ccm.config import ConfigError, Settings, env_name, flag_name, load_settings, secrets_of
from ccm.logging import configure_logging

EXIT_FAILURE = 1
EXIT_CONFIG = 2
COMMANDS = ("run", "doctor")


def _is_bool(info: FieldInfo) -> bool:
    return info.annotation is bool


def _default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "auto"
    if info.default is None:
        return "unset"
    return str(info.default)


def build_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"cloudsigma-ccm{'' if command == 'run' else ' ' + command}",
        description=("Kubernetes cloud controller manager for CloudSigma. Every flag is also an environment "
                     "variable CLOUDSIGMA_<FLAG_NAME>."),
        argument_default=argparse.SUPPRESS,
    )
    for name, info in Settings.model_fields.items():
        help_text = f"{info.description or ''} [env {env_name(name)}; default {_default_text(info)}]"
        help_text = help_text.replace("%", "%%")
        if _is_bool(info):
            parser.add_argument(flag_name(name), dest=name, nargs="?", const="true", metavar="BOOL", help=help_text)
        else:
            parser.add_argument(flag_name(name), dest=name, metavar=_metavar(info), help=help_text)
    if command == "doctor":
        parser.add_argument("--output", choices=("table", "json"), default="table", help="Output format.")
        parser.add_argument("--all-tenants", dest="all_tenants", action="store_true", default=False,
                            help="Fleet mode: list every tenant of the management cluster (owning replica, nodes, "
                                 "uninitialized nodes, last sync, credential state, last error); the default in "
                                 "fleet mode.")
    return parser


def _metavar(info: FieldInfo) -> str:
    ann = info.annotation
    if ann is float:
        return "DURATION"
    if ann is int:
        return "N"
    args = typing.get_args(ann)
    if args and all(isinstance(a, str) for a in args):
        return "{" + ",".join(args) + "}"
    return "VALUE"


def parse(argv: Sequence[str]) -> tuple[str, dict[str, Any]]:
    args = list(argv)
    command = "run"
    if args and args[0] in COMMANDS:
        command = args.pop(0)
    namespace = build_parser(command).parse_args(args)
    return command, vars(namespace)


#: Flags whose value is a secret: a command line is readable by anyone on the node (/proc/<pid>/cmdline).
SECRET_FLAGS = {"client_secret": "client_secret_file", "password": "password_file",
                "static_token": "static_token_file"}


def warn_secret_flags(values: dict[str, Any]) -> None:
    """Secrets given as flags keep working, but say once where they belong."""
    log = structlog.get_logger("ccm.cli")
    for name, file_name in SECRET_FLAGS.items():
        if name in values:
            log.warning("secret_on_command_line", flag=flag_name(name),
                        why="command lines are readable by every process on the node (/proc/<pid>/cmdline)",
                        instead=f"{env_name(file_name)} / {flag_name(file_name)} (a mounted Secret file, re-read "
                                "when it is rotated)")


def main(argv: Sequence[str] | None = None) -> int:
    command, values = parse(sys.argv[1:] if argv is None else argv)
    output = values.pop("output", "table")
    all_tenants = bool(values.pop("all_tenants", False))
    try:
        settings = load_settings(values)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    redactor = configure_logging(level=settings.log_level, fmt=settings.log_format)
    for secret in secrets_of(settings):
        redactor.add(secret)
    warn_secret_flags(values)
    try:
        if command == "doctor":
            from ccm.doctor import run_doctor

            return asyncio.run(run_doctor(settings, redactor, output=output, all_tenants=all_tenants))
        if settings.mode == "fleet":
            from ccm.fleet.process import run_fleet

            return asyncio.run(run_fleet(settings, redactor))
        from ccm.process.allocator import return_large_buffers, small_tls_read_buffers
        from ccm.single.process import run

        # Freed TLS read buffers go back to the OS, and each is 64 KiB instead of asyncio's 256 KiB, as in the fleet
        # (ccm/fleet/process.py): 5 MiB of an idle single-tenant daemon's RSS.
        return_large_buffers()
        small_tls_read_buffers()
        return asyncio.run(run(settings, redactor))
    except ConfigError as exc:  # found while starting: an unusable kubeconfig
        print(redactor.redact_text(str(exc)), file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:  # provider registry / chain construction problems are configuration errors
        print(redactor.redact_text(f"configuration error: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:  # anything else that escaped start-up: one line, through the redactor
        print(redactor.redact_text(f"cloudsigma-ccm failed: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
