"""A small transformer trained on the CPU with AdamW, watched by lambexp's lens: which layer kinds
(embeddings, attention, MLP, LayerNorm, biases) LAMB would slow down or speed up. docs/watch.md.

    python examples/char_transformer.py        # 300 steps; prints the folder it watched into
    lambexp lens runs/watch/<that folder>      # the figures, and the table per layer kind

The model is GPT-shaped (token and position embeddings, pre-LayerNorm blocks of causal self-attention
and an MLP, a final LayerNorm and a linear head), predicting the next character of Python's own
standard library source, which every Python installation carries: no download.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

import lambexp


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.ModuleDict({"qkv": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d)})
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.attn["qkv"](self.ln_1(x)).split(d, dim=2)  # 3 × (B, T, d)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in (q, k, v))  # 3 × (B, H, T, d/H)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn["proj"](y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln_2(x))


class CharTransformer(nn.Module):
    """Next-character prediction: (B, T) character ids → (B, T, vocab) logits."""

    def __init__(self, vocab: int, d: int = 128, layers: int = 4, heads: int = 4, block: int = 128):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.Sequential(*(Block(d, heads) for _ in range(layers)))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))  # (B, T, d)
        return self.head(self.ln_f(self.blocks(x)))


def stdlib_text(chars: int = 2_000_000) -> torch.Tensor:
    """The first ``chars`` characters of the standard library's top-level modules, in name order, as
    ids of printable ASCII (32-126, newline as 127's place: 96 symbols; others read as '?')."""
    folder = Path(os.__file__).parent
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*.py")))
    codes = torch.tensor(list(text[:chars].encode("ascii", errors="replace")), dtype=torch.long)
    codes = torch.where(codes == 10, 127, codes)  # newline
    codes = torch.where((codes < 32) | (codes > 127), ord("?"), codes)
    return codes - 32  # 0 … 95


VOCAB = 96


def batches(data: torch.Tensor, batch: int, block: int, generator: torch.Generator):
    """Endless random windows: (B, T) inputs and the (B, T) next characters."""
    while True:
        start = torch.randint(0, len(data) - block - 1, (batch,), generator=generator)
        window = torch.stack([data[s : s + block + 1] for s in start.tolist()])  # (B, T+1)
        yield window[:, :-1], window[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=10, help="watch every N-th optimizer step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--logdir", type=Path, default=None, help="default: runs/watch/<UTC time>")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = CharTransformer(VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    warmup = 30
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / warmup))
    data = batches(stdlib_text(), batch=16, block=64, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with lambexp.watch(optimizer, model, logdir=args.logdir, every=args.every) as lens:  # the one line
        for step in range(args.steps):
            x, y = next(data)
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0 or step == args.steps - 1:
                print(f"step {step:4d}  loss {loss.item():.3f}  ({math.exp(loss.item()):.1f} perplexity)"
                      f"  {time.perf_counter() - start:.0f} s", flush=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"{n / 1e6:.2f}M parameters; watched into {lens.logdir}; draw it with: lambexp lens {lens.logdir}")


if __name__ == "__main__":
    main()
