"""Contract 3's clauses (prefix LCE): fused projection + loss, F.linear_cross_entropy-shaped."""
