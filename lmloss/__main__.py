"""`lmloss` and `python -m lmloss`: one entry point, one sub-command per job.

Exit codes follow the checker's contract: 0 success, 1 a clause failed (or the job failed),
2 the arguments or the SPEC could not be used (argparse also exits 2 on bad arguments).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each sub-command module exposes add_parser(subparsers), which registers the command and
# sets `run` (args -> exit code) as its default. Imported when the parser is built: they import
# torch, and `check` first starts its workers' forkserver (see main).
_COMMANDS = ("lmloss._oracle_cli", "lmloss._check_cli", "lmloss._train_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmloss",
        description="Reference oracle and conformance checker for language-model cross-entropy.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        importlib.import_module(command).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["check"] and not {"-h", "--help"} & set(arguments):
        # The workers' forkserver imports torch and the catalogue while this process does the
        # same below (the package imports nothing until asked): about 1.5 s sooner to the first
        # clause on two cores.
        from properties.engine import forkserver

        forkserver.start()
    args = build_parser().parse_args(arguments)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
