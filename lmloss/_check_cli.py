"""`lmloss check [SPEC ...]`: is this kernel the loss? Exit 0 yes, 1 no, 2 the SPEC is unusable."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from properties.distributed.group import DEFAULT_RANK_SECONDS, RANK_TIMEOUT_ENV
from properties.engine.check import (
    KernelReport,
    SpecError,
    check_device,
    check_kernel,
    choose_dtypes,
    choose_world_size,
    load_kernel,
    select_clauses,
    versions,
)
from properties.engine.defaults import (
    DEFAULT_KERNELS,
    DEFAULT_PROFILE,
    DEFAULT_WORLD_SIZE,
    DEVICES,
    DTYPES,
    PROFILES,
)
from properties.engine.workers import DEFAULT_CALL_SECONDS, WorkerPool, usable_cores

if TYPE_CHECKING:
    from properties.engine.clause import Clause
    from properties.engine.runner import ClauseResult

EXIT_CONFORMS = 0
EXIT_FAILS = 1
EXIT_UNUSABLE = 2
#: The shell's convention for a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="run the property suite against a cross-entropy kernel",
        description=(
            "Run every clause of the lmloss specification against a kernel and report which "
            "hold, with the smallest counterexample for each that fails. A kernel shaped like "
            "torch.nn.functional.cross_entropy gets the CE- clauses; one shaped like "
            "torch.nn.functional.linear_cross_entropy (parameters input, linear_weight, "
            "target; or a KernelSpec with contract='linear') gets the LCE- clauses; a "
            "vocab-parallel one (local_logits, target, vocab_start) the DIST- clauses and a "
            "data-parallel one (local_logits, local_target) the DIST-DP- clauses, run on "
            "--world-size processes. "
            "Exit 0: every applicable clause holds; "
            "1: a clause failed; 2: the SPEC or the arguments cannot be used."
        ),
    )
    parser.add_argument(
        "specs",
        nargs="*",
        metavar="SPEC",
        help=(
            "module:attr of the kernel (a callable or a lmloss.KernelSpec), imported as from "
            f"the current directory; default: {' and '.join(DEFAULT_KERNELS)}"
        ),
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="default: cpu")
    parser.add_argument(
        "--dtype",
        dest="dtypes",
        action="append",
        choices=DTYPES,
        default=[],
        help="repeat for several; default on CPU: float32 and bfloat16",
    )
    parser.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        default=DEFAULT_PROFILE,
        help=(
            "quick (default): a couple of minutes; ci: derandomized and shorter; "
            "thorough: 10,000 examples per clause, steered toward the largest errors"
        ),
    )
    parser.add_argument(
        "--clause",
        dest="clauses",
        action="append",
        default=[],
        metavar="ID",
        help="check only this clause (repeat for several); default: every clause",
    )
    parser.add_argument(
        "-x",
        "--exitfirst",
        action="store_true",
        help="stop at the first clause that fails (the verdict in seconds, the report partial)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=_jobs,
        default="auto",
        metavar="N",
        help="worker processes running clause × dtype jobs at once, or auto: one per usable CPU "
        f"core (the default; {usable_cores()} here); with several, each runs torch on its share "
        "of the cores; -j 1 runs one job at a time with torch's default threads; the report "
        "keeps the clause order",
    )
    parser.add_argument(
        "--call-timeout",
        type=_positive_float,
        default=DEFAULT_CALL_SECONDS,
        metavar="SECONDS",
        help="a kernel call running longer is reported as hung on its clause "
        f"(default {DEFAULT_CALL_SECONDS:g})",
    )
    parser.add_argument(
        "--world-size",
        type=_positive_int,
        default=None,
        metavar="P",
        help="distributed kernels (vocab- or data-parallel): the rank processes to run them on, "
        f"gloo on the CPU, NCCL with --device cuda (default {DEFAULT_WORLD_SIZE}); an error for "
        "any other kernel",
    )
    parser.add_argument(
        "--rank-timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="distributed kernels: a rank that does not answer a call within this is reported "
        f"as hung and every rank is killed (default {DEFAULT_RANK_SECONDS:g}; env "
        f"{RANK_TIMEOUT_ENV})",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the report as JSON, after each clause"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        reports, clauses = _prepare(args)
    except SpecError as exc:
        print(f"lmloss check: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE

    def save() -> None:
        if args.json is not None:
            _write_json(args.json, reports, _exit_code(reports))

    try:
        with WorkerPool(size=args.jobs, call_seconds=args.call_timeout) as pool:
            _check_and_print(
                reports,
                clauses,
                args.profile,
                exit_first=args.exitfirst,
                after_each=save,
                pool=pool,
            )
    except KeyboardInterrupt:
        print("\nlmloss check: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    exit_code = _exit_code(reports)
    if len(reports) > 1:
        verdict = (
            "every kernel conforms" if exit_code == EXIT_CONFORMS else "NOT every kernel conforms"
        )
        print(f"\nlmloss check: {verdict} (exit {exit_code})")
    if args.json is not None:
        _write_json(args.json, reports, exit_code, complete=True)
    return exit_code


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _jobs(text: str) -> int:
    """``--jobs``: a positive number, or auto (one worker per usable core)."""
    if text.strip().lower() == "auto":
        return usable_cores()
    try:
        return _positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or auto, not {text!r}") from None


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _exit_code(reports: list[KernelReport]) -> int:
    return EXIT_CONFORMS if all(report.passed for report in reports) else EXIT_FAILS


def _write_json(
    path: Path, reports: list[KernelReport], exit_code: int, *, complete: bool = False
) -> None:
    """Write the report so far (rewritten after each clause: a stopped run keeps what it found),
    through a temporary file, so a reader never sees half a report."""
    from lmloss._check_report import as_data

    data = as_data(reports, exit_code, complete=complete)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _prepare(args: argparse.Namespace) -> tuple[list[KernelReport], tuple[Clause, ...]]:
    """Everything that can be wrong with the command line, found before any clause runs."""
    kernels = [load_kernel(spec) for spec in args.specs or DEFAULT_KERNELS]
    clauses = select_clauses(args.clauses)
    if args.json is not None and not args.json.parent.is_dir():
        raise SpecError(f"--json {args.json}: directory {args.json.parent} does not exist")
    reports = []
    for kernel in kernels:
        check_device(kernel, args.device)
        dtypes, skipped = choose_dtypes(kernel, args.dtypes, args.device)
        report = KernelReport(kernel, args.device, args.profile, dtypes, skipped)
        report.world_size = choose_world_size(kernel, args.world_size)
        report.rank_seconds = args.rank_timeout
        report.versions = versions(kernel)
        reports.append(report)
    return reports, clauses


def _check_and_print(
    reports: list[KernelReport],
    clauses: tuple[Clause, ...],
    profile: str,
    *,
    exit_first: bool = False,
    after_each: Callable[[], None] = lambda: None,
    pool: WorkerPool | None = None,
) -> None:
    """Run the clauses, printing each result as it comes (the report is the progress), and the
    story of each failure right after its line, a cause shared with an earlier one in a line."""
    from lmloss import _check_report as render

    examples = PROFILES[profile]["max_examples"]
    # On a terminal, say which clause is running; the result line then overwrites it.
    show_running = sys.stderr.isatty()

    def started(clause: Clause, dtype: str) -> None:
        if show_running:
            print(f"  {clause.id} {dtype} ...", end="\r", file=sys.stderr, flush=True)

    for index, report in enumerate(reports):
        if index:
            print()
        print(render.header(report, examples), flush=True)
        finished = _result_printer(report, after_each)
        check_kernel(
            report,
            clauses,
            on_start=started,
            on_result=finished,
            exit_first=exit_first,
            pool=pool,
        )
        warned = render.kernel_warnings(report)
        if warned is not None:
            print(f"\n{warned}")
        print(f"\n{render.summary(report)}", flush=True)
        if exit_first and not report.passed:
            return  # the kernels after it are not checked either


def _result_printer(
    report: KernelReport, after_each: Callable[[], None]
) -> Callable[[ClauseResult], None]:
    """Prints a result's line, then the story of its failure; a failure whose cause an earlier
    one of this kernel showed in full gets one line that points to it."""
    from lmloss import _check_report as render

    first_of: dict[str, ClauseResult] = {}

    def finished(result: ClauseResult) -> None:
        print(render.result_line(result), flush=True)
        key = render.cause(result)
        if key is not None and key in first_of:
            story: str | None = render.repeated_cause(result, first_of[key])
        else:
            if key is not None:
                first_of[key] = result
            story = render.detail(report, result)
        if story is not None:
            print(f"\n{story}\n", flush=True)
        after_each()

    return finished
