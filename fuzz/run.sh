#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS (default 600), one after another.
#
#   fuzz/run.sh [SECONDS] [TARGET...]        (no TARGET: all of them)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Builds without a
# sanitizer (fast on small machines) but with debug assertions and overflow checks; a global
# allocator in the fuzz crate aborts on any single allocation above 256 MiB.
# New inputs go to $FUZZ_WORK/corpus/<target> (default fuzz/work, ignored by git); the
# committed seeds in fuzz/corpus/<target> are read, never written. Crash, timeout and
# out-of-memory reproducers land in $FUZZ_WORK/artifacts/<target>/; logs in
# $FUZZ_WORK/logs/<target>.log. Prints per target: executions, final cov/ft, crashes.
# Extra libFuzzer flags can be given in $FUZZ_FLAGS (e.g. "-jobs=2 -workers=2").
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-600}
shift || true
all=(gguf safetensors memory_store memory_manifest pairs tokenizer adapter lora)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
work=${FUZZ_WORK:-$root/fuzz/work}
target_dir=$root/fuzz/target
bin_dir=$target_dir/x86_64-unknown-linux-gnu/release

max_len() {
    case $1 in
        pairs) echo 4096 ;;
        memory_manifest | memory_store) echo 16384 ;;
        *) echo 65536 ;;
    esac
}

cd "$root" || exit 1
for t in "${targets[@]}"; do
    nice -n 5 cargo +nightly fuzz build -O -a -s none --target-dir "$target_dir" "$t" || exit 1
done

status=0
printf '%-16s %8s %12s %8s %8s %8s\n' target seconds execs cov ft crashes
for t in "${targets[@]}"; do
    corpus=$work/corpus/$t artifacts=$work/artifacts/$t/ tmp=$work/tmp/$t log=$work/logs/$t.log
    mkdir -p "$corpus" "$artifacts" "$tmp" "$work/logs"
    start=$(date +%s)
    # shellcheck disable=SC2086
    TMPDIR=$tmp RUST_BACKTRACE=1 nice -n 5 "$bin_dir/$t" "$corpus" "$root/fuzz/corpus/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
        -artifact_prefix="$artifacts" -print_final_stats=1 ${FUZZ_FLAGS:-} >"$log" 2>&1
    rc=$?
    rm -rf "$tmp"
    elapsed=$(($(date +%s) - start))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
    cov=$(sed -E 's/.*cov: ([0-9]+).*/\1/' <<<"$last")
    ft=$(sed -E 's/.*ft: ([0-9]+).*/\1/' <<<"$last")
    crashes=$(find "$artifacts" -type f -newermt "@$start" | wc -l)
    printf '%-16s %8s %12s %8s %8s %8s\n' "$t" "$elapsed" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        find "$artifacts" -type f -newermt "@$start" | sed 's/^/    reproducer: /'
        grep -m1 -E "panicked at|==pema-fuzz==|deadly signal|out-of-memory|timeout after" "$log" | sed 's/^/    /'
    fi
done
exit $status
