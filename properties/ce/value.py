"""Value: the loss the kernel returns is the oracle's, for every reduction and option.

ℓ_i = lse(x_i) − x_{i,y_i} is token i's loss (its negative log-likelihood); a token whose target
equals ignore_index does not count. Reductions: "none" returns every ℓ_i (0 when ignored),
"sum" their total, "mean" their total over the number of counted tokens.
"""

from __future__ import annotations

from hypothesis import strategies as st

from properties.ce.calls import draw_batch, expect_oracle_loss
from properties.engine.clause import Trial, accepts, all_of, clause, supports
from properties.strategies import reduction_batches


@clause(applies=supports("mean"))
def mean_is_the_average_loss_of_counted_tokens(trial: Trial) -> None:
    """L_mean = Σ_{i counted} ℓ_i / #{i counted}.  [CE-MEAN] tol: loss"""
    batch = trial.data.draw(
        reduction_batches(dtype=trial.dtype, kernel=trial.kernel, reduction="mean"),
        label="batch",
    )
    expect_oracle_loss(trial, batch)


@clause(applies=supports("sum"))
def sum_is_the_total_loss_of_counted_tokens(trial: Trial) -> None:
    """L_sum = Σ_{i counted} ℓ_i.  [CE-SUM] tol: loss"""
    batch = trial.data.draw(
        reduction_batches(dtype=trial.dtype, kernel=trial.kernel, reduction="sum"),
        label="batch",
    )
    expect_oracle_loss(trial, batch)


@clause(applies=supports("none"))
def none_returns_each_tokens_negative_log_likelihood(trial: Trial) -> None:
    """L_none[i] = lse(x_i) − x_{i,y_i} for a counted token, 0 for an ignored one.  [CE-NONE] tol: loss"""
    batch = draw_batch(trial, reductions=("none",), options=("ignore_index",))
    expect_oracle_loss(trial, batch)


@clause(applies=accepts("ignore_index"))
def any_ignore_index_is_honoured(trial: Trial) -> None:
    """ℓ_i = [y_i ≠ k]·(lse(x_i) − x_{i,y_i}), and only tokens with y_i ≠ k count in the mean, for any integer ignore_index k (negative, 0, inside or beyond the vocabulary).  [CE-IGNORE-INDEX] tol: loss"""
    batch = draw_batch(trial, options=(), require=("ignore_index",))
    expect_oracle_loss(trial, batch)


@clause(applies=accepts("label_smoothing"))
def label_smoothing_mixes_in_the_uniform_distribution(trial: Trial) -> None:
    """ℓ_i = (1 − ε)·(lse(x_i) − x_{i,y_i}) + (ε/C)·Σ_j (lse(x_i) − x_{ij}), over counted tokens only.  [CE-SMOOTHING] tol: loss"""
    batch = draw_batch(
        trial,
        options=("ignore_index",),
        require=("label_smoothing",),
        # Some targets ignored: the smoothing term must skip them too.
        ignored=st.sampled_from([0.25, 0.5, 0.75]),
    )
    expect_oracle_loss(trial, batch)


@clause(applies=accepts("weight"))
def class_weights_give_the_weighted_mean(trial: Trial) -> None:
    """ℓ_i = w_{y_i}·(lse(x_i) − x_{i,y_i}); L_mean = Σ ℓ_i / Σ_{i counted} w_{y_i}.  [CE-WEIGHT] tol: loss"""
    # The mean is drawn half the time: its denominator Σ w_y is where weighted kernels go wrong.
    batch = draw_batch(
        trial,
        reductions=("mean", "sum", "mean", "none"),
        options=("ignore_index",),
        require=("weight",),
    )
    expect_oracle_loss(trial, batch)


@clause()
def options_combine(trial: Trial) -> None:
    """L(x, y; r, k, ε, w, z, s) = reference.cross_entropy(x, y; r, k, ε, w, z, s) for every reduction r with any combination of ignore_index k, label smoothing ε, class weights w, and the kernel's declared z-loss z and soft cap s.  [CE-OPTIONS] tol: loss"""
    batch = draw_batch(
        trial, options=("ignore_index", "label_smoothing", "weight", "z_loss", "softcap")
    )
    expect_oracle_loss(trial, batch)


@clause(applies=accepts("z_loss"))
def z_loss_adds_the_squared_log_partition(trial: Trial) -> None:
    """ℓ_i = w_{y_i}·(lse(x_i) − x_{i,y_i} + z·lse(x_i)²).  [CE-Z-LOSS] tol: loss"""
    batch = draw_batch(trial, options=("ignore_index",), require=("z_loss",))
    expect_oracle_loss(trial, batch)


@clause(applies=accepts("softcap"))
def softcap_bounds_the_logits_before_the_softmax(trial: Trial) -> None:
    """ℓ_i = lse(s·tanh(x_i/s)) − s·tanh(x_{i,y_i}/s).  [CE-SOFTCAP] tol: loss"""
    batch = draw_batch(trial, options=("ignore_index",), require=("softcap",))
    expect_oracle_loss(trial, batch)


@clause(applies=all_of(accepts("ignore_index"), supports("mean")))
def defaults_are_the_mean_and_ignore_index_minus_100(trial: Trial) -> None:
    """kernel(x, y) = L_mean(x, y) with ignore_index = −100: the defaults of F.cross_entropy.  [CE-DEFAULTS] tol: loss"""
    batch = draw_batch(
        trial, reductions=("mean",), options=(), ignored=st.sampled_from([0.25, 0.5])
    )
    expect_oracle_loss(trial, batch.without("reduction"))


CLAUSES = (
    mean_is_the_average_loss_of_counted_tokens,
    sum_is_the_total_loss_of_counted_tokens,
    none_returns_each_tokens_negative_log_likelihood,
    any_ignore_index_is_honoured,
    label_smoothing_mixes_in_the_uniform_distribution,
    class_weights_give_the_weighted_mean,
    options_combine,
    z_loss_adds_the_squared_log_partition,
    softcap_bounds_the_logits_before_the_softmax,
    defaults_are_the_mean_and_ignore_index_minus_100,
)
