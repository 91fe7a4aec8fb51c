#!/usr/bin/env python3
"""Time sacreBLEU's corpus BLEU and chrF on the same files the `metrics` criterion bench uses.

Usage: python3 benches/sacrebleu_baseline.py HYP REF [--repeat N]
Prints one JSON object: {"sacrebleu": version, "segments": n, "bleu_s": …, "chrf_s": …,
"bleu": score, "chrf": score}. Times are the best of N runs of `corpus_score` (file reading
excluded; a fresh metric object per run so no reference cache is reused).
"""

import argparse
import json
import time

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF


def read(path):
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip() for line in f]


def best_time(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hyp")
    ap.add_argument("ref")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    hyps, refs = read(args.hyp), read(args.ref)
    assert len(hyps) == len(refs)
    bleu_s, bleu = best_time(lambda: BLEU().corpus_score(hyps, [refs]), args.repeat)
    chrf_s, chrf = best_time(lambda: CHRF().corpus_score(hyps, [refs]), args.repeat)
    print(json.dumps({
        "sacrebleu": sacrebleu.__version__, "segments": len(hyps),
        "bleu_s": bleu_s, "chrf_s": chrf_s, "bleu": bleu.score, "chrf": chrf.score,
    }))


if __name__ == "__main__":
    main()
