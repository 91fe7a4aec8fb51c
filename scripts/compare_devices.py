#!/usr/bin/env python3
"""Compares `pema nll --json --top-k K` outputs of several devices with the CPU's, and prints
the phase-2 step table of `pema bench-step` against `benches/pytorch_train_step.py`.

    compare_devices.py nll CPU.json DEV.json [DEV.json ...] [--tol 1e-3]
    compare_devices.py steps STEPS.jsonl

`nll`: passes when every device's mean NLL is within --tol of the CPU's, and at every position
each of the CPU's top-K tokens has a log-probability within --tol on the device (a token the
device ranks just outside its top K counts only if the CPU's own gap to its K-th is < --tol).
Exit status 1 on a failure. `steps`: one table row per (shape, implementation, device, tf32),
with pema's ms/step as a ratio of PyTorch TF32's and fp32's. Standard library only.
"""

import json
import sys


def load(path):
    with open(path) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def compare_nll(cpu_path, dev_paths, tol):
    cpu = load(cpu_path)
    ok = True
    for path in dev_paths:
        dev = load(path)
        d_nll = abs(dev["mean_nll"] - cpu["mean_nll"])
        worst, missing = 0.0, 0
        for c_row, d_row in zip(cpu["top"], dev["top"]):
            d_map = {int(i): lp for i, lp in d_row}
            kth = c_row[-1][1]
            for i, lp in c_row:
                if int(i) in d_map:
                    worst = max(worst, abs(d_map[int(i)] - lp))
                elif lp - kth >= tol:
                    missing += 1
        same_len = len(cpu["top"]) == len(dev["top"])
        passed = d_nll <= tol and worst <= tol and missing == 0 and same_len
        ok &= passed
        print(
            f"{path}: mean NLL {dev['mean_nll']:.6f} vs cpu {cpu['mean_nll']:.6f} "
            f"(|Δ| {d_nll:.2e}); top-{len(cpu['top'][0])} log-probs max |Δ| {worst:.2e} over "
            f"{len(cpu['top'])} positions; {missing} top tokens missing; "
            f"{'PASS' if passed else 'FAIL'} (tolerance {tol:g})"
        )
    return ok


def steps_table(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    torch = {}
    for r in rows:
        if r.get("implementation") != "pema" and "ms_per_step" in r:
            torch[(r["shape"], bool(r.get("tf32")))] = r["ms_per_step"]
    print("| shape | implementation | device | ms/step | tokens/s | vs PyTorch TF32 | vs PyTorch fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "ms_per_step" not in r:
            continue
        impl = r.get("implementation", "pytorch")
        if impl != "pema":
            impl = f"pytorch {r.get('torch', '')}{' tf32' if r.get('tf32') else ' fp32'}"
        ratio = lambda tf32: (  # noqa: E731
            f"{torch[(r['shape'], tf32)] / r['ms_per_step']:.2f}×"
            if (r["shape"], tf32) in torch
            else "–"
        )
        print(
            f"| {r['shape']} | {impl} | {r.get('device', '')} | {r['ms_per_step']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {ratio(True)} | {ratio(False)} |"
        )
    return True


def main(argv):
    if len(argv) >= 3 and argv[0] == "nll":
        tol = 1e-3
        if "--tol" in argv:
            i = argv.index("--tol")
            tol = float(argv[i + 1])
            argv = argv[:i] + argv[i + 2 :]
        return 0 if compare_nll(argv[1], argv[2:], tol) else 1
    if len(argv) == 2 and argv[0] == "steps":
        return 0 if steps_table(argv[1]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
