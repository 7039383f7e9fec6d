#!/usr/bin/env bash
# GPU readiness in one call, on a fresh GPU machine without network (benchmarks/gpu_suite.py says
# what each section measures):
#
#     bash benchmarks/gpu_suite.sh --wheels DIR --out gpu_suite.json
#
# Installs whatever is missing from the wheels in DIR (pip --no-index; nothing is downloaded), runs the
# GPU tests, MFU of llama-350m and llama-1b (seq 2048, bf16-mixed, eager and compiled), attention
# TFLOP/s (sdpa, flex, flash_attn, xformers at 2k and 8k) and decode tokens/s, and writes one JSON.
# Every argument goes to the driver (--sections, --budget-s, --logs, --cpu-smoke, ...); paths are
# relative to the folder it is called from.
#
# PYTHON picks the interpreter (default: python3, the one that holds the machine's torch). The
# driver keeps to its own budget (--budget-s, 510 s by default); `timeout` is the backstop that
# holds the whole call under 9 minutes even if the driver itself hangs, and the JSON the driver
# wrote after each measurement stays.
set -euo pipefail
export PYTHONUNBUFFERED=1
exec timeout --kill-after=8 "${GPU_SUITE_TIMEOUT_S:-530}" "${PYTHON:-python3}" \
    "$(dirname "${BASH_SOURCE[0]}")/gpu_suite.py" "$@"
