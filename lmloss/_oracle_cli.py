"""`lmloss oracle`: the essay's worked example, computed by the oracle."""

from __future__ import annotations

import argparse
import math
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "oracle",
        help="print the essay's worked example as the oracle computes it",
        description="Compute the essay's worked example with the arbitrary-precision oracle.",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import reference

    print("The cat sat on the ___ : the loss of one token is -log p(target).")
    for p in (0.30, 0.15):
        # Logits log p and log(1 - p) give a two-way softmax with p(target) = p exactly in the
        # limit; the oracle evaluates the loss of those float logits.
        row = [math.log(p), math.log1p(-p)]
        loss = reference.token_nll(row, 0)
        print(f"  p(mat) = {p:.2f}:  -log p = {float(loss):.17g}  (essay: {-math.log(p):.2f})")
    per_token = reference.token_nll([math.log(0.8), math.log1p(-0.8)], 0)
    for n in (100, 250):
        rows = [[math.log(0.8), math.log1p(-0.8)]] * n
        prob = reference.sequence_prob(rows, [0] * n)
        logprob = reference.sequence_logprob(rows, [0] * n)
        print(f"  {n} tokens at p = 0.8: P = {float(prob):.3g}, log P = {float(logprob):.6f}")
    print(
        f"  (each token's loss: {float(per_token):.6f}; the essay's '0.8^100 ≈ 6e-25' is 0.8^250)"
    )
    return 0
