#!/usr/bin/env python3
"""The same job through `pema decode` and through llama.cpp, back to back: translate the first
N sentences of the WMT22 EN->DE test file with the 3-shot template, greedy, stopping at the end
of the line (at most --max-tokens tokens), on the same GGUF file with 2 threads. Prints wall
times (model loading excluded for both; pema's whole-process time is shown too), their ratio and
BLEU of both outputs (`pema score`).

    python3 benches/decode_vs_llamacpp.py [--n 200] [--model assets/gemma-3-270m] \
        [--pema target/release/pema] [--wmt22 ../shared/data/wmt22] [--weights packed]

Needs llama-cpp-python 0.3.36 (fixtures/reference/requirements.txt) and a release build of pema.
llama-cpp-python reuses the KV cache of the longest common prefix of consecutive prompts, so
both sides compute the shared few-shot prefix once.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default=str(ROOT / "assets" / "gemma-3-270m"))
    ap.add_argument("--pema", default=os.environ.get("PEMA_BIN", str(ROOT / "target" / "release" / "pema")))
    ap.add_argument("--wmt22", default=str(ROOT.parent / "shared" / "data" / "wmt22"))
    ap.add_argument("--template", default=str(ROOT / "fixtures" / "templates" / "mt-3shot.txt"))
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--weights", default="packed")
    args = ap.parse_args()
    model = Path(args.model)
    gguf = model / "model.gguf"
    test = Path(args.wmt22) / "test.json"
    for p in (gguf, test, Path(args.pema)):
        if not p.exists():
            print(f"SKIPPED: {p} absent")
            return
    pairs = [json.loads(line) for line in test.read_text().splitlines()[: args.n]]
    template = Path(args.template).read_text()
    template = template[:-1] if template.endswith("\n") else template
    out = Path(tempfile.mkdtemp(prefix="pema-vs-llamacpp-"))

    # 1. pema decode (its summary's `seconds` excludes loading).
    t0 = time.perf_counter()
    subprocess.run(
        [args.pema, "decode", "--model", str(model), "--pairs", str(test), "--template", args.template,
         "--limit", str(args.n), "--length", str(args.max_tokens), "--batch-size", str(args.batch_size),
         "--weights", args.weights, "--out", str(out / "pema.txt"), "--refs-out", str(out / "refs.txt"),
         "--summary", str(out / "pema.json")],
        check=True, stderr=subprocess.DEVNULL)
    pema_process = time.perf_counter() - t0
    pema = json.loads((out / "pema.json").read_text())

    # 2. llama.cpp, same prompts, greedy, stop at newline.
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=1024, n_threads=2, n_threads_batch=2, n_batch=512, verbose=False)
    hyps, tokens = [], 0
    t0 = time.perf_counter()
    for p in pairs:
        prompt = template.replace("{source}", p["en"])
        r = llm.create_completion(prompt, max_tokens=args.max_tokens, temperature=0.0, top_k=1,
                                  stop=["\n"])
        hyps.append(r["choices"][0]["text"].split("\n")[0].strip())
        tokens += r["usage"]["completion_tokens"]
    llama_s = time.perf_counter() - t0
    (out / "llamacpp.txt").write_text("".join(h + "\n" for h in hyps))

    def bleu(hyp: Path) -> float:
        r = subprocess.run([args.pema, "score", "--hyp", str(hyp), "--ref", str(out / "refs.txt"),
                            "--metrics", "bleu", "--json"], check=True, capture_output=True, text=True)
        return json.loads(r.stdout.strip().splitlines()[-1])["score"]

    same = sum(a == b for a, b in zip((out / "pema.txt").read_text().splitlines(), hyps))
    print(json.dumps({
        "sentences": args.n,
        "model": model.name,
        "pema_weights": args.weights,
        "pema_decode_s": round(pema["seconds"], 2),
        "pema_process_s": round(pema_process, 2),
        "pema_tokens": pema["tokens"],
        "llamacpp_decode_s": round(llama_s, 2),
        "llamacpp_tokens": tokens,
        "speed_ratio_llamacpp_over_pema": round(llama_s / pema["seconds"], 3),
        "bleu_pema": bleu(out / "pema.txt"),
        "bleu_llamacpp": bleu(out / "llamacpp.txt"),
        "identical_hypotheses": same,
        "outputs": str(out),
    }, indent=1))


if __name__ == "__main__":
    sys.exit(main())
