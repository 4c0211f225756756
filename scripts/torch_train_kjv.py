#!/usr/bin/python3
"""Train the PyTorch peer of Palm on prepared uint16 shards, the way Palm.Trainer's `train` does.

The model (Palm), Muon and the rmsnorm/AoD math are imported from the shared PyTorch peer,
../shared/bench/torch_palm_bench.py (relative to the repository root; not copied here). What the
peer lacks is added here to match Palm.Trainer (docs/trainer.md, spec "Learning rate",
"Optimizers"):
  * the LR schedule: linear warm-up (lr*(s+1)/(warmup+1)), constant, cosine cool-down over the
    last cooldown_frac of `steps` to min_lr_frac*lr, applied to both optimizers every step;
  * Palm.Trainer's hyper-parameters (muon_lr 0.02, adam_lr 0.006, betas 0.9/0.95, eps 1e-8,
    weight decay 0 for both; the peer's make_optimizers uses other values);
  * Muon's momentum warm-up counted from step 0 as Palm.Trainer does (the peer's Muon counts
    from 1, so its counter starts at -1 here);
  * global grad-norm clip 1.0 (torch.nn.utils.clip_grad_norm_, the same clip/(norm+1e-6) rule);
  * the data: random (block_size+1)-token windows of the train shards, batch 8;
  * the final val loss the way `Palm.Trainer eval` computes it: mean cross-entropy over every
    consecutive non-overlapping block_size window of the val shards.
It also prints the unigram entropy of the train shards (nats), the loss of a model that knows
only token frequencies.

Usage (from the repository root):
    /usr/bin/python3 scripts/torch_train_kjv.py --data data/kjv512 [--steps 300] [--seed 1337] [--threads 2]
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "..", "shared", "bench"))
import torch_palm_bench as peer  # noqa: E402  (the shared peer: Palm, Muon, cfg)


def lr_at(s, lr, warmup, steps, cooldown_frac, min_lr_frac):
    """Palm.Trainer's LrSchedule.At (Palm.Trainer/Optim/LrSchedule.cs)."""
    min_lr = lr * min_lr_frac
    if s < warmup:
        return lr * (s + 1) / (warmup + 1)
    if steps <= 0 or s / steps <= 1 - cooldown_frac:
        return lr
    if s >= steps:
        return min_lr
    start = (1 - cooldown_frac) * steps
    ratio = (s - start) / (steps - start)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)


def load_split(data, split):
    with open(os.path.join(data, "manifest.json")) as f:
        m = json.load(f)
    shards = [np.fromfile(os.path.join(data, s["file"]), dtype="<u2").astype(np.int64)
              for s in m["shards"] if s["split"] == split]
    return m, shards


def unigram_entropy(shards, V):
    counts = np.zeros(V, dtype=np.float64)
    for s in shards:
        counts += np.bincount(s, minlength=V)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def batch(shards, B, T, gen):
    """B random windows: a shard chosen in proportion to its window count, then a start."""
    starts = np.array([max(0, len(s) - T) for s in shards], dtype=np.int64)
    x = torch.empty(B, T, dtype=torch.long)
    y = torch.empty(B, T, dtype=torch.long)
    for b in range(B):
        i = int(torch.randint(int(starts.sum()), (1,), generator=gen))
        k = 0
        while i >= starts[k]:
            i -= starts[k]
            k += 1
        w = torch.from_numpy(shards[k][i:i + T + 1])
        x[b], y[b] = w[:-1], w[1:]
    return x, y


@torch.no_grad()
def eval_windows(model, shards, T, B):
    """Mean cross-entropy over every consecutive non-overlapping T-window (as `Palm.Trainer eval`)."""
    wins = [torch.from_numpy(s[o:o + T + 1]) for s in shards for o in range(0, len(s) - T, T)]
    total = 0.0
    for i in range(0, len(wins), B):
        w = torch.stack(wins[i:i + B])
        _, loss, _ = model(w[:, :-1], w[:, 1:])
        total += loss.item() * w.shape[0]
    return total / len(wins), len(wins)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/kjv512")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--cooldown-frac", type=float, default=0.4)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--muon-lr", type=float, default=0.02)
    ap.add_argument("--adam-lr", type=float, default=0.006)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--log", help="write one JSON line per step here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    m, train = load_split(a.data, "train")
    _, val = load_split(a.data, "val")
    V = m["vocab_size"]
    print(f"data      {a.data}: V={V}, {sum(map(len, train)):,} train + {sum(map(len, val)):,} val tokens")
    print(f"unigram   entropy of the train shards: {unigram_entropy(train, V):.4f} nats")

    # The `tiny` preset with the data's vocabulary (Palm.Trainer: model.preset=tiny).
    c = peer.cfg(V, a.block, 64, 4, 128, 16, 2, 2, 0, share="cycle", mix="mean")
    model = peer.Palm(c)   # the peer's init: embed N(0,1), factors U(+-sqrt(3)*0.5/sqrt(cols)) = Palm.Trainer's
    muon_p = [p for n, p in model.named_parameters() if n.startswith("blocks.")]
    adam_p = [p for n, p in model.named_parameters() if not n.startswith("blocks.")]
    muon = peer.Muon(muon_p, lr=a.muon_lr, weight_decay=a.weight_decay)
    muon.n_steps = -1   # the peer increments before use; Palm.Trainer's beta at step s uses s (from 0)
    adam = torch.optim.AdamW(adam_p, lr=a.adam_lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=a.weight_decay)
    print(f"model     {sum(p.numel() for p in model.parameters()):,} parameters, {c}")

    gen = torch.Generator().manual_seed(a.seed ^ 0xDA7A)
    log = open(a.log, "w") if a.log else None
    t0 = time.perf_counter()
    for s in range(a.steps):
        for opt, base in ((muon, a.muon_lr), (adam, a.adam_lr)):
            for g in opt.param_groups:
                g["lr"] = lr_at(s, base, a.warmup, a.steps, a.cooldown_frac, a.min_lr_frac)
        x, y = batch(train, a.batch, a.block, gen)
        _, loss, _ = model(x, y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip) if a.clip > 0 else torch.tensor(0.0)
        muon.step()
        adam.step()
        if log:
            log.write(json.dumps(dict(step=s + 1, loss=loss.item(), grad_norm=float(norm))) + "\n")
        if s < 20 or (s + 1) % 50 == 0 or s + 1 == a.steps:
            print(f"step {s + 1:4d}  loss {loss.item():.4f}  grad_norm {float(norm):.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    vl, n = eval_windows(model, val, a.block, a.batch)
    print(f"val       loss {vl:.4f} (perplexity {math.exp(vl):.2f}) over {n} windows of {a.block} tokens")


if __name__ == "__main__":
    main()
