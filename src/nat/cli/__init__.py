"""The ``nat`` command. Each module of this package adds its subcommands with ``register``.

The CLI is thin: a subcommand parses arguments, calls a library function and prints the result.
Every error a user can cause ends in one line naming the input and a non-zero exit status: bad
option values are refused where they are parsed (the argument types below, one-line parser
errors), and expected failures of the library (bad data, a mismatched checkpoint, an unwritable
directory) are raised as :class:`CLIError`, ``ValueError`` or ``OSError`` and printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import pkgutil
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "CLIError",
    "Parser",
    "add_overrides",
    "add_run_arguments",
    "build_parser",
    "collect_overrides",
    "fraction",
    "main",
    "non_negative_int",
    "one_line",
    "parse_sets",
    "positive_float",
    "positive_int",
    "saved_config",
]

_MAX_MESSAGE = 1000


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) naming the option."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: object) -> str:
    """``text`` with its whitespace folded into one line (long messages are cut)."""
    folded = " ".join(str(text).split())
    return folded if len(folded) <= _MAX_MESSAGE else folded[: _MAX_MESSAGE - 3] + "..."


def _number(
    parse: Callable[[str], float], rule: str, ok: Callable[[float], bool]
) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return value

    convert.__name__ = rule
    return convert


positive_int = _number(int, "an integer >= 1", lambda v: v >= 1)
non_negative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _number(float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)
fraction = _number(float, "a number in (0, 1]", lambda v: 0 < v <= 1)


def add_run_arguments(parser: argparse.ArgumentParser, set_example: str) -> None:
    """The options every ``train`` subcommand shares: ``--set`` (read by :func:`parse_sets`),
    ``--resume``, ``--json``, ``--no-progress`` and ``--debug``."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override any setting (YAML value), e.g. --set {set_example}",
    )
    parser.add_argument(
        "--resume", default=None, help="checkpoint to resume (its settings are used)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


Override = tuple[str, Callable[[str], Any], str]
"""A ``train`` option that overrides one setting of the recipe: (flag, type, help)."""


def add_overrides(parser: argparse.ArgumentParser, options: tuple[Override, ...]) -> None:
    """One option per entry, ``None`` when not given (the recipe's value is kept)."""
    for flag, type_, help_ in options:
        parser.add_argument(flag, type=type_, default=None, help=help_)


def collect_overrides(
    args: argparse.Namespace, options: tuple[Override, ...], **flags: Any
) -> dict[str, Any]:
    """The settings the command line gives: ``options`` and ``flags`` that were set (not
    ``None``), then every ``--set KEY=VALUE`` (so ``--set KEY=null`` can set ``None``)."""
    keys = [flag[2:].replace("-", "_") for flag, _, _ in options]
    given = {key: getattr(args, key) for key in keys} | flags
    overrides = {key: value for key, value in given.items() if value is not None}
    overrides.update(parse_sets(args.set))
    return overrides


def saved_config(checkpoint: str) -> dict[str, Any]:
    """The settings a training checkpoint was written with (``--resume`` without ``--config``)."""
    from ..engine import load_checkpoint

    saved = load_checkpoint(checkpoint).get("config")
    if saved is None:
        raise CLIError(f"{checkpoint} is not a training checkpoint; cannot resume")
    return saved


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as settings: values parsed as YAML, ``-`` in keys read as ``_``."""
    import yaml

    from ..tasks.classification.config import yaml_problem

    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--set {item!r} must look like KEY=VALUE")
        try:
            values[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise CLIError(f"--set {item!r}: not a YAML value ({yaml_problem(err)})") from None
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``nat models | head -1``): not an error; silence the final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, ValueError, OSError, RuntimeError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"nat {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nat {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
