#!/usr/bin/env bash
# The GPU proof in one go, on a GPU machine (no cargo, no network needed there), from what
# scripts/gpu-pack.sh prepared on the CPU machine. Run from the repository root:
#
#   scripts/gpu-check.sh                      # every stage
#   STAGES="env nll step" scripts/gpu-check.sh
#
# Stages (each logs to $RESULTS/<stage>.log; a failing stage does not stop the next ones):
#   env      driver, CUDA toolkit (NVRTC on LD_LIBRARY_PATH), Vulkan loader and ICD
#   nll      Gemma 3 270M: mean NLL and top-10 log-probs at every position on each of
#            $DEVICES against the CPU path (scripts/compare_devices.py, tolerance $TOL)
#   step     the phase-2 training step at $SHAPES: `pema bench-step` on each of $DEVICES,
#            PyTorch fp32 and TF32 (benches/pytorch_train_step.py) in the same run
#   profile  `xtask reproduce-paper --profile full --tasks wmt22 --device cuda` with the
#            prebuilt pema, stage times in its results.json (killed after $PROFILE_LIMIT_S;
#            stages are cached under $PROFILE_DIR, so a second call on the same warm machine
#            resumes)
#
# Settings (environment): PACK (.gpu), RESULTS ($OUT if set, else gpu-results), DEVICES
# ("cuda wgpu"), SHAPES (paper,gemma-r512-b2048), STEPS (10), TOL (1e-3), PROFILE_DIR
# (gpu-profile), PROFILE_LIMIT_S (1800), PROFILE_TASKS (wmt22). DEVICES="cpu" and small SHAPES
# run the whole script on a CPU machine as a dry run.
set -uo pipefail
cd "$(dirname "$0")/.."

PACK=${PACK:-.gpu}
RESULTS=${RESULTS:-${OUT:-gpu-results}}
DEVICES=${DEVICES:-cuda wgpu}
SHAPES=${SHAPES:-paper,gemma-r512-b2048}
STEPS=${STEPS:-10}
TOL=${TOL:-1e-3}
PROFILE_DIR=${PROFILE_DIR:-gpu-profile}
PROFILE_LIMIT_S=${PROFILE_LIMIT_S:-1800}
PROFILE_TASKS=${PROFILE_TASKS:-wmt22}
STAGES=${STAGES:-env nll step profile}
PEMA=${PEMA:-$PACK/bin/pema}
XTASK=${XTASK:-$PACK/bin/xtask}
MODEL=assets/gemma-3-270m
mkdir -p "$RESULTS"
start=$(date +%s)
failed=()
say() { echo "== $* ($(($(date +%s) - start)) s)" | tee -a "$RESULTS/summary.txt"; }

# --- set-up shared by every stage ------------------------------------------------------------

# NVRTC (burn-cuda compiles its kernels at run time): the toolkit's lib64, or pip's wheel.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64 \
    "$(python3 -c 'import nvidia.cuda_nvrtc, os; print(os.path.dirname(nvidia.cuda_nvrtc.__file__) + "/lib")' 2>/dev/null)"; do
    if [ -n "$d" ] && ls "$d"/libnvrtc.so* >/dev/null 2>&1; then
        export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        break
    fi
done
# Vulkan for wgpu: the loader from $PACK/gl (gpu-pack.sh downloads it) when the image lacks
# it, and the NVIDIA ICD.
if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1 && ls "$PACK"/gl/*.deb >/dev/null 2>&1; then
    for f in "$PACK"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
    /etc/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$icd" ]; then
        export VK_DRIVER_FILES=${VK_DRIVER_FILES:-$icd}
        break
    fi
done
# The model and the WMT22 files from the pack, reassembled once.
if [ ! -f "$MODEL/model.gguf" ] && ls "$PACK"/p*/assets.tgz.* >/dev/null 2>&1; then
    mkdir -p assets
    cat "$PACK"/p*/assets.tgz.* | gzip -dc | tar -x -C assets
fi
if [ -f "$PACK/bin/assets.sha256" ] && [ -f "$MODEL/model.gguf" ]; then
    (cd assets && sha256sum -c --quiet "../$PACK/bin/assets.sha256") || {
        echo "the reassembled assets do not match their sha256 (a part is missing?)"
        exit 1
    }
fi
WMT22=${WMT22:-$PACK/wmt22}
[ -f "$WMT22/test.json" ] || WMT22=../shared/data/wmt22

# --- stages ----------------------------------------------------------------------------------

stage_env() {
    nvidia-smi || true
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
    ldconfig -p | grep -E "libcuda.so|libnvrtc|libvulkan" || true
    python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))' || true
    "$PEMA" --version
}

stage_nll() {
    local text="$RESULTS/nll-text.txt"
    python3 - "$text" <<'PY'
import json, sys
d = json.load(open("fixtures/reference/gemma-3-270m.f32.json"))
open(sys.argv[1], "w").write(d["nll"]["translation_3shot"]["text"])
PY
    "$PEMA" nll --model "$MODEL" --text-file "$text" --json --top-k 10 --device cpu \
        >"$RESULTS/nll-cpu.json" || return 1
    local outs=()
    for dev in $DEVICES; do
        [ "$dev" = cpu ] && continue
        if "$PEMA" nll --model "$MODEL" --text-file "$text" --json --top-k 10 --device "$dev" \
            >"$RESULTS/nll-$dev.json"; then
            outs+=("$RESULTS/nll-$dev.json")
        else
            echo "pema nll on $dev failed"
            return 1
        fi
    done
    [ ${#outs[@]} -eq 0 ] && outs=("$RESULTS/nll-cpu.json")
    python3 scripts/compare_devices.py nll "$RESULTS/nll-cpu.json" "${outs[@]}" --tol "$TOL"
}

stage_step() {
    local jsonl="$RESULTS/steps.jsonl" ok=0
    : >"$jsonl"
    for dev in $DEVICES; do
        "$PEMA" bench-step --shapes "$SHAPES" --steps "$STEPS" --device "$dev" | tee -a "$jsonl" || ok=1
    done
    local torch_dev=cuda
    case " $DEVICES " in *" cuda "*) ;; *) torch_dev=cpu ;; esac
    python3 benches/pytorch_train_step.py --device "$torch_dev" --shapes "$SHAPES" --steps "$STEPS" \
        | tee -a "$jsonl" || ok=1
    if [ "$torch_dev" = cuda ]; then
        python3 benches/pytorch_train_step.py --device cuda --shapes "$SHAPES" --steps "$STEPS" --tf32 \
            | tee -a "$jsonl" || ok=1
    fi
    python3 scripts/compare_devices.py steps "$jsonl" | tee "$RESULTS/steps.md"
    return $ok
}

stage_profile() {
    local dev=cuda
    case " $DEVICES " in *" cuda "*) ;; *) dev=$(echo "$DEVICES" | awk '{print $1}') ;; esac
    timeout "$PROFILE_LIMIT_S" "$XTASK" reproduce-paper --profile "${PROFILE:-full}" \
        --tasks "$PROFILE_TASKS" --device "$dev" --pema-bin "$PEMA" --wmt22 "$WMT22" \
        --out "$PROFILE_DIR"
    local rc=$?
    for f in report.md results.json; do
        [ -f "$PROFILE_DIR/$f" ] && cp "$PROFILE_DIR/$f" "$RESULTS/profile-$f"
    done
    [ $rc -eq 124 ] && echo "the profile ran past PROFILE_LIMIT_S=$PROFILE_LIMIT_S s (stages so far are cached in $PROFILE_DIR)"
    return $rc
}

for s in $STAGES; do
    say "stage $s"
    if ! "stage_$s" >"$RESULTS/$s.log" 2>&1; then
        failed+=("$s")
        say "stage $s FAILED (last lines of $RESULTS/$s.log follow)"
        tail -n 20 "$RESULTS/$s.log"
    else
        tail -n 12 "$RESULTS/$s.log"
    fi
done
say "done; failed stages: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
