"""What `lmloss check` prints, and the same as data for ``--json``.

The text report: a header per kernel (name, device, dtypes, profile, versions, what the kernel
accepts and declares), one line per clause and dtype as it finishes, then for each failure the
clause's equation, the shrunk counterexample as runnable Python, the oracle's value, the kernel's
value, the error and its bound.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from properties.engine.check import KernelReport
    from properties.engine.runner import ClauseResult, Status

_STATUS_WORDS = {
    "holds": "holds",
    "fails": "FAILS",
    "not applicable": "not applicable",
    "error": "ERROR",
}


def header(report: KernelReport, examples: int) -> str:
    kernel = report.kernel
    lines = [f"lmloss check: {kernel.name}" + (f"  ({kernel.source})" if kernel.source else "")]
    lines.append(f"  contract: {kernel.contract.name}, {kernel.contract.shape}")
    if report.world_size is not None:
        backend = "NCCL" if report.device == "cuda" else "gloo"
        lines.append(
            f"  world size {report.world_size}: {report.world_size} rank processes on "
            f"{backend}, each example drawn once here and split across them"
        )
    dtypes = ", ".join(report.dtypes)
    lines.append(
        f"  device {report.device} · dtypes {dtypes} · "
        f"profile {report.profile} (up to {examples} examples per clause and dtype)"
    )
    for dtype, why in report.skipped_dtypes.items():
        lines.append(f"  not checked: {dtype} ({why})")
    lines.append(
        "  " + " · ".join(f"{name} {version}" for name, version in report.versions.items())
    )
    accepts = ", ".join(sorted(kernel.accepts)) or "no keywords (plain mean over all rows)"
    lines.append(f"  accepts: {accepts}")
    declarations = _declarations(report)
    if declarations:
        lines.append(f"  declares: {'; '.join(declarations)}")
    return "\n".join(lines)


def result_line(result: ClauseResult) -> str:
    """``  CE-SHIFT   float32   holds   worst 0.031 of bound   30 examples   1.2 s   title``."""
    start = f"  {result.clause.id:<22} {result.dtype:<9}"
    if result.status == "not applicable":
        return f"{start} not applicable: {result.reason}"
    head = f"{start} {_STATUS_WORDS[result.status]:<6}"
    if result.status == "error":
        return f"{head} the check itself raised {result.reason}"
    if result.clause.tolerance is None:
        worst = f"{'exact':>23}"
    else:
        worst = f"worst {_ratio_text(result.worst_ratio):>8} of bound"
    return (
        f"{head} {worst} {result.examples:>6} examples {result.seconds:>7.1f} s"
        f"   {result.clause.title}"
    )


def detail(report: KernelReport, result: ClauseResult) -> str | None:
    """The full story of one failure or error (None for a clause that holds or does not apply)."""
    if result.status == "fails" and result.violation is not None:
        body = result.violation.render()
        if result.shrinking_cut_at is not None:
            command = (
                f"lmloss check {report.kernel.source or 'SPEC'} "
                f"--clause {result.clause.id} --dtype {result.dtype}"
            )
            body += (
                f"\n(shrinking stopped after {result.shrinking_cut_at} s, so a smaller "
                f"counterexample may exist; `{command}` shrinks it for longer)"
            )
    elif result.status == "error":
        body = (
            "the check could not be completed (an error in the check, not a verdict on "
            f"the kernel):\n{result.detail}"
        )
    else:
        return None
    # A clause's message may already open with its equation; say it once.
    equation = "" if result.clause.equation in body else f"  {result.clause.equation}\n"
    return f"{_title(result)}\n{equation}" + _indent(body, "  ")


#: How the message of a failure that is not about values opens (properties/engine/runner.py,
#: properties/engine/workers.py).
_SHARED_CAUSES = (
    "the kernel raised",
    "the kernel returned",
    "the kernel ended its worker process",
    "the kernel's call did not return",
)


def cause(result: ClauseResult) -> str | None:
    """What a failure shares with others of the same root cause: the kernel raising the same
    exception with the same message, returning the same wrong kind of result, or ending or
    hanging its process the same way; None for a failure of the values, its clause's own."""
    if result.violation is None:
        return None
    for line in result.violation.message.splitlines():
        line = line.strip()
        if line.startswith(_SHARED_CAUSES):
            return line
    return None


def repeated_cause(result: ClauseResult, first: ClauseResult) -> str:
    """The line that stands for a failure whose cause was shown in full with ``first``."""
    return (
        f"{_title(result)}\n  same cause as {first.clause.id} · {first.dtype} (shown above): "
        f"{cause(result)}"
    )


def details(report: KernelReport) -> str:
    """The story of each failure and error, a shared cause told once."""
    sections = []
    first_of: dict[str, ClauseResult] = {}
    for result in report.results:
        key = cause(result)
        if key is not None and key in first_of:
            sections.append(repeated_cause(result, first_of[key]))
            continue
        if key is not None:
            first_of[key] = result
        text = detail(report, result)
        if text is not None:
            sections.append(text)
    return "\n\n".join(sections)


def _title(result: ClauseResult) -> str:
    return (
        f"{result.clause.id} · {result.dtype} · {_STATUS_WORDS[result.status]}"
        f" · {result.clause.title}"
    )


_SUMMARY_WORDS: tuple[tuple[Status, str], ...] = (
    ("holds", "hold"),
    ("fails", "fail"),
    ("error", "could not be checked"),
    ("not applicable", "not applicable"),
)


def kernel_warnings(report: KernelReport) -> str | None:
    """Each warning the kernel raised, once, with how often (a compiler repeats its own)."""
    counts: Counter[str] = Counter()
    for result in report.results:
        counts.update(result.warnings)
    if not counts:
        return None
    lines = [f"warnings raised by {report.kernel.name} (each shown once):"]
    lines.extend(f"  {count:>6} × {text}" for text, count in counts.most_common())
    return "\n".join(lines)


def summary(report: KernelReport) -> str:
    counts = Counter(result.status for result in report.results)
    parts = [f"{counts[status]} {word}" for status, word in _SUMMARY_WORDS if counts[status]]
    verdict = "conforms" if report.passed else "DOES NOT CONFORM"
    if report.stopped_early:
        parts.append("stopped at the first failure (--exitfirst), the rest not checked")
    return (
        f"{report.kernel.name}: {verdict} ({', '.join(parts) or 'nothing checked'}; "
        f"{', '.join(report.dtypes)} on {report.device}; {report.seconds:.1f} s)"
    )


def as_data(
    reports: Sequence[KernelReport], exit_code: int, *, complete: bool = True
) -> dict[str, Any]:
    """The report as JSON-ready data: non-finite numbers become the strings "inf", "-inf", "nan".
    ``complete`` is False while the run goes on (the exit code is then the verdict so far)."""
    first = reports[0] if reports else None
    return {
        "complete": complete,
        "exit_code": exit_code,
        "device": first.device if first else None,
        "profile": first.profile if first else None,
        "kernels": [_kernel_data(report) for report in reports],
    }


def _kernel_data(report: KernelReport) -> dict[str, Any]:
    spec = report.kernel.spec
    return {
        "name": report.kernel.name,
        "source": report.kernel.source,
        "passed": report.passed,
        "stopped_early": report.stopped_early,
        "versions": report.versions,
        "dtypes": list(report.dtypes),
        "skipped_dtypes": report.skipped_dtypes,
        "contract": report.kernel.contract.name,
        "world_size": report.world_size,
        "accepts": sorted(report.kernel.accepts),
        "declares": {
            "dtypes": list(spec.dtypes) if spec.dtypes is not None else None,
            "devices": list(spec.devices),
            "reductions": list(spec.reductions),
            "options": dict(spec.options),
            "writes_input": spec.writes_input,
            "empty_mean": spec.empty_mean,
            "z_loss_weighting": spec.z_loss_weighting,
            "differentiable": spec.differentiable,
            "process_group": spec.process_group,
            "setup": None if spec.setup is None else getattr(spec.setup, "__qualname__", "?"),
            "shards": spec.shards,
        },
        "seconds": _number(report.seconds),
        "results": [_result_data(result) for result in report.results],
    }


def _result_data(result: ClauseResult) -> dict[str, Any]:
    violation = result.violation
    return {
        "clause": result.clause.id,
        "title": result.clause.title,
        "equation": result.clause.equation,
        "tolerance": result.clause.tolerance,
        "dtype": result.dtype,
        "device": result.device,
        "status": result.status,
        "worst_ratio": _number(result.worst_ratio),
        "examples": result.examples,
        "seconds": _number(result.seconds),
        "reason": result.reason,
        "detail": result.detail,
        "shrinking_cut_at": _number(result.shrinking_cut_at),
        "warnings": dict(result.warnings),
        "violation": None
        if violation is None
        else {
            "message": violation.message,
            "reproducer": violation.reproducer,
            "oracle": _value(violation.oracle),
            "kernel": _value(violation.kernel),
            "error": _number(violation.error),
            "bound": _number(violation.bound),
        },
    }


def _declarations(report: KernelReport) -> list[str]:
    spec = report.kernel.spec
    found = []
    if spec.writes_input:
        found.append("writes into its logits argument (the purity clause allows it)")
    if spec.empty_mean != "nan":
        found.append(f"a mean over no counted token returns {spec.empty_mean}")
    if spec.z_loss_weighting != "weighted":
        found.append("its z-loss is not weighted by the class weight (its mean: over counted rows)")
    if not spec.differentiable:
        found.append("forward only (no gradient)")
    if spec.options:
        found.append(
            "options " + ", ".join(f"{name} as {own!r}" for name, own in spec.options.items())
        )
    if report.kernel.contract.distributed:
        if spec.process_group is None:
            found.append("takes its process group from global state (setup hook)")
        elif spec.process_group != "group":
            found.append(f"takes its process group as {spec.process_group!r}")
        if spec.setup is not None:
            found.append(f"setup {getattr(spec.setup, '__qualname__', '?')} in each rank")
        if spec.shards == "even":
            found.append("needs equal vocabulary slices (C divisible by P)")
    if tuple(spec.reductions) != ("mean", "sum", "none"):
        found.append(f"reductions {', '.join(spec.reductions)}")
    return found


def _ratio_text(ratio: float) -> str:
    if math.isinf(ratio):
        return "inf"
    if ratio == 0 or 1e-3 <= ratio < 1e3:
        return f"{ratio:.3f}"
    return f"{ratio:.2e}"


def _number(value: Any) -> Any:
    """A float (or int) for JSON; non-finite values as strings, None as None."""
    if value is None or isinstance(value, (bool, int)):
        return value
    number = float(value)
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return number


def _value(value: Any) -> Any:
    """Oracle and kernel values (mpf, float, tensor, lists of them) as JSON data."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_value(item) for item in value]
    try:
        return _number(value)
    except (TypeError, ValueError):
        return repr(value)


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())
