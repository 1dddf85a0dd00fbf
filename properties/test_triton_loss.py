"""lmloss.triton_cross_entropy, the fused Triton kernel, against the oracle; and the choice of
lmloss.cross_entropy between it and the torch path (issue 12).

Without CUDA the kernels run under Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set
here before anything imports triton); with CUDA, compiled, on the GPU. The option sets, layouts
and launch shapes are fixed, small inputs (the oracle spends about 100 µs per logit on a
gradient); the bounds are the suite's own (properties/tolerances.py). One test runs
``lmloss check`` on a few clauses, the one that spans N·C > 2^31 needs a GPU.

Without Triton every test that launches a kernel skips, and the ones about lmloss without
Triton still run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import lmloss  # noqa: E402
from lmloss import _loss as loss_module  # noqa: E402
from lmloss import _triton_ce  # noqa: E402
from lmloss._triton_ce import fused_cross_entropy, triton_cross_entropy  # noqa: E402
from properties.ce.oracle import oracle_gradient, oracle_loss  # noqa: E402
from properties.ce.problem import Problem  # noqa: E402
from properties.engine.checks import assert_within  # noqa: E402
from properties.meta.test_checker import lmloss_check, report_of  # noqa: E402
from properties.tolerances import gradient_bound, loss_bound  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REDUCTIONS = ("mean", "sum", "none")
#: Each option alone, and all together (ignore_index 3 lies inside the vocabulary).
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "ignore_index=3": {"ignore_index": 3},
    "label_smoothing": {"label_smoothing": 0.2},
    "weight": {"weight": True},
    "weight+smoothing": {"weight": True, "label_smoothing": 0.3},
    "z_loss": {"z_loss": 0.05},
    "softcap": {"softcap": 2.5},
    "all": {
        "ignore_index": 3,
        "label_smoothing": 0.1,
        "weight": True,
        "z_loss": 1e-2,
        "softcap": 4.0,
    },
}
#: (rows, classes) small enough for the oracle; 37 classes are 3 column blocks of 16 when the
#: launch is shrunk (see ``small_blocks``), 7 rows more than one tile of rows.
SHAPE = (7, 37)


def draw(
    rows: int,
    classes: int,
    dtype: torch.dtype,
    options: dict[str, Any],
    *,
    seed: int = 0,
    scale: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Logits (rows, classes) in ``dtype`` on the device, targets with every third row ignored,
    and the keywords of the call (class weights in [1/4, 4] when asked for)."""
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=generator) * scale).to(dtype)
    keywords = dict(options)
    ignore_index = keywords.get("ignore_index", -100)
    target = torch.randint(classes, (rows,), generator=generator)
    if ignore_index in range(classes):
        target[target == ignore_index] = (ignore_index + 1) % classes
    target[::3] = ignore_index
    if keywords.pop("weight", False):
        keywords["weight"] = (4.0 ** (torch.rand(classes, generator=generator) * 2 - 1)).to(dtype)
    return logits.to(DEVICE), target.to(DEVICE), keywords


def upstream(reduction: str, rows: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Non-uniform upstream gradients: a scalar ≠ 1, or values of both signs per row."""
    generator = torch.Generator().manual_seed(seed + 1)
    if reduction == "none":
        return ((torch.rand(rows, generator=generator) - 0.5) * 8).to(dtype).to(DEVICE)
    return torch.tensor(-2.5, dtype=dtype, device=DEVICE)


def check_against_oracle(
    logits: torch.Tensor,
    target: torch.Tensor,
    keywords: dict[str, Any],
    grad_output: torch.Tensor,
) -> None:
    """The kernel's loss and gradient within the suite's bounds of the oracle's."""
    leaf = logits.detach().clone().requires_grad_(True)
    loss = fused_cross_entropy(leaf, target, **keywords)
    assert loss.dtype == logits.dtype, f"the loss is {loss.dtype}, the logits {logits.dtype}"
    loss.backward(grad_output)
    assert leaf.grad is not None and leaf.grad.dtype == logits.dtype
    problem = Problem.of(logits, target, **keywords)
    context = f"triton_cross_entropy({tuple(logits.shape)} {logits.dtype}, {keywords})"
    assert_within(
        "loss",
        loss.detach().cpu().reshape(-1),
        oracle_loss(problem).reshape(-1),
        loss_bound(problem).reshape(-1),
        context,
    )
    upstream_value = grad_output.detach().cpu()
    assert_within(
        "∂L/∂logits",
        leaf.grad.cpu(),
        oracle_gradient(problem, upstream_value),
        gradient_bound(problem, upstream_value),
        context,
    )
    ignored = ~problem.counted
    assert bool((leaf.grad.cpu()[ignored] == 0).all()), f"an ignored row's gradient ≠ 0 [{context}]"


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Launch in blocks of 16 columns and tiles of 32 logits, so that small inputs cross
    column blocks (pass 1 rescales its running sums) and rows span several programs."""
    small = _triton_ce.Launch(widest_block=16, tile=32, most_rows=8)
    monkeypatch.setattr(_triton_ce, "INTERPRETER_LAUNCH", small)
    monkeypatch.setattr(_triton_ce, "GPU_LAUNCH", small)


# --- Values and gradients against the oracle ------------------------------------------------


def option_cases() -> list[Any]:
    """Every option set in every dtype, with the reductions in a Latin square: each option set
    meets each reduction once across the three dtypes, and each dtype every reduction."""
    return [
        pytest.param(
            option_set,
            REDUCTIONS[(i + j) % 3],
            dtype_name,
            id=f"{option_set}-{REDUCTIONS[(i + j) % 3]}-{dtype_name}",
        )
        for i, option_set in enumerate(OPTIONS)
        for j, dtype_name in enumerate(DTYPES)
    ]


@needs_triton
@pytest.mark.parametrize(("option_set", "reduction", "dtype_name"), option_cases())
def test_loss_and_gradient_are_the_oracles(
    option_set: str, reduction: str, dtype_name: str, small_blocks: None
) -> None:
    """L and ∂L/∂x within the loss and gradient bounds of the oracle, for every option alone and
    all together, every reduction, in float32, bfloat16 and float16, with a non-uniform upstream
    gradient.  [CE-OPTIONS, CE-GRAD, CE-GRAD-UPSTREAM] tol: loss, gradient"""
    dtype = DTYPES[dtype_name]
    logits, target, keywords = draw(*SHAPE, dtype, OPTIONS[option_set])
    keywords["reduction"] = reduction
    check_against_oracle(logits, target, keywords, upstream(reduction, SHAPE[0], dtype))


@needs_triton
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_an_upstream_gradient_of_one_returns_the_stored_gradient(
    reduction: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """loss.backward() with ∂out = 1 hands back the gradient the forward pass wrote, with no
    scaling launch; any other upstream gradient launches one.  [CE-GRAD] tol: gradient"""
    launches: list[torch.Tensor] = []
    scale_rows = _triton_ce._launch_scale_rows

    def counted_launch(grad: torch.Tensor, factor: torch.Tensor) -> None:
        launches.append(factor)
        scale_rows(grad, factor)

    monkeypatch.setattr(_triton_ce, "_launch_scale_rows", counted_launch)
    logits, target, keywords = draw(*SHAPE, torch.float32, OPTIONS["all"])
    keywords["reduction"] = reduction
    check_against_oracle(logits, target, keywords, torch.tensor(1.0, device=DEVICE))
    assert launches == [], "an upstream gradient of 1 launched the scaling kernel"
    check_against_oracle(logits, target, keywords, torch.tensor(0.75, device=DEVICE))
    assert len(launches) == 1


@needs_triton
def test_ignored_rows_stay_zero_under_a_nan_upstream_gradient() -> None:
    """∂L/∂x_i· = 0 exactly for an ignored row, even where its upstream gradient is NaN or inf,
    as PyTorch gives it; a counted row with a NaN upstream gradient is NaN.  [CE-GRAD-IGNORED] tol: exact"""
    logits, target, keywords = draw(*SHAPE, torch.float32, OPTIONS["weight+smoothing"])
    leaf = logits.clone().requires_grad_(True)
    grad_output = torch.full((SHAPE[0],), float("nan"), device=DEVICE)
    grad_output[1] = float("inf")
    fused_cross_entropy(leaf, target, reduction="none", **keywords).backward(grad_output)
    assert leaf.grad is not None
    ignored = target == -100
    assert bool((leaf.grad[ignored] == 0).all()), leaf.grad[ignored]
    assert bool(leaf.grad[~ignored].isnan().any(dim=1)[grad_output[~ignored].isnan()].all())


@needs_triton
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_a_mean_of_z_losses_near_the_largest_float_is_finite(dtype_name: str) -> None:
    """mean_i z·lse_i² stays finite where it is representable, though the sum of the rows'
    z-losses is not: 255 rows of one class, logits up to 1.2·10^21, z = 10^-4 (the quick
    profile's counterexample; a float32 sum of the rows overflowed).  [CE-Z-LOSS] tol: loss"""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(255, 1, generator=generator, dtype=torch.float64).clamp(-8.0, 8.0)
    logits = (logits * 1.4757395258967641e20).to(DTYPES[dtype_name])
    target = torch.zeros(255, dtype=torch.long)
    loss = fused_cross_entropy(logits.to(DEVICE), target.to(DEVICE), z_loss=1e-4)
    problem = Problem.of(logits, target, z_loss=1e-4)
    assert_within(
        "loss",
        loss.cpu(),
        oracle_loss(problem),
        loss_bound(problem),
        f"z-loss mean of (255, 1) {dtype_name} logits up to 1.2e21",
    )


@needs_triton
def test_mean_over_no_counted_row_is_nan_with_zero_gradient() -> None:
    """mean over no counted token = 0/0 = NaN, as PyTorch; every gradient entry is exactly 0.  [CE-EMPTY-MEAN] tol: exact"""
    logits, target, _ = draw(*SHAPE, torch.float32, {})
    leaf = logits.clone().requires_grad_(True)
    loss = fused_cross_entropy(leaf, torch.full_like(target, -100))
    assert bool(loss.isnan()), f"the mean over no counted row is {loss.item()}, not NaN"
    loss.backward()
    assert leaf.grad is not None and bool((leaf.grad == 0).all())


# --- Layouts, in place, autocast ------------------------------------------------------------


def strided_views(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The values of ``logits`` (N, C) as views in other layouts, each on a storage that
    requires grad (entries a view skips hold NaN)."""
    rows, classes = logits.shape
    padded = torch.full(
        (rows + 2, 2 * classes + 3), float("nan"), dtype=logits.dtype, device=logits.device
    )
    padded[1:-1, 3 : 3 + 2 * classes : 2] = logits
    transposed = logits.t().contiguous().requires_grad_(True)
    padded.requires_grad_(True)
    first_row = logits[:1].clone().requires_grad_(True)
    return {
        "transposed": transposed.t(),  # column stride N
        "strided": padded[1:-1, 3 : 3 + 2 * classes : 2],  # row offset, column stride 2
        "expanded": first_row.expand(rows, classes),  # row stride 0
    }


@needs_triton
@pytest.mark.parametrize("layout", ["transposed", "strided", "expanded"])
def test_strided_logits_give_the_contiguous_result_bit_for_bit(
    layout: str, small_blocks: None
) -> None:
    """L and ∂L/∂x of a transposed, sliced-with-steps or expanded view equal those of its
    contiguous copy exactly: the kernel reads through the strides, in the same order.  [CE-LAYOUT, CE-LAYOUT-GRAD] tol: exact"""
    logits, target, keywords = draw(*SHAPE, torch.bfloat16, OPTIONS["all"])
    keywords["reduction"] = "none"
    grad_output = upstream("none", SHAPE[0], torch.bfloat16)
    view = strided_views(logits)[layout]
    assert not view.is_contiguous()
    copy = view.detach().contiguous().requires_grad_(True)
    loss_of_view = fused_cross_entropy(view, target, **keywords)
    loss_of_copy = fused_cross_entropy(copy, target, **keywords)
    (grad_of_view,) = torch.autograd.grad(loss_of_view, view, grad_output)
    (grad_of_copy,) = torch.autograd.grad(loss_of_copy, copy, grad_output)
    torch.testing.assert_close(loss_of_view, loss_of_copy, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grad_of_view, grad_of_copy, rtol=0, atol=0)


@needs_triton
def test_inplace_writes_the_same_gradient_over_the_logits() -> None:
    """With inplace=True the logits' storage ends up holding ∂L/∂x, bit for bit the gradient of
    the default call, which leaves the logits as they were.  [CE-PURE] tol: exact"""
    logits, target, keywords = draw(*SHAPE, torch.bfloat16, OPTIONS["all"])
    fresh = logits.clone().requires_grad_(True)
    fused_cross_entropy(fresh, target, **keywords).backward()
    assert fresh.grad is not None
    torch.testing.assert_close(fresh.detach(), logits, rtol=0, atol=0)
    overwritten = logits.clone()
    leaf = overwritten.requires_grad_(True)
    fused_cross_entropy(leaf, target, inplace=True, **keywords).backward()
    assert leaf.grad is not None
    torch.testing.assert_close(leaf.grad, fresh.grad, rtol=0, atol=0)
    torch.testing.assert_close(overwritten.detach(), fresh.grad, rtol=0, atol=0)


@needs_triton
def test_logits_without_grad_give_the_same_loss() -> None:
    """Under torch.no_grad the forward pass alone runs (no gradient written), and gives the
    same loss bit for bit.  [CE-OPTIONS] tol: exact"""
    logits, target, keywords = draw(*SHAPE, torch.float32, OPTIONS["all"])
    with torch.no_grad():
        forward_only = fused_cross_entropy(logits, target, **keywords)
    with_gradient = fused_cross_entropy(logits.clone().requires_grad_(True), target, **keywords)
    torch.testing.assert_close(forward_only, with_gradient.detach(), rtol=0, atol=0)


@needs_triton
def test_a_second_backward_through_the_same_loss_raises() -> None:
    """The gradient is computed once, in the forward pass, and handed out: backward(retain_graph=True)
    then backward() again raises instead of returning a gradient scaled twice."""
    logits, target, _ = draw(*SHAPE, torch.float32, {})
    loss = fused_cross_entropy(logits.requires_grad_(True), target)
    loss.backward(torch.tensor(2.0, device=DEVICE), retain_graph=True)
    with pytest.raises(RuntimeError, match="backward through the same loss twice"):
        loss.backward()


@needs_triton
def test_autocast_returns_a_float32_loss_as_lmloss_cross_entropy() -> None:
    """Under torch.autocast the loss of bfloat16 logits is float32, computed as outside it.  [CE-AUTOCAST] tol: exact"""
    logits, target, keywords = draw(*SHAPE, torch.bfloat16, OPTIONS["weight+smoothing"])
    outside = fused_cross_entropy(logits, target, **keywords)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        inside = fused_cross_entropy(logits, target, **keywords)
    assert inside.dtype == torch.float32
    assert inside.to(torch.bfloat16) == outside


@pytest.mark.parametrize(
    ("change", "error", "names"),
    [
        ({"logits": "float64"}, TypeError, "logits"),
        ({"logits": "3d"}, ValueError, "logits"),
        ({"logits": "no classes"}, ValueError, "at least one class"),
        ({"target": "float"}, TypeError, "target"),
        ({"target": "short"}, ValueError, "target"),
        ({"weight": "short"}, ValueError, "weight"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        ({"z_loss": -1.0}, ValueError, "z_loss"),
        ({"z_loss": "0.1"}, TypeError, "z_loss"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"inplace": 1}, TypeError, "inplace"),
        ({"inplace": "transposed"}, ValueError, "contiguous"),
    ],
)
def test_bad_input_raises_naming_the_argument(
    change: dict[str, Any], error: type[Exception], names: str
) -> None:
    """Bad shapes, dtypes, values and options raise ValueError or TypeError naming what is wrong,
    before any kernel runs (so this holds without Triton too)."""
    logits = torch.zeros(*SHAPE)
    target = torch.zeros(SHAPE[0], dtype=torch.long)
    keywords: dict[str, Any] = {}
    ((key, value),) = change.items()
    if key == "logits":
        logits = {
            "float64": logits.double(),
            "3d": logits[None],
            "no classes": logits[:, :0],
        }[value]
    elif key == "target":
        target = {
            "float": target.float(),
            "short": target[:-1],
        }[value]
    elif key == "weight":
        keywords["weight"] = torch.ones(SHAPE[1] - 1)
    elif (key, value) == ("inplace", "transposed"):
        logits = logits.t().contiguous().t()
        keywords["inplace"] = True
    else:
        keywords[key] = value
    with pytest.raises(error, match=names):
        fused_cross_entropy(logits.to(DEVICE), target.to(DEVICE), **keywords)


@needs_triton
def test_the_spec_is_the_function() -> None:
    """lmloss.triton_cross_entropy is the KernelSpec `lmloss check` loads and, called, the
    kernel itself: the same loss bit for bit."""
    assert lmloss.triton_cross_entropy is triton_cross_entropy
    assert isinstance(triton_cross_entropy, lmloss.KernelSpec)
    logits, target, keywords = draw(*SHAPE, torch.float32, OPTIONS["all"])
    torch.testing.assert_close(
        triton_cross_entropy(logits, target, **keywords),
        fused_cross_entropy(logits, target, **keywords),
        rtol=0,
        atol=0,
    )


@needs_triton
def test_a_target_outside_the_classes_raises_on_the_cpu_and_is_nan_on_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A counted target outside [0, C): ValueError on the CPU, where checking is free; on CUDA,
    where it would cost a device synchronisation, the kernel makes that row's loss and gradient
    NaN and leaves the other rows finite (checked on the CPU too, with the check removed)."""
    logits, target, keywords = draw(*SHAPE, torch.float32, {"weight": True})
    target[1] = SHAPE[1]
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match=f"target {SHAPE[1]} is outside"):
            fused_cross_entropy(logits, target, **keywords)
        monkeypatch.setattr(_triton_ce, "_check_target_range", lambda *arguments: None)
    leaf = logits.clone().requires_grad_(True)
    losses = fused_cross_entropy(leaf, target, reduction="none", **keywords)
    losses.sum().backward()
    assert leaf.grad is not None
    assert bool(losses[1].isnan()) and bool(leaf.grad[1].isnan().all())
    assert not bool(losses[2:].isnan().any()) and not bool(leaf.grad[2:].isnan().any())


# --- Which loss lmloss.cross_entropy runs ---------------------------------------------------


def test_cross_entropy_runs_torch_on_the_cpu_and_triton_on_cuda() -> None:
    """The choice, made without a GPU: torch for CPU logits and for float64, the fused kernel for
    CUDA logits in float32, bfloat16 and float16 when Triton imports, torch when it does not."""
    choose = loss_module._loss_implementation
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        assert choose(cpu, dtype) == "torch"
    assert choose(cuda, torch.float64) == "torch"
    expected_on_cuda = "triton" if HAS_TRITON else "torch"
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert choose(cuda, dtype) == expected_on_cuda


def test_cross_entropy_runs_torch_on_cuda_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA without an importable Triton, lmloss.cross_entropy keeps the torch path."""
    monkeypatch.setattr(loss_module, "_triton_importable", lambda: False)
    assert loss_module._loss_implementation(torch.device("cuda"), torch.bfloat16) == "torch"


def test_lmloss_imports_and_computes_without_triton() -> None:
    """With ``import triton`` failing, lmloss imports, lmloss.cross_entropy computes on the CPU,
    the selector picks torch on CUDA, and the fused kernel says what it needs."""
    program = """
import sys
sys.modules["triton"] = None  # import triton now raises ImportError
import torch, lmloss
from lmloss import _loss
loss = lmloss.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]))
assert abs(loss.item() - 1.0986123) < 1e-6, loss
assert _loss._loss_implementation(torch.device("cuda"), torch.float32) == "torch"
try:
    lmloss.triton_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]))
except ImportError as exc:
    assert "needs Triton" in str(exc), exc
else:
    raise AssertionError("the fused kernel ran without triton")
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


@needs_triton
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (the kernel is compiled there)")
def test_cross_entropy_on_cuda_is_the_fused_kernel() -> None:
    """On CUDA lmloss.cross_entropy returns what the fused kernel returns, bit for bit.  [CE-OPTIONS] tol: exact"""
    logits, target, keywords = draw(*SHAPE, torch.bfloat16, OPTIONS["weight+smoothing"])
    expected = fused_cross_entropy(logits, target, **keywords)
    assert torch.equal(lmloss.cross_entropy(logits, target, **keywords), expected)


# --- The checker ------------------------------------------------------------------------------

#: What the default CI checks through `lmloss check` (the full run is issue 12's command, minutes
#: under the interpreter; the oracle tests above cover values and gradients in every dtype): the
#: gradient of views (CE-LAYOUT-GRAD) and purity (CE-PURE), which holds for the in-place spec
#: only because it declares its writes; in float16, where a kernel that computes in the input
#: dtype shows. Not in bfloat16: the interpreter rounds float32 subnormals to bfloat16 wrongly
#: (test_the_interpreter_rounds_subnormals_to_bfloat16 below), so on an input whose gradient
#: holds elements below 2^-126 the interpreted kernel is off by up to 2^-126, 1.5 × CE-LAYOUT-GRAD's
#: bound on the example the ci profile drew after 669c6be (the oracle's value 1.48e-42, the
#: kernel's 2.37e-38). A GPU converts in hardware.
CHECKED_CLAUSES = ("CE-LAYOUT-GRAD", "CE-PURE")
CHECKED_DTYPES = ("float16",)


@needs_triton
@pytest.mark.skipif(CUDA, reason="the interpreter's conversion, not the GPU's")
@pytest.mark.xfail(
    strict=True, reason="triton 3.9.0's interpreter rounds float32 subnormals to bfloat16 wrongly"
)
def test_the_interpreter_rounds_subnormals_to_bfloat16() -> None:
    """x.to(tl.bfloat16) in a kernel = x.to(torch.bfloat16) for float32 x below 2^-126 (and 0, 1).
    Expected to fail while the interpreter rounds 7e-43 to 1.12e-38; when it passes, bfloat16 can
    return to CHECKED_DTYPES."""
    import triton
    import triton.language as tl

    @triton.jit
    def convert(source, destination, size: tl.constexpr) -> None:
        offsets = tl.arange(0, size)
        tl.store(destination + offsets, tl.load(source + offsets).to(tl.bfloat16))

    values = torch.tensor([7e-43, 4.5e-42, 1e-40, 5e-39, 1.1e-38, 0.0, 1.0, 3e-45])
    converted = torch.empty(values.shape, dtype=torch.bfloat16)
    convert[(1,)](values, converted, values.numel())
    assert torch.equal(converted, values.to(torch.bfloat16)), converted.float().tolist()


@needs_triton
def test_lmloss_check_passes_the_kernel_and_its_inplace_spec(tmp_path: Path) -> None:
    """`lmloss check` (ci profile) holds CHECKED_CLAUSES in CHECKED_DTYPES for
    lmloss:triton_cross_entropy and for lmloss._triton_ce:triton_cross_entropy_inplace, which
    declares that it writes into its logits."""
    report = tmp_path / "report.json"
    clauses = [option for clause in CHECKED_CLAUSES for option in ("--clause", clause)]
    dtypes = [option for dtype in CHECKED_DTYPES for option in ("--dtype", dtype)]
    result = lmloss_check(
        "lmloss:triton_cross_entropy",
        "lmloss._triton_ce:triton_cross_entropy_inplace",
        "--profile",
        "ci",
        *dtypes,
        *clauses,
        "--json",
        str(report),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kernels = report_of(report)["kernels"]
    assert len(kernels) == 2
    for kernel in kernels:
        verdicts = {(r["clause"], r["dtype"]): r["status"] for r in kernel["results"]}
        expected = {(c, d): "holds" for c in CHECKED_CLAUSES for d in CHECKED_DTYPES}
        assert verdicts == expected, result.stdout
    writes = {kernel["source"]: kernel["declares"]["writes_input"] for kernel in kernels}
    assert writes == {
        "lmloss:triton_cross_entropy": False,
        "lmloss._triton_ce:triton_cross_entropy_inplace": True,
    }


# --- Past 2^31 elements -------------------------------------------------------------------------


@pytest.mark.gpu
@needs_triton
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device: 4.3 GB of bfloat16 logits")
def test_rows_past_element_2_to_the_31_are_the_oracles() -> None:
    """16807 × 128256 bfloat16 logits (N·C = 2,155,598,592 > 2^31): the loss and gradient of the
    row holding element 2^31, the first row wholly past it and the last row, within the bounds
    of the oracle, through the per-row scaling of reduction="none".  [CE-GRAD-UPSTREAM] tol: loss, gradient"""
    rows, classes = 16807, 128256
    assert rows * classes > 2**31
    generator = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator, device="cuda", dtype=torch.bfloat16)
    logits.mul_(3)
    target = torch.randint(classes, (rows,), generator=generator, device="cuda")
    grad_output = (torch.rand(rows, generator=generator, device="cuda") - 0.5) * 8
    leaf = logits.requires_grad_(True)
    losses = fused_cross_entropy(leaf, target, reduction="none")
    losses.backward(grad_output.to(torch.bfloat16))
    assert leaf.grad is not None
    straddling = 2**31 // classes
    for row in (straddling, straddling + 1, rows - 1):
        x = logits[row : row + 1].detach().cpu()
        y = target[row : row + 1].cpu()
        problem = Problem.of(x, y, reduction="none")
        upstream_row = grad_output[row : row + 1].to(torch.bfloat16).cpu()
        context = f"row {row} of ({rows}, {classes}) bfloat16"
        assert_within(
            "loss",
            losses[row : row + 1].detach().cpu(),
            oracle_loss(problem),
            loss_bound(problem),
            context,
        )
        assert_within(
            "∂L/∂logits",
            leaf.grad[row : row + 1].cpu(),
            oracle_gradient(problem, upstream_row),
            gradient_bound(problem, upstream_row),
            context,
        )


#: Compiles both kernels for an H100/H200 (sm_90a) the way a launch on 128,256 classes would
#: specialise them, every option on, without a GPU: Triton's front end, its GPU passes and ptxas
#: run on the CPU. The interpreter accepts code the compiler rejects (a loop-carried variable
#: that changes shape did), so the CPU suite compiles too. In a subprocess: the compiler needs
#: triton imported with the interpreter off.
COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lmloss import _triton_ce, _triton_kernels

rows, block, warps = _triton_ce._tile(16807, 128256, interpreted=False)
types = {"ptr": "*bf16", "stride": "i64", "n_rows": "i32", "n_cols": "i32",
         "ignore_index": "i64", "share": "fp32", "z_loss": "fp32", "softcap": "fp32"}
float_pointers = {"weight_ptr", "loss_ptr", "grad_scale_ptr", "upstream_ptr"}
for kernel in (_triton_kernels.cross_entropy_forward, _triton_kernels.scale_rows):
    signature, constants = {}, {"ROWS": rows, "BLOCK_C": block}
    for name in kernel.arg_names:
        if name.isupper():
            signature[name] = "constexpr"
            constants.setdefault(name, True)
        elif name in float_pointers:
            signature[name] = "*fp32"
        elif name == "target_ptr":
            signature[name] = "*i64"
        else:
            signature[name] = types[next(key for key in types if name.endswith(key))]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    options = _triton_ce.compile_options(warps)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    assert compiled.asm["cubin"], kernel.__name__
    print(kernel.__name__, "compiled:", rows, "row(s) of", block, "columns,", warps, "warps")
"""


@needs_triton
def test_kernels_compile_for_an_sm90_gpu_without_one() -> None:
    """Both kernels, with every option on, compile to an sm_90a cubin on a machine without a GPU."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", COMPILE_FOR_SM90],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("compiled:") == 2, result.stdout
