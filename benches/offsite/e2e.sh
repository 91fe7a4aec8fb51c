#!/usr/bin/env bash
# Offsite end to end on loopback: the same data-owner run (head, memories, training, PLM and
# PEMA+GU decoding) in process (--model) and through `pema serve` (--plm); every artifact is
# compared byte for byte. Needs `cargo build --release -p pema-cli`, the assets, and a task's
# prepared pairs (PAIRS_DIR, default: what `cargo xtask reproduce-paper` wrote for WMT22).
set -euo pipefail
cd "$(dirname "$0")/../.."
P=${P:-target/release/pema}
M=assets/gemma-3-270m
T=fixtures/templates/mt-3shot.txt
D=${OUT:-target/offsite-e2e}
rm -rf $D/local $D/remote; mkdir -p $D/local $D/remote $D/data
SRC=${PAIRS_DIR:-results/standard/wmt22/data}
head -n ${NTRAIN:-48} $SRC/train.jsonl > $D/data/train.jsonl
head -n ${NDEV:-24} $SRC/dev.jsonl > $D/data/dev.jsonl
head -n ${NTEST:-16} $SRC/test.jsonl > $D/data/test.jsonl
umask 077; echo "e2e-$(date +%s%N)" > $D/token
PORT=7979; URL=http://127.0.0.1:$PORT
$P serve --model $M --listen 127.0.0.1:$PORT --token-file $D/token --weights packed > $D/serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
TRAIN="--rank 64 --batch1 512 --batch2 64 --max-steps1 20 --max-steps2 30 --validate-every 10 --dev-max 512 --no-progress"
for side in local remote; do
  if [ $side = local ]; then SRCARG="--model $M"; else SRCARG="--plm $URL --plm-token-file $D/token"; fi
  O=$D/$side
  s=$(date +%s.%N)
  $P export-head $SRCARG --out $O/head.safetensors
  for split in train dev; do
    $P memory build $SRCARG --pairs $D/data/$split.jsonl --template $T --out $O/mem-$split --weights packed --batch-size 8 --no-progress
  done
  $P train --memory $O/mem-train --dev-memory $O/mem-dev --head $O/head.safetensors --out $O/adapter $TRAIN
  $P decode $SRCARG --pairs $D/data/test.jsonl --template $T --out $O/plm.txt --summary $O/plm.json
  $P decode $SRCARG --pairs $D/data/test.jsonl --template $T --adapter $O/adapter --schedule gu --lambda-max 0.7 --out $O/pema-gu.txt --summary $O/pema.json
  echo "$side: $(awk "BEGIN {print $(date +%s.%N) - $s}") s"
done
kill -INT $SERVER; wait $SERVER || true
trap - EXIT
echo "== comparisons"
for f in head.safetensors plm.txt pema-gu.txt adapter/adapter.safetensors; do
  cmp $D/local/$f $D/remote/$f && echo "identical: $f"
done
for split in train dev; do
  for s in $D/local/mem-$split/shard-*; do cmp $s $D/remote/mem-$split/$(basename $s) && echo "identical: mem-$split/$(basename $s)"; done
done
tail -n 3 $D/serve.log
