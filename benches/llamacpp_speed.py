"""llama.cpp's prefill/decode speed on the same GGUF files, for a side-by-side with
`cargo bench -p pema-benches --bench backbone` taken in the same session (same load).

    /tmp/refvenv/bin/python benches/llamacpp_speed.py [--reps 3]

Reuses the timing routine of fixtures/reference/gen.py (128-token prompt, 64 greedy decode
steps, 2 threads) and prints one JSON object per model.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures" / "reference"))

import gen  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    for name in ["smollm2-135m", "gemma-3-270m"]:
        path = ROOT / "assets" / name / "model.gguf"
        if not path.is_file():
            print(f"SKIPPED {name}: {path} absent (cargo xtask fetch-assets)")
            continue
        rec = gen.speed_record(path, args.reps)
        print(json.dumps({"model": name, **rec}))


if __name__ == "__main__":
    main()
