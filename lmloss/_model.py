"""A small GPT: token and position embeddings, causal self-attention blocks, a tied output head.

After nanoGPT, cut to what the training loop needs. The defaults train on a 2-core CPU in about a
minute and learn more than letter frequencies from the byte-level corpus of ``_data``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmloss._data import VOCAB_SIZE


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = VOCAB_SIZE  # C: one token per byte
    block_size: int = 64  # T: context length; long enough for words and short phrases
    n_layer: int = 2  # two blocks: enough to beat a bigram model, cheap on a CPU
    n_head: int = 4  # head size 32
    n_embd: int = 128  # width; the matmuls stay small enough for two CPU cores
    dropout: float = 0.0  # a minute of training does not overfit 420 kB; 0 keeps runs reproducible


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(
                f"n_embd ({config.n_embd}) must be a multiple of n_head ({config.n_head})"
            )
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        B, T, E = x.shape
        q, k, v = self.qkv(x).split(E, dim=2)  # each (B, T, E)
        q, k, v = (t.view(B, T, self.n_head, E // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, T, head size)
        return self.proj(y.transpose(1, 2).reshape(B, T, E))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.n_embd)
        self.attention = CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Tied: the logit of byte b is the similarity to b's embedding (fewer parameters, as GPT-2).
        self.head.weight = self.token_embedding.weight
        self.apply(_init_weights)

    def forward(self, idx: Tensor) -> Tensor:
        """Logits (B, T, C) for token ids (B, T): position t sees tokens 0..t only."""
        return self.head(self.hidden_states(idx))  # (B, T, C)

    def hidden_states(self, idx: Tensor) -> Tensor:
        """The final hidden states (B, T, E), what the head projects to logits: a fused
        projection + loss (lmloss.linear_cross_entropy) takes these and ``head.weight``."""
        B, T = idx.shape
        if self.config.block_size < T:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        positions = torch.arange(T, device=idx.device)
        x = self.token_embedding(idx) + self.position_embedding(positions)  # (B, T, E)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)  # (B, T, E)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _init_weights(module: nn.Module) -> None:
    # GPT-2's initialisation: small normal weights keep the initial logits near zero, so the
    # initial loss is close to log C (uniform over the bytes).
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
