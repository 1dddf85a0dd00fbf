"""Kernels the checker is run against: correct reimplementations, deliberately broken ones (one
per known bug class, to prove the suite has teeth), and real kernels (PyTorch under
``torch.compile``, Liger-Kernel). Each is loadable as a SPEC, e.g.
``lmloss check properties.kernels.broken:mean_counts_ignored_tokens``.
"""
