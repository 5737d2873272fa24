"""The ``nat`` command. Each module of this package adds its subcommands with ``register``.

The CLI is thin: a subcommand parses arguments, calls a library function and prints the result.
Expected failures (bad data, a mismatched checkpoint) are raised as :class:`CLIError` or
``ValueError``/``FileNotFoundError`` and reported as one line with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

__all__ = ["CLIError", "build_parser", "main"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nat", description="Neighborhood Attention Transformers: models, training, benchmarks."
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


def _version() -> str:
    from .. import __version__

    return f"nat {__version__}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nat`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError, RuntimeError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"nat {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nat {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
