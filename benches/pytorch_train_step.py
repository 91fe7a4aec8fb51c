#!/usr/bin/env python3
"""One phase-2 PEMA training step in PyTorch, at the same shapes as benches/benches/adapter.rs.

The step is the official code's phase 2: input dropout (p=0.2), z = s*A(x) with s = 1/r,
h_rct = B_rct(z) (B_rct frozen), h_pd = B_pd(z), logits = W_hd . rmsnorm(h_pd) with a frozen
head, L = k*MSE(h_rct, x) + (1-k)*CE(logits, y), backward, Adam(lr=1e-3, eps=1e-8).

Usage:
    python3 benches/pytorch_train_step.py [--device cpu|cuda] [--shapes opt-like,gemma-vocab]
        [--threads N] [--steps N] [--tf32] [--paper]

--shapes issue10 runs the fused-head grid (SmolLM2 and Gemma shapes, r 64/512, B 256/2048).
--paper adds the paper's GPU shape (B=2048, d=2048, r=512, V=50272). --tf32 allows TF32
matmuls on CUDA. Prints one JSON object per shape: ms/step (median of --steps timed steps after
warm-up), tokens/s, and peak memory (CUDA: torch.cuda.max_memory_allocated; CPU: ru_maxrss
growth of this process). Without torch installed it says so and exits 0.
"""

import argparse
import json
import resource
import statistics
import sys
import time

SHAPES = {
    "opt-like": dict(batch=256, d=640, rank=128, vocab=32768),
    "gemma-vocab": dict(batch=32, d=640, rank=128, vocab=262144),
    "paper": dict(batch=2048, d=2048, rank=512, vocab=50272),
}
# The fused-head issue's grid (benches/benches/adapter.rs runs the same names).
for _m, _d, _v in (("smollm2", 576, 49152), ("gemma", 640, 262144)):
    for _b in (256, 2048):
        for _r in (64, 512):
            SHAPES[f"{_m}-r{_r}-b{_b}"] = dict(batch=_b, d=_d, rank=_r, vocab=_v)
GROUPS = {"issue10": [k for k in SHAPES if k.startswith(("smollm2-", "gemma-r"))]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", default="opt-like,gemma-vocab")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--paper", action="store_true")
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print(json.dumps({"error": "torch is not installed; nothing measured"}))
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    names = [n for s in args.shapes.split(",") if s for n in GROUPS.get(s, [s])]
    if args.paper and "paper" not in names:
        names.append("paper")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for name in names:
        s = SHAPES[name]
        B, d, r, V = s["batch"], s["d"], s["rank"], s["vocab"]
        g = torch.Generator().manual_seed(0)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        w_hd = (0.05 * (torch.rand(V, d, generator=g) * 2 - 1)).to(dev)  # frozen, no grad
        norm_w = torch.ones(d, device=dev)
        A = torch.nn.Linear(d, r, bias=False).to(dev)  # Kaiming-uniform(a=sqrt(5))
        B_rct = torch.nn.Linear(r, d, bias=False).to(dev)
        B_pd = torch.nn.Linear(r, d, bias=False).to(dev)
        torch.nn.init.zeros_(B_pd.weight)
        B_rct.weight.requires_grad_(False)  # frozen in phase 2
        opt = torch.optim.Adam(list(A.parameters()) + list(B_pd.parameters()), lr=1e-3, eps=1e-8)
        x = (torch.rand(B, d, generator=g) * 2 - 1).to(dev)
        y = torch.tensor([(i * 7919) % V for i in range(B)], device=dev)
        drop = torch.nn.Dropout(0.2)
        kappa, scale = 0.2, 1.0 / r

        def step():
            z = A(drop(x)) * scale
            h_rct = B_rct(z)
            h_pd = B_pd(z)
            h = h_pd * torch.rsqrt(h_pd.pow(2).mean(-1, keepdim=True) + 1e-6) * norm_w
            logits = h @ w_hd.t()
            loss = kappa * F.mse_loss(h_rct, x) + (1 - kappa) * F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            step()
        sync()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss = step()
            sync()
            times.append(time.perf_counter() - t0)
        ms = 1e3 * statistics.median(times)
        out = dict(
            shape=name, batch=B, d=d, rank=r, vocab=V, device=str(dev),
            threads=torch.get_num_threads(), tf32=bool(args.tf32 and dev.type == "cuda"),
            torch=torch.__version__, ms_per_step=round(ms, 3),
            tokens_per_s=round(B / (ms / 1e3), 1), loss=float(loss.detach()),
        )
        if dev.type == "cuda":
            out["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out["peak_rss_mib"] = round(rss1 / 1024, 1)
            out["peak_rss_growth_mib"] = round((rss1 - rss0) / 1024, 1)
        print(json.dumps(out), flush=True)
        del w_hd, A, B_rct, B_pd, opt, x, y
    return 0


if __name__ == "__main__":
    sys.exit(main())
