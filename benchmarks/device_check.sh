#!/usr/bin/env bash
# The one-call device check for a lent H200 (docs/performance.md, "When a GPU is lent").
#
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=560)
#
# 1. installs the carried wheels (.whl/, made here by benchmarks/fetch_wheels.sh)
#    with --no-index --no-deps into /tmp/site (PYTHONPATH);
# 2. starts writing the full-size random checkpoint in the background;
# 3. builds cpp_ext with CUDA forced for sm_90 (no build isolation, no deps, no
#    index) and stops at once if holopart_infer._cuda does not import;
# 4. runs benchmarks/device_check.py --mode device with a time budget that
#    counts from this script's start, so no stage starts that would run into
#    the command's limit.
# Everything lands in $OUT (at most 8 files): build.log, device_check.json,
# device_check.jsonl, pytest.log, harness.json, harness.log, ckpt.log.
# Env: BUDGET_S (default 500: seconds after which no stage starts),
#      CHECK_MODE (default device; "rehearsal" runs the same steps on a CPU).
set -u
T0=$(date +%s.%N)
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check_out}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-500}
MODE=${CHECK_MODE:-device}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HOLOPART_EXPECT_CUDA=1
[ "$MODE" = rehearsal ] && export HOLOPART_EXPECT_CUDA=0

say() { echo "[device_check.sh $(date -u +%H:%M:%S)] $*"; }

# 1. carried wheels (trimesh, fast-simplification: the device image lacks them).
#    Rehearsal: the same install for the device's Python (cp312) into SITE_DIR,
#    not put on PYTHONPATH (this Python may be another version).
SITE=${SITE_DIR:-/tmp/site}
if ls .whl/*.whl >/dev/null 2>&1; then
  XARGS=()
  [ "$MODE" = rehearsal ] && XARGS=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "${XARGS[@]}" .whl/*.whl > "$OUT/build.log" 2>&1 \
    || { say "FAILED: installing the carried wheels (build.log)"; tail -20 "$OUT/build.log"; exit 3; }
  [ "$MODE" = device ] && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  say "installed $(ls .whl/*.whl | wc -l) carried wheel(s) into $SITE"
else
  say "no .whl/ folder: run benchmarks/fetch_wheels.sh here and name .whl in carry" | tee "$OUT/build.log"
  [ "$MODE" = device ] && exit 3
fi

# 2. full-size random checkpoint in the background (60-100 s, 9 GiB of host memory)
CKPT_DIR=${CKPT_DIR:-/tmp/holopart_ckpt}
CFG=full; [ "$MODE" = rehearsal ] && CFG=tiny
mkdir -p "$CKPT_DIR"
if [ ! -f "$CKPT_DIR/random_$CFG.done" ]; then
  # before the build, so from the source tree: export/random_checkpoint.py (installed later
  # as holopart_infer.export.random_checkpoint) needs only holopart_infer's pure-Python parts
  touch "$CKPT_DIR/random_$CFG.writing"
  ( $PY -c "import sys; sys.path.insert(0, '.'); from export.random_checkpoint import write_random_checkpoint as w; \
w('$CKPT_DIR/random_$CFG', '$CFG', seed=0, dtype='fp16', overwrite=True)" > "$OUT/ckpt.log" 2>&1 \
    && echo ok > "$CKPT_DIR/random_$CFG.done" ) &
fi

# 3. cpp_ext with CUDA forced for sm_90; the CUDA module must import
if [ "$MODE" = device ]; then
  say "building cpp_ext (HOLOPART_CUDA=ON, sm_90)"
  $PY -m pip install -v --no-build-isolation --no-deps --no-index -e . \
    -C cmake.define.HOLOPART_CUDA=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 >> "$OUT/build.log" 2>&1 \
    || { say "FAILED: building cpp_ext with CUDA (build.log)"; tail -40 "$OUT/build.log"; exit 4; }
  $PY -c "import holopart_infer._cuda as m; n = m.device_count(); print('holopart_infer._cuda imports;', n, 'device(s)', m.device_status()); raise SystemExit(0 if n > 0 else 1)" \
    2>&1 | tee -a "$OUT/build.log"
  [ "${PIPESTATUS[0]}" = 0 ] || { say "FAILED: holopart_infer._cuda does not import or sees no GPU (above)"; exit 5; }
fi
say "setup done after $(awk "BEGIN{printf \"%.0f\", $(date +%s.%N) - $T0}") s"

# 4. the stages, under the budget
$PY benchmarks/device_check.py --mode "$MODE" --out "$OUT" --budget-s "$BUDGET_S" --started-at "$T0" \
  --ckpt-dir "$CKPT_DIR" ${CHECK_STAGES:+--stages "$CHECK_STAGES"}
rc=$?
wait  # the background checkpoint writer, if it is still running (never left behind)
exit $rc
