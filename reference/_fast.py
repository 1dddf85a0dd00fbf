"""The first Ziv step in integer fixed point: most results are settled here, without mpf arithmetic.

The oracle's general path (_row.py, _cross_entropy.py, _gradient.py) carries every quantity as
an Enclosure of mpmath floats. That is general (softcaps, infinities, results of any size keep
their relative accuracy) but costs a few microseconds per operation. Almost every row the suite
draws needs none of it, so this module evaluates the same formulas once, at Q = 96 bits, with
Python integers only:

- a row's terms e_j = exp(−(m − x_j)) ∈ (0, 1] come from the same integer tables as the general
  path (_exp_terms.py: relative error ≤ 2^(1−Q) each, bounds from Row.term_bounds' analysis),
  and S = Σ_j e_j is their exact integer sum, as an integer interval;
- m − x_j is held exactly as an integer multiple of 2^-F (F = Q + 14 fraction bits) where it is
  one, else as the two integers around it (within two units, see Row._fix_arguments);
- log S is one Newton step from math.log's guess y: log S = y + log1p(S·e^-y − 1), e^-y from the
  same tables and r − r² ≤ log1p(r) ≤ r for |r| ≤ 1/2, rounded outward onto the 2^-F grid (an
  mpmath log of each end, widened by four units as _enclosure.py does, where the guess is off);
- everything after that (the NLL, z-loss, the smoothing sum, the reductions, the gradient's
  c·(A·p_j − B_j)) is integer intervals [lo, hi]·2^scale with every product and sum exact and
  every division rounded outward.

A result is kept when both ends of its interval round to the same normal float64 (rounding is
monotone, so the exact value inside rounds there too); anything else (a value near a rounding
boundary, a tiny result whose absolute error is too coarse, a subnormal, an infinity, a
softcap, a +inf logit, an exact zero from cancellation) is left to the general path, which
settles it as before. So the fast step changes which code decides, never what is decided.

It runs only at the default starting precision: the tests that start the oracle at 2000 bits
(reference.precision) exercise the general path alone and so check this one.

Rows are cached by value (a FixedRow per distinct row, up to a budget of elements): the suite
asks for the loss and the gradient of one batch, of its splits and of its permutations, and
each distinct row is prepared once. Short rows also share their terms' bounds, by D_j: logits
of few significant bits (bfloat16) give the same gaps m − x_j in row after row.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import sub as _subtract
from typing import cast

from mpmath import libmp

from reference._dyadic import Dyadic, Logit
from reference._enclosure import widen_down, widen_up
from reference._exp_terms import exp_terms
from reference._precision import DEFAULT_START_BITS, fast_path_enabled

#: Q: each term e_j has relative error ≤ 2^(1−Q).
FAST_BITS = DEFAULT_START_BITS
_TABLE = exp_terms(FAST_BITS)
#: F: m − x_j and log S are integers times 2^-F.
FRACTION_BITS = _TABLE.fraction_bits
_GUARD_BITS = _TABLE.guard_bits
_LOG_PREC = FAST_BITS + 16
_GRID_ONE = 1 << FRACTION_BITS
#: Rows kept in the cache, counted in logits (about 400 bytes each once the gradient has used
#: a row: 2^20 logits hold about 400 MB).
CACHE_ELEMENTS = 1 << 20
_SMALLEST_NORMAL = 2.2250738585072014e-308
#: |n|·2^scale < 2^-1075 when bits(n) + scale ≤ −1075: such a value rounds to 0.
_ZERO_MAGNITUDE = -1075

Interval = tuple[int, int, int]  # [lo·2^scale, hi·2^scale], lo ≤ hi


# ---- rounding an integer interval to float64 ----------------------------------------------------


def _to_float(n: int, scale: int) -> float | None:
    """round64(n·2^scale) when that is a normal float64 or 0 (n = 0), else None.

    float(int) rounds to nearest-even correctly; an integer of more than 60 bits is first cut
    to 60 with a sticky bit, which keeps that rounding. ldexp is exact in the normal range.
    """
    if n == 0:
        return 0.0
    magnitude = -n if n < 0 else n
    shift = magnitude.bit_length() - 60
    if shift > 0:
        kept = magnitude >> shift
        if kept << shift != magnitude:  # a bit cut: the sticky bit
            kept |= 1
        magnitude = kept
        scale += shift
    try:
        value = math.ldexp(float(magnitude), scale)
    except OverflowError:
        return None
    if not _SMALLEST_NORMAL <= value < math.inf:
        return None  # a subnormal would be rounded twice; infinities go to the general path
    return -value if n < 0 else value


def round_interval(lo: int, hi: int, scale: int) -> float | None:
    """The float64 every value in [lo·2^scale, hi·2^scale] rounds to, or None (not decided here)."""
    if abs(lo).bit_length() + scale <= _ZERO_MAGNITUDE >= abs(hi).bit_length() + scale:
        return 0.0  # |value| < 2^-1075: nearer 0 than the smallest subnormal (or its tie, to even)
    low = _to_float(lo, scale)
    if low is None or lo == hi:
        return low
    high = _to_float(hi, scale)
    if high is None or high != low or (low == 0.0 and lo != hi):
        return None
    return low


# ---- exact dyadic numbers and intervals ------------------------------------------------------


def dyadic(x: float) -> tuple[int, int]:
    """(man, exp) with x = man·2^exp exactly."""
    numerator, denominator = x.as_integer_ratio()
    return numerator, 1 - denominator.bit_length()


def _times(interval: Interval, man: int, exp: int) -> Interval:
    lo, hi, scale = interval
    if man >= 0:
        return lo * man, hi * man, scale + exp
    return hi * man, lo * man, scale + exp


def add(a: Interval, b: Interval) -> Interval:
    lo_a, hi_a, scale_a = a
    lo_b, hi_b, scale_b = b
    if scale_a > scale_b:
        shift = scale_a - scale_b
        return (lo_a << shift) + lo_b, (hi_a << shift) + hi_b, scale_b
    shift = scale_b - scale_a
    return lo_a + (lo_b << shift), hi_a + (hi_b << shift), scale_a


def _divide(interval: Interval, divisor: int, extra_bits: int) -> Interval:
    """interval / divisor (a positive integer), rounded outward, ``extra_bits`` finer."""
    lo, hi, scale = interval
    return (lo << extra_bits) // divisor, -((-hi << extra_bits) // divisor), scale - extra_bits


_ZERO: Interval = (0, 0, 0)
#: e_j = 1 exactly (D_j = 0, exact), as term bounds.
_ONE_TERM = (1 << _GUARD_BITS, 1 << _GUARD_BITS, -_GUARD_BITS)
#: A term's slack (Row.term_bounds' relative 2^(1−Q)) is its significand shifted by this, plus 1.
_SLACK_SHIFT = FAST_BITS - 1
#: Where the sum of terms starts (0 on this grid): above every term's exponent (each term is
#: ≤ 1), so the first term kept moves the sum down to its own, as any lower one does after it.
_ABOVE_EVERY_EXPONENT = 1 << 62
#: Terms left out of S are bounded by 2^-a with a capped here: 2^-4096 of anything that reaches
#: float64 still rounds to nothing, and the integers stay small.
_DROPPED_WHOLE_CAP = 4096


# ---- rows -------------------------------------------------------------------------------------


def _beyond_cut(count: int) -> int:
    """(cut + 1)·2^F for a row of ``count`` finite terms: a term with D_j at least this has
    ⌊m − x_j⌋ > cut, and is left out of S as in Row.sum_terms."""
    cut = 2 + math.ceil((FAST_BITS + count.bit_length() + 10) * math.log(2))
    return (cut + 1) << FRACTION_BITS


#: _beyond_cut by row length (it depends on nothing else): a small row would otherwise spend a
#: good part of its time on the float log and ceil.
_BEYOND_CUT: dict[int, int] = {}
#: Term bounds by D_j, for rows of at most _SHARED_ROW_LENGTH finite terms (a longer row keeps
#: its own, where its repeats are), up to _SHARED_TERMS_LIMIT of them (then forgotten at once).
_SHARED_TERMS: dict[int, tuple[int, int, int]] = {}
_SHARED_ROW_LENGTH = 64
#: Rows longer than this are summed by distinct argument (collections.Counter), see _sum_terms.
_COUNTED_ROW_LENGTH = 1 << 14
_SHARED_TERMS_LIMIT = 1 << 16


class FixedRow:
    """A row of finite or −inf logits (at least one finite, no +inf) at the fast precision: floats,
    or the fused projection's exact Dyadic logits (_dyadic.py)."""

    __slots__ = (
        "values",
        "finite",
        "top",
        "top_fixed",
        "top_exact",
        "arguments",
        "exact",
        "_terms",
        "total",
        "log_total",
        "gap_sum",
        "kept_high",
        "dropped",
    )

    def __init__(self, values: Sequence[Logit]) -> None:
        fraction_bits = FRACTION_BITS
        self.values = values
        masked = -math.inf in values
        if masked:
            finite: Sequence[int] = [j for j, x in enumerate(values) if x != -math.inf]
            top = max([values[j] for j in finite])
        else:
            finite = range(len(values))
            top = max(values)
        self.finite = finite
        self.top = top
        # (m − x_j)·2^F lies in [D_j, D_j + 2) (exactly D_j where ``exact``), see Row._fix_arguments.
        on_grid = None if masked else _on_grid(values, fraction_bits)
        if on_grid is not None:  # every x_j·2^F an integer: each D_j exact, from C-speed steps
            # m·2^F is the largest x_j·2^F (scaling by 2^F is exact and monotone): ⌊m·2^F⌋ itself.
            top_fixed = max(on_grid)
            self.top_fixed, self.top_exact = top_fixed, True
            self.arguments = list(map(_subtract, repeat(top_fixed), on_grid))
            self.exact = [True] * len(values)
        else:
            top_fixed, top_exact = _floor_fixed(top, fraction_bits)
            self.top_fixed, self.top_exact = top_fixed, top_exact
            self.arguments, self.exact = self._arguments_one_by_one(top_fixed, top_exact)
        # Term bounds by D_j, for a row longer than _SHARED_ROW_LENGTH (shorter rows share theirs).
        self._terms: dict[int, tuple[int, int, int]] = {}
        self.total = self._sum_terms()
        self.log_total = _log_on_grid(*self.total)
        self.gap_sum: Interval | None = None

    def _arguments_one_by_one(
        self, top_fixed: int, top_exact: bool
    ) -> tuple[list[int], list[bool]]:
        """D_j and whether it is exact, for rows with a value off the 2^-F grid or a −inf."""
        fraction_bits = FRACTION_BITS
        values = self.values
        size = len(values)
        arguments = [0] * size
        exact = [True] * size
        for j in self.finite:
            x = values[j]
            if x == self.top:
                continue
            numerator, denominator = x.as_integer_ratio()
            shifted = numerator << fraction_bits
            x_fixed = shifted // denominator
            if top_exact and x_fixed * denominator == shifted:
                arguments[j] = top_fixed - x_fixed
            else:
                arguments[j] = max(top_fixed - x_fixed - 1, 0)
                exact[j] = False
        return arguments, exact

    def term_bounds(self, j: int) -> tuple[int, int, int]:
        """e_j ∈ [lo·2^exp, hi·2^exp] (j finite): the bounds of Row.term_bounds."""
        argument = self.arguments[j]
        if argument == 0 and self.exact[j]:
            return _ONE_TERM
        # Cached by D_j (the bounds depend on nothing else): _sum_terms fills one of these for
        # the terms it keeps, so a tie or a repeated gap is computed once.
        cached = self._terms.get(argument) or _SHARED_TERMS.get(argument)
        if cached is None:
            significand, exponent = _TABLE.exp_neg(argument)
            slack = (significand >> _SLACK_SHIFT) + 1
            cached = self._terms[argument] = (significand - slack, significand + slack, exponent)
        return cached

    def _sum_terms(self) -> tuple[int, int, int]:
        """S = Σ_j e_j as [lo, hi]·2^exp; terms below e^-cut dropped and bounded as in Row.sum_terms."""
        finite = self.finite
        count = len(finite)
        beyond_cut = _BEYOND_CUT.get(count)
        if beyond_cut is None:
            beyond_cut = _BEYOND_CUT[count] = _beyond_cut(count)
        arguments = self.arguments
        exact = self.exact
        exp_neg = _TABLE.exp_neg
        slack_shift = _SLACK_SHIFT
        # A repeated D_j (a tie, or a logit of few significant bits: bfloat16) is computed once;
        # term_bounds reads the same dict. Small rows share one across rows: their logits of few
        # bits repeat the same gaps from row to row.
        if count > _SHARED_ROW_LENGTH:
            known = self._terms
        else:
            known = _SHARED_TERMS
            if len(known) > _SHARED_TERMS_LIMIT:
                known.clear()
        one = 1 << _GUARD_BITS
        # Σ lo_j·2^(exp_j − base) with base the least exponent of the kept terms, summed as the
        # terms come: where a term's exponent is below the base so far, the partial sums are
        # shifted up to it first. Every shift is exact, so the integers are the same as summing
        # after the minimum is known.
        lo = hi = dropped = 0
        base = _ABOVE_EVERY_EXPONENT
        pairs: Iterable[tuple[int, bool]] = (
            zip(arguments, exact, strict=True)
            if count == len(arguments)
            else [(arguments[j], exact[j]) for j in finite]
        )
        # A long row is summed by distinct (D_j, exact) with multiplicities n, counted at C
        # speed: n·lo_j and n·hi_j are the same integers as n additions of lo_j and hi_j. The
        # rows of the suite's largest vocabularies repeat a few thousand values.
        repeats: Iterable[tuple[tuple[int, bool], int]] = (
            Counter(pairs).items() if count > _COUNTED_ROW_LENGTH else zip(pairs, repeat(1))
        )
        for (argument, is_exact), n in repeats:
            if argument >= beyond_cut:
                dropped += n
                continue
            if argument == 0 and is_exact:
                term_lo = term_hi = one
                exponent = -_GUARD_BITS
            else:  # as term_bounds, inline: this loop is the oracle's hottest
                bounds = known.get(argument)
                if bounds is None:
                    significand, exponent = exp_neg(argument)
                    slack = (significand >> slack_shift) + 1
                    bounds = known[argument] = (significand - slack, significand + slack, exponent)
                term_lo, term_hi, exponent = bounds
            if n != 1:
                term_lo, term_hi = n * term_lo, n * term_hi
            if exponent >= base:
                shift = exponent - base
                lo += term_lo << shift
                hi += term_hi << shift
            else:
                shift = base - exponent
                lo = (lo << shift) + term_lo
                hi = (hi << shift) + term_hi
                base = exponent
        self.kept_high = hi
        #: (how many terms were left out, a lower bound on their ⌊m − x_j⌋), for a finer bound
        #: on them than S carries: each is below e^-a ≤ 2^-a.
        self.dropped: tuple[int, int] | None = None
        if dropped:
            hi += (hi >> (FAST_BITS + 8)) + 1
            nearest = min([arguments[j] for j in finite if arguments[j] >= beyond_cut])
            self.dropped = (dropped, nearest >> FRACTION_BITS)
        return lo, hi, base

    def argument(self, j: int) -> Interval:
        """m − x_j on the 2^-F grid."""
        low = self.arguments[j]
        return (low, low, -FRACTION_BITS) if self.exact[j] else (low, low + 2, -FRACTION_BITS)

    def nll(self, t: int) -> Interval:
        """−log p_t = (m − x_t) + log S (t finite): two non-negative parts, no cancellation."""
        return add(self.argument(t), self.log_total)

    def lse(self) -> Interval:
        """m + log S."""
        top = (self.top_fixed, self.top_fixed + (0 if self.top_exact else 1), -FRACTION_BITS)
        return add(top, self.log_total)

    def gaps(self) -> Interval:
        """Σ_j (m − x_j) over the finite classes."""
        if self.gap_sum is None:
            lo = hi = 0
            arguments, exact = self.arguments, self.exact
            for j in self.finite:
                lo += arguments[j]
                hi += arguments[j] if exact[j] else arguments[j] + 2
            self.gap_sum = (lo, hi, -FRACTION_BITS)
        return self.gap_sum


def _floor_fixed(x: Logit, fraction_bits: int) -> tuple[int, bool]:
    """(⌊x·2^F⌋, whether x·2^F is an integer), exactly."""
    numerator, denominator = x.as_integer_ratio()
    shifted = numerator << fraction_bits
    floor = shifted // denominator
    return floor, floor * denominator == shifted


def _on_grid(values: Sequence[Logit], fraction_bits: int) -> list[int] | None:
    """[x·2^F for x in values] as integers when every one is an integer, else None.

    ldexp only changes the exponent (exact) while x·2^F stays below 2^1024 (OverflowError
    beyond); the product is an integer when the last bit of x is worth at least 2^-F, which holds
    for |x| ≥ 2^(52 − F) and x = 0. Three C-speed passes instead of a Python loop per value.
    A row of exact Dyadic logits (the fused projection's) is on the grid where every exponent
    is at least −F: then each x·2^F is its mantissa shifted.
    """
    if type(values[0]) is Dyadic:
        dyadics = cast(Sequence[Dyadic], values)
        if all(x.exp >= -fraction_bits for x in dyadics):
            return [x.man << (x.exp + fraction_bits) for x in dyadics]
        return None
    try:
        scaled = list(map(math.ldexp, cast(Sequence[float], values), repeat(fraction_bits)))
    except OverflowError:
        return None
    if not all(map(float.is_integer, scaled)):
        return None
    return list(map(int, scaled))


def _log_on_grid(lo: int, hi: int, exponent: int) -> Interval:
    """log([lo, hi]·2^exponent) (≥ 1 here) rounded outward onto the 2^-F grid.

    One Newton step from a float guess y: log S = y + log1p(r) with r = S·e^-y − 1, e^-y from
    the integer tables (relative error ≤ 2^(1−Q)), and r − r² ≤ log1p(r) ≤ r for |r| ≤ 1/2.
    The guess only has to be close (math.log's few ulps leave |r| near 2^-52, so r² is far below
    the grid); where it is not, mpmath's log decides.
    """
    guess = math.log(math.ldexp(float(lo), exponent)) if lo else 0.0
    numerator, denominator = guess.as_integer_ratio()
    if denominator <= _GRID_ONE:
        # The denominator is a power of two: the division exact, as a shift.
        guess_fixed = numerator << (FRACTION_BITS + 1 - denominator.bit_length())
        significand, term_exponent = _TABLE.exp_neg(guess_fixed)
        slack = (significand >> _SLACK_SHIFT) + 1
        scale = exponent + term_exponent
        one = 1 << -scale
        r_lo = lo * (significand - slack) - one
        r_hi = hi * (significand + slack) - one
        if 2 * max(abs(r_lo), abs(r_hi)) <= one:
            shift = -scale - FRACTION_BITS  # r on the grid: r·2^F = r_int >> shift
            low = (r_lo * (one - r_lo)) >> (shift - scale)  # (r − r²)·2^F, floored
            high = -((-r_hi) >> shift)
            return guess_fixed + low, guess_fixed + high, -FRACTION_BITS
    return _mpmath_log_on_grid(lo, hi, exponent)


def _mpmath_log_on_grid(lo: int, hi: int, exponent: int) -> Interval:
    low = widen_down(libmp.mpf_log(libmp.from_man_exp(lo, exponent), _LOG_PREC, "f"), _LOG_PREC)
    high = widen_up(libmp.mpf_log(libmp.from_man_exp(hi, exponent), _LOG_PREC, "c"), _LOG_PREC)
    return _floor_on_grid(low), _ceil_on_grid(high), -FRACTION_BITS


def _floor_on_grid(x: tuple) -> int:
    sign, man, exp, _ = x
    value = -man if sign else man
    shift = exp + FRACTION_BITS
    return value << shift if shift >= 0 else value >> -shift


def _ceil_on_grid(x: tuple) -> int:
    sign, man, exp, _ = x
    value = -man if sign else man
    shift = exp + FRACTION_BITS
    return value << shift if shift >= 0 else -((-value) >> -shift)


_cache: OrderedDict[tuple[Logit, ...], FixedRow] = OrderedDict()
_cached_elements = 0


def fixed_row(values: Sequence[Logit]) -> FixedRow | None:
    """The row at the fast precision (cached), or None where only the general path applies."""
    global _cached_elements
    key = tuple(values)
    row = _cache.get(key)
    if row is not None:
        _cache.move_to_end(key)
        return row
    if math.inf in key or key.count(-math.inf) == len(key):
        return None
    row = FixedRow(key)
    _cache[key] = row
    _cached_elements += len(key)
    while _cached_elements > CACHE_ELEMENTS and len(_cache) > 1:
        _, evicted = _cache.popitem(last=False)
        _cached_elements -= len(evicted.values)
    return row


def clear_cache() -> None:
    """Forget every cached row (the benchmarks time rows computed afresh)."""
    global _cached_elements
    _cache.clear()
    _cached_elements = 0
    _SHARED_TERMS.clear()


def enabled() -> bool:
    return fast_path_enabled()


# ---- the loss ---------------------------------------------------------------------------------


def _one_minus(man: int, exp: int) -> tuple[int, int]:
    """1 − man·2^exp, exactly."""
    if exp >= 0:
        return 1 - (man << exp), 0
    return (1 << -exp) - man, exp


def _square(interval: Interval) -> Interval:
    lo, hi, scale = interval
    if lo >= 0:
        return lo * lo, hi * hi, 2 * scale
    if hi <= 0:
        return hi * hi, lo * lo, 2 * scale
    return 0, max(lo * lo, hi * hi), 2 * scale


class LossTerms:
    """The options of a batch as exact dyadic numbers, and each counted row's loss from them.

    ℓ_i = w_t·(1 − ε)·nll_t + w_t·z·lse² + ε·(Σ_j w_j·nll_j)/C  (see _cross_entropy.py).
    """

    def __init__(
        self,
        classes: int,
        smoothing: float,
        z_loss: float,
        weight: list[float] | None,
    ) -> None:
        self.classes = classes
        self.smoothing = dyadic(smoothing)
        self.keep = _one_minus(*self.smoothing)  # 1 − ε
        self.z_loss = dyadic(z_loss)
        self.weight = weight
        if weight is None:
            self.weight_scale = 0
            self.weight_ints: list[int] | None = None
            self.weight_total = (classes, 0)
        else:
            pairs = [dyadic(w) for w in weight]
            self.weight_scale = min(exp for _, exp in pairs)
            self.weight_ints = [man << (exp - self.weight_scale) for man, exp in pairs]
            self.weight_total = (sum(self.weight_ints), self.weight_scale)

    def weight_of(self, j: int) -> tuple[int, int]:
        if self.weight_ints is None:
            return 1, 0
        return self.weight_ints[j], self.weight_scale

    def row_loss(self, values: Sequence[Logit], t: int) -> Interval | None:
        """ℓ of a counted row with target t, or None (an infinity, or the general path's case)."""
        row = fixed_row(values)
        if row is None or values[t] == -math.inf:
            return None
        w_man, w_exp = self.weight_of(t)
        eps_man, eps_exp = self.smoothing
        loss = _ZERO
        if w_man and self.keep[0]:
            loss = add(loss, _times(row.nll(t), w_man * self.keep[0], w_exp + self.keep[1]))
        if w_man and self.z_loss[0]:
            z_man, z_exp = self.z_loss
            loss = add(loss, _times(_square(row.lse()), w_man * z_man, w_exp + z_exp))
        if eps_man:
            weighted = self._weighted_nll_sum(row)
            if weighted is None:
                return None
            smoothed = _times(weighted, eps_man, eps_exp)
            loss = add(loss, _divide(smoothed, self.classes, self.classes.bit_length() + 8))
        return loss

    def _weighted_nll_sum(self, row: FixedRow) -> Interval | None:
        """Σ_j w_j·nll_j = Σ_j w_j·(m − x_j) + (Σ_j w_j)·log S over the finite classes (None when
        a masked class has a weight: the sum is infinite)."""
        values = row.values
        weights = self.weight_ints
        if len(row.finite) != len(values):
            for j, x in enumerate(values):
                if x == -math.inf and (weights is None or weights[j] != 0):
                    return None
        if weights is None:
            return add(row.gaps(), _times(row.log_total, len(row.finite), 0))
        lo = hi = finite_weight = 0
        arguments, exact = row.arguments, row.exact
        for j in row.finite:
            w = weights[j]
            if not w:
                continue
            finite_weight += w
            low = arguments[j]
            high = low if exact[j] else low + 2
            if w > 0:
                lo += w * low
                hi += w * high
            else:
                lo += w * high
                hi += w * low
        gaps = (lo, hi, self.weight_scale - FRACTION_BITS)
        return add(gaps, _times(row.log_total, finite_weight, self.weight_scale))


def reduce(
    losses: dict[int, Interval | None], reduction: str, counted_weight: tuple[int, int]
) -> float | None:
    """round64 of Σ_i ℓ_i ("sum") or Σ_i ℓ_i / Σ_i w_{y_i} ("mean"), or None (not decided here)."""
    total = _ZERO
    for loss in losses.values():
        if loss is None:
            return None
        total = add(total, loss)
    if reduction == "mean":
        man, exp = counted_weight
        if man == 0:
            return None
        lo, hi, scale = total
        if man < 0:
            lo, hi, man = -hi, -lo, -man
        total = _divide((lo, hi, scale - exp), man, man.bit_length() + 8)
    return round_interval(*total)


def negative_log_likelihood(values: Sequence[float], t: int) -> Interval | None:
    """nll_t of a row, or None (masked target, +inf logits: the general path's cases)."""
    row = fixed_row(values)
    if row is None or values[t] == -math.inf:
        return None
    # row.nll(t) inline: both parts are on the 2^-F grid, so the sum is end by end.
    low = row.arguments[t]
    high = low if row.exact[t] else low + 2
    log_lo, log_hi, _ = row.log_total
    return low + log_lo, high + log_hi, -FRACTION_BITS


def dyadic_of(x: tuple) -> tuple[int, int]:
    """(man, exp) of a finite mpmath raw float."""
    sign, man, exp, _ = x
    return (-man if sign else man), exp


# ---- the gradient -----------------------------------------------------------------------------


def row_gradient(
    terms: LossTerms,
    values: Sequence[Logit],
    t: int,
    upstream: float,
    denominator: tuple[int, int],
) -> list[float | None] | None:
    """∂/∂x_j = c·(A·p_j − B_j) of a counted row (see _gradient.py), c = upstream/denominator:
    each element as its float64 where this step decides it, else None; None for the whole row
    where only the general path applies.

    With A·C = C·w_t(1 − ε) + ε·W + 2z·w_t·C·lse and p_j = e_j/S:
        c·A·p_j = K·e_j,   K = upstream·(A·C) / (denominator·C·S),
        c·B_j = upstream·(C·w_t(1 − ε)·[j = t] + ε·w_j) / (denominator·C).
    """
    row = fixed_row(values)
    if row is None or values[t] == -math.inf:
        return None
    classes = terms.classes
    up_man, up_exp = dyadic(upstream)
    den_man, den_exp = denominator
    if den_man == 0:
        return None
    if den_man < 0:
        up_man, den_man = -up_man, -den_man
    w_man, w_exp = terms.weight_of(t)
    keep_man, keep_exp = terms.keep
    eps_man, eps_exp = terms.smoothing
    nll_factor = (w_man * keep_man, w_exp + keep_exp)  # w_t(1 − ε)
    # A·C
    a_times_c: Interval = (classes * nll_factor[0], classes * nll_factor[0], nll_factor[1])
    if eps_man:
        total_man, total_exp = terms.weight_total
        weight_part = eps_man * total_man
        a_times_c = add(a_times_c, (weight_part, weight_part, eps_exp + total_exp))
    z_man, z_exp = terms.z_loss
    if z_man and w_man:
        a_times_c = add(a_times_c, _times(row.lse(), 2 * z_man * w_man * classes, z_exp + w_exp))
    n_lo, n_hi, n_scale = _times(a_times_c, up_man, up_exp)
    s_lo, s_hi, s_exp = row.total
    d_lo, d_hi = den_man * classes * s_lo, den_man * classes * s_hi
    d_scale = den_exp + s_exp
    if n_lo >= 0:
        low_divisor, high_divisor = d_hi, d_lo
    elif n_hi <= 0:
        low_divisor, high_divisor = d_lo, d_hi
    else:
        low_divisor = high_divisor = d_lo
    extra = max(0, FAST_BITS + 24 + d_hi.bit_length() - max(abs(n_lo), abs(n_hi)).bit_length())
    k_lo = (n_lo << extra) // low_divisor
    k_hi = -((-n_hi << extra) // high_divisor)
    k_scale = n_scale - d_scale - extra
    up = (up_man, up_exp, den_man, den_exp)

    # c·B_j, each on a grid at least as fine as the coarsest product K·e_j (2^(k_scale − G))
    # and fine enough to hold it to Q + 24 bits.
    offset_scale = k_scale - _GUARD_BITS
    offsets: dict[tuple[bool, int], tuple[int, int, int]] = {}

    def offset(is_target: bool, j: int) -> tuple[int, int, int]:
        w_j = terms.weight_of(j) if eps_man else (0, 0)
        key = (is_target, w_j[0] if terms.weight_ints is not None else 0)
        cached = offsets.get(key)
        if cached is None:
            # upstream·(C·w_t(1 − ε)·[j = t] + ε·w_j) / (denominator·C)
            part: Interval = _ZERO
            if is_target:
                part = (classes * nll_factor[0], classes * nll_factor[0], nll_factor[1])
            if eps_man and w_j[0]:
                product = eps_man * w_j[0]
                part = add(part, (product, product, eps_exp + w_j[1]))
            numerator, _, scale = _times(part, up_man, up_exp)
            divisor = den_man * classes
            magnitude = abs(numerator).bit_length() - divisor.bit_length() + scale - den_exp
            grid = min(offset_scale, magnitude - FAST_BITS - 24)
            shift = scale - den_exp - grid
            if shift >= 0:
                shifted = numerator << shift
            else:
                shifted, divisor = numerator, divisor << -shift
            cached = offsets[key] = (shifted // divisor, -(-shifted // divisor), grid)
        return cached

    k_bound = max(abs(k_lo), abs(k_hi))
    negligible = k_bound.bit_length() + _GUARD_BITS
    arguments = row.arguments
    gradient: list[float | None] = []
    smoothing = eps_man != 0
    weights = terms.weight_ints
    # The weight in offset()'s key, so that a c·B_j already made is read here without a call.
    keyed_weights = weights if smoothing else None
    for j, x in enumerate(values):
        is_target = j == t
        if is_target and x == row.top:
            gradient.append(_top_target_element(terms, row, t, a_times_c, k_lo, k_hi, k_scale, up))
            continue
        needs_offset = is_target or (smoothing and (weights is None or weights[j] != 0))
        if needs_offset:
            key = (is_target, 0 if keyed_weights is None else keyed_weights[j])
            b_lo, b_hi, b_scale = offsets.get(key) or offset(is_target, j)
        if x == -math.inf:  # p_j = 0: the element is −c·B_j
            if not needs_offset:
                gradient.append(0.0)
                continue
            gradient.append(round_interval(-b_hi, -b_lo, b_scale))
            continue
        whole = arguments[j] >> FRACTION_BITS
        if needs_offset:
            below_grid = whole >= k_bound.bit_length() + k_scale - b_scale
        else:
            below_grid = whole >= negligible
        if below_grid:
            # e_j < e^-a ≤ 2^-a with a = ⌊m − x_j⌋: K·e_j lies within [min(K, 0), max(K, 0)]·2^-a,
            # which is within one unit of c·B_j's grid when a ≥ bits(K) + k_scale − b_scale.
            low, high = (-1 if k_lo < 0 else 0), (1 if k_hi > 0 else 0)
            if not needs_offset:
                gradient.append(round_interval(low * k_bound, high * k_bound, k_scale - whole))
            else:
                gradient.append(round_interval(low - b_hi, high - b_lo, b_scale))
            continue
        e_lo, e_hi, e_exp = row.term_bounds(j)
        if k_lo >= 0:
            p_lo, p_hi = k_lo * e_lo, k_hi * e_hi
        elif k_hi <= 0:
            p_lo, p_hi = k_lo * e_hi, k_hi * e_lo
        else:
            p_lo, p_hi = k_lo * e_hi, k_hi * e_hi
        p_scale = k_scale + e_exp
        if not needs_offset:
            gradient.append(round_interval(p_lo, p_hi, p_scale))
            continue
        # Line the two up on the finer grid (both shifts are bounded: a is below the threshold
        # above, and c·B_j's grid is at most Q + 24 bits finer than its magnitude).
        if p_scale >= b_scale:
            shift = p_scale - b_scale
            p_lo, p_hi, p_scale = p_lo << shift, p_hi << shift, b_scale
        else:
            shift = b_scale - p_scale
            b_lo, b_hi = b_lo << shift, b_hi << shift
        gradient.append(round_interval(p_lo - b_hi, p_hi - b_lo, p_scale))
    return gradient


def _top_target_element(
    terms: LossTerms,
    row: FixedRow,
    t: int,
    a_times_c: Interval,
    k_lo: int,
    k_hi: int,
    k_scale: int,
    upstream: tuple[int, int, int, int],
) -> float | None:
    """The element of a target that holds the row's largest logit, where p_t may be near 1.

    c·(A·p_t − B_t) = c·(A − B_t) − K·R_t with R_t = S − e_t = S − 1 summed exactly (e_t = 1):
    no cancellation as p_t → 1. Here c·(A − B_t) = upstream·(ε·(W − w_t) + 2z·w_t·C·lse) /
    (denominator·C), exactly 0 without smoothing and z-loss.
    """
    up_man, up_exp, den_man, den_exp = upstream
    classes = terms.classes
    w_man, w_exp = terms.weight_of(t)
    keep_man, keep_exp = terms.keep
    nll_part = classes * w_man * keep_man
    # A·C − C·B_t = A·C − C·w_t(1 − ε) − ε·w_t
    head = add(a_times_c, (-nll_part, -nll_part, w_exp + keep_exp))
    eps_man, eps_exp = terms.smoothing
    if eps_man and w_man:
        head = add(head, (-eps_man * w_man, -eps_man * w_man, eps_exp + w_exp))
    h_lo, h_hi, h_scale = _times(head, up_man, up_exp)
    divisor = den_man * classes
    s_lo, _, s_exp = row.total
    one = 1 << -s_exp
    rest: Interval = (s_lo - one, row.kept_high - one, s_exp)  # R_t ≥ 0, the kept terms
    if row.dropped is not None:  # and the others, each below 2^-a (a capped: still a bound)
        count, whole = row.dropped
        rest = add(rest, (0, count, -min(whole, _DROPPED_WHOLE_CAP)))
    r_lo, r_hi, r_exp = rest
    if k_lo >= 0:
        p_lo, p_hi = k_lo * r_lo, k_hi * r_hi
    elif k_hi <= 0:
        p_lo, p_hi = k_lo * r_hi, k_hi * r_lo
    else:
        p_lo, p_hi = k_lo * r_hi, k_hi * r_hi
    scale = k_scale + r_exp
    if not h_lo and not h_hi:
        return round_interval(-p_hi, -p_lo, scale)
    shift = h_scale - den_exp - scale
    if shift < 0:
        return None
    head_lo = (h_lo << shift) // divisor
    head_hi = -((-h_hi << shift) // divisor)
    return round_interval(head_lo - p_hi, head_hi - p_lo, scale)


def counted_weight(
    terms: LossTerms, targets: Sequence[int], counted: Sequence[int]
) -> tuple[int, int]:
    """Σ_i w_{y_i} over the counted rows, exactly, as (man, exp)."""
    if terms.weight_ints is None:
        return len(counted), 0
    weights = terms.weight_ints
    return sum(weights[targets[i]] for i in counted), terms.weight_scale
