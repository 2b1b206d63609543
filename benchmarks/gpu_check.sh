#!/usr/bin/env bash
# The GPU check on a lent GPU machine (docs/gpu.md): installs the carried wheels (.whl/),
# points SDESAM_DATA at the carried data (.gpudata/) and runs
# `python3 -m benchmarks.gpu_check --device cuda --out "$OUT"` under a 575 s ceiling
# (the parts' own limits sum to 470 s). Extra arguments go to gpu_check, e.g.
#     bash benchmarks/gpu_check.sh --parts env,training --limit training=300
# Set SDESAM_GIT_COMMIT=<sha> when the copy there has no .git (the report records it).
set -u
OUT=${OUT:-gpu_check_out}
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        || echo "gpu_check.sh: wheel install failed (the check does not need torchsde)"
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export SDESAM_DATA=${SDESAM_DATA:-$PWD/.gpudata} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
timeout -s TERM -k 15 575 python3 -m benchmarks.gpu_check --device cuda --out "$OUT" "$@"
rc=$?
echo "gpu_check exit code $rc; files in $OUT: $(ls "$OUT" 2>/dev/null | tr '\n' ' ')"
exit $rc
