#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on a GPU machine that has no cargo and no network,
# in $PACK (default .gpu/, git-ignored):
#   bin/      pema (release, --features cuda,wgpu), xtask (the dev profile, which this workspace
#             optimises), assets.sha256
#   wmt22/    the paper's WMT22 files
#   gl/       the Vulkan loader package (for wgpu where the image lacks it), if apt-get can get it
#   pNN/      assets.tgz.NN: Gemma 3 270M (model.gguf, tokenizer.json) as a gzip'd tar split
#             into parts of $PART_MIB MiB, so that each part travels in one device call
#             (a call carries at most 64 MiB, the repository's tracked files, ~7 MiB, included)
# and prints the device calls that carry them. Run from anywhere; builds take ~10 min
# (NO_BUILD=1 packs the binaries already in target/).
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=${PACK:-.gpu}
PART_MIB=${PART_MIB:-52}
WMT22=${WMT22:-../shared/data/wmt22}

[ -f assets/gemma-3-270m/model.gguf ] || cargo xtask fetch-assets
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release -p pema-cli --features cuda,wgpu
    cargo build -p xtask
fi

rm -rf "$PACK"
mkdir -p "$PACK/bin" "$PACK/wmt22" "$PACK/gl"
cp target/release/pema target/debug/xtask "$PACK/bin/"
strip "$PACK/bin/pema" "$PACK/bin/xtask" 2>/dev/null || true
for f in test.json dev.json news_commentary_16_en_de_train_0.json; do
    cp "$WMT22/$f" "$PACK/wmt22/"
done
(cd assets && sha256sum gemma-3-270m/model.gguf gemma-3-270m/tokenizer.json) >"$PACK/bin/assets.sha256"
(cd "$PACK/gl" && apt-get download libvulkan1 >/dev/null 2>&1) || echo "(no Vulkan loader package: wgpu needs the image's)"
tar -C assets -c gemma-3-270m/model.gguf gemma-3-270m/tokenizer.json | gzip -1 |
    split -b "${PART_MIB}M" -d -a 2 - "$PACK/assets.tgz."
parts=()
for f in "$PACK"/assets.tgz.*; do
    n=${f##*.}
    mkdir -p "$PACK/p$n"
    mv "$f" "$PACK/p$n/"
    parts+=("$PACK/p$n")
done

du -sh "$PACK"/* | sed 's/^/  /'
echo
mib() { du -sm "$@" | awk '{s += $1} END {print s}'; }
repo=$(git ls-files -z | xargs -0 du -cm | tail -1 | cut -f1)
first=("$PACK/bin" "$PACK/wmt22" "$PACK/gl")
last=${parts[${#parts[@]}-1]}
if [ ${#parts[@]} -gt 1 ] && [ $(($(mib "${first[@]}" "$last") + repo)) -lt 62 ]; then
    first+=("$last")
    unset 'parts[${#parts[@]}-1]'
fi
list() { printf '"%s", ' "$@" | sed 's/, $//'; }
echo "device calls (one after another, within the machine's warm period; each carries < 64 MiB"
echo "with the repository's ${repo} MiB):"
echo "  run carry [$(list "${first[@]}")]  command: true"
for p in "${parts[@]}"; do
    echo "  run carry [\"$p\"]  command: true"
done
echo "  run command: scripts/gpu-check.sh   (timeout_s 600; STAGES=... to run a part)"
