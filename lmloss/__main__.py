"""`lmloss` and `python -m lmloss`: one entry point, one sub-command per job.

Exit codes follow the checker's contract: 0 success, 1 a clause failed (or the job failed),
2 the arguments or the SPEC could not be used (argparse also exits 2 on bad arguments).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lmloss import _check_cli, _oracle_cli, _train_cli

# Each sub-command module exposes add_parser(subparsers), which registers the command and
# sets `run` (args -> exit code) as its default.
_COMMANDS = (_oracle_cli, _check_cli, _train_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmloss",
        description="Reference oracle and conformance checker for language-model cross-entropy.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
