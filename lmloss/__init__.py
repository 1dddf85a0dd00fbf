"""lmloss: the production PyTorch side (loss API, kernels, training loop, checker, CLI)."""

__all__: list[str] = []
