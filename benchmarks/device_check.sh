#!/usr/bin/env bash
# The one-call device check for a lent H200 (docs/performance.md, "When a GPU is lent").
#
#   run(command="HOLOPART_COMMIT=<sha> bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=560)
#
# (`bash benchmarks/device_check.sh --call`, here, prints that call with this checkout's sha.)
# 0. a ~2 s preflight into build.log: nvcc, cmake, ninja, g++, Python.h, scikit-build-core,
#    pybind11, whether site-packages is writable, the GPU as nvidia-smi sees it;
# 1. installs the carried wheels (.whl/, made here by benchmarks/fetch_wheels.sh)
#    with --no-index --no-deps into /tmp/site (PYTHONPATH);
# 2. starts writing the full-size random checkpoint in the background (its process id in
#    NAME.writing; NAME.done or NAME.failed when it ends);
# 3. builds cpp_ext with CUDA forced for sm_90 (no build isolation, no deps, no index); if that
#    fails, says so and rebuilds without CUDA: the stages that need only torch still run
#    (--build cpu_fallback). Stops (exit 5) only where torch sees no GPU at all;
# 4. runs benchmarks/device_check.py --mode device with a time budget that counts from this
#    script's start, so no stage starts that would run into the command's limit. The stages
#    run most valuable first: environment and build, the end to end, DiT and decoder against
#    their floors, parity at real size, then the rest.
# Everything lands in $OUT (at most 8 files): build.log, ckpt.log, device_check.json,
# device_check.jsonl, pytest.log, harness.json, harness.log.
# Env: HOLOPART_COMMIT (the commit recorded: the device copy has no .git),
#      BUDGET_S (default 500: seconds after which no stage starts),
#      CHECK_STAGES (a comma-separated subset of the driver's stages),
#      CHECK_MODE (default device; "rehearsal" runs the same steps on a CPU, tiny, no build),
#      CHECK_SIMULATE (comma-separated faults, for rehearsing the recovery:
#        ckpt_writer        the background checkpoint writer exits with an error;
#        ckpt_writer_vanish the writer is killed outright, leaving NAME.writing behind;
#        cuda_build         the CUDA build fails (device mode: a real failed build, nvcc asked
#                           for an architecture it does not have; rehearsal: recorded only,
#                           the rehearsal builds nothing)).
set -u
T0=$(date +%s.%N)
cd "$(dirname "$0")/.."

if [ "${1:-}" = --call ]; then
  sha=$(git rev-parse HEAD) || exit 1
  [ -z "$(git status --porcelain --untracked-files=no)" ] || echo "warning: uncommitted changes travel with the call but are not in $sha; commit first" >&2
  ls .whl/*.whl >/dev/null 2>&1 || echo "warning: no .whl/: run bash benchmarks/fetch_wheels.sh first" >&2
  echo "run(command=\"HOLOPART_COMMIT=$sha bash benchmarks/device_check.sh\", carry=[\".whl\"], timeout_s=560)"
  exit 0
fi

OUT=${OUT:-/tmp/device_check_out}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-500}
MODE=${CHECK_MODE:-device}
SIMULATE=${CHECK_SIMULATE:-}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HOLOPART_EXPECT_CUDA=1 CHECK_SIMULATE="$SIMULATE"
[ "$MODE" = rehearsal ] && export HOLOPART_EXPECT_CUDA=0
simulated() { case ",$SIMULATE," in *",$1,"*) return 0;; esac; return 1; }
if [ -z "${HOLOPART_COMMIT:-}" ]; then
  HOLOPART_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
fi
export HOLOPART_COMMIT

say() { echo "[device_check.sh $(date -u +%H:%M:%S)] $*"; }
say "commit $HOLOPART_COMMIT, mode $MODE, budget $BUDGET_S s${SIMULATE:+, simulating: $SIMULATE}"

# 0. preflight (~2 s): the build's tools and where it installs, before anything is spent on them
{
  echo "== preflight $(date -u +%FT%TZ)"
  for tool in nvcc cmake ninja g++ nvidia-smi; do
    if ! command -v $tool >/dev/null 2>&1; then echo "$tool: MISSING"; continue; fi
    case $tool in
      nvcc) v=$(timeout 5 nvcc --version 2>&1 | grep -m1 -i release);;
      nvidia-smi) v=$(timeout 5 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2 | tr '\n' ';');;
      *) v=$(timeout 5 $tool --version 2>&1 | head -1);;
    esac
    echo "$tool: ${v:-?}"
  done
  timeout 10 $PY - <<'EOF' 2>&1
import importlib.metadata as md, os, sys, sysconfig
inc = sysconfig.get_paths()["include"]
print(f"python: {sys.version.split()[0]} ({sys.executable})")
print("Python.h:", "present" if os.path.isfile(os.path.join(inc, "Python.h")) else f"MISSING in {inc}")
for dist in ("scikit-build-core", "pybind11", "numpy", "torch"):
    try:
        print(f"{dist}: {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist}: MISSING")
sp = sysconfig.get_paths()["purelib"]
print(f"site-packages: {sp} ({'writable' if os.access(sp, os.W_OK) else 'NOT writable'})")
EOF
  echo "preflight took $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $T0}") s"
} > "$OUT/build.log" 2>&1
sed 's/^/  preflight: /' "$OUT/build.log" | grep -v "== preflight"

# 1. carried wheels (trimesh, fast-simplification: the device image lacks them).
#    Rehearsal: the same install for the device's Python (cp312) into SITE_DIR,
#    not put on PYTHONPATH (this Python may be another version).
SITE=${SITE_DIR:-/tmp/site}
if ls .whl/*.whl >/dev/null 2>&1; then
  XARGS=()
  [ "$MODE" = rehearsal ] && XARGS=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "${XARGS[@]}" .whl/*.whl >> "$OUT/build.log" 2>&1 \
    || { say "FAILED: installing the carried wheels (build.log)"; tail -20 "$OUT/build.log"; exit 3; }
  [ "$MODE" = device ] && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  say "installed $(ls .whl/*.whl | wc -l) carried wheel(s) into $SITE"
else
  say "no .whl/ folder: run benchmarks/fetch_wheels.sh here and name .whl in carry" | tee -a "$OUT/build.log"
  [ "$MODE" = device ] && exit 3
fi

# 2. full-size random checkpoint in the background (60-100 s, 9 GiB of host memory).
#    NAME.writing holds the writer's process id while it runs; it leaves NAME.done or
#    NAME.failed (its exit status) and removes NAME.writing. device_check.py waits for it
#    while that process lives, at most --ckpt-wait-s, and writes one itself otherwise.
CKPT_DIR=${CKPT_DIR:-/tmp/holopart_ckpt}
CFG=full; [ "$MODE" = rehearsal ] && CFG=tiny
CK="$CKPT_DIR/random_$CFG"
mkdir -p "$CKPT_DIR"
if [ ! -f "$CK.done" ]; then
  rm -f "$CK.failed"
  : > "$CK.writing"
  (
    if simulated ckpt_writer_vanish; then
      kill -9 $BASHPID  # gone without a word, as after the OOM killer: NAME.writing stays
    elif simulated ckpt_writer; then
      $PY -c "import sys, time; time.sleep(1); sys.exit('simulated checkpoint writer failure (CHECK_SIMULATE=ckpt_writer)')"
    else
      # before the build, so from the source tree: export/random_checkpoint.py (installed later
      # as holopart_infer.export.random_checkpoint) needs only holopart_infer's pure-Python parts
      $PY -c "import sys; sys.path.insert(0, '.'); from export.random_checkpoint import write_random_checkpoint as w; \
w('$CK', '$CFG', seed=0, dtype='fp16', overwrite=True)"
    fi > "$OUT/ckpt.log" 2>&1
    rc=$?
    if [ $rc = 0 ]; then echo ok > "$CK.done"; else echo "exit status $rc" > "$CK.failed"; fi
    rm -f "$CK.writing"
  ) &
  echo $! > "$CK.writing"
fi

# 3. cpp_ext with CUDA forced for sm_90; the CUDA module must import. A failed CUDA build
#    is recorded and the extension rebuilt without CUDA: the torch stages need no kernels.
BUILD=none
build() {  # build KIND [extra pip args]: the editable install, log appended to build.log
  local kind=$1; shift
  say "building cpp_ext ($kind)"
  echo "== build $kind $(date -u +%FT%TZ)" >> "$OUT/build.log"
  $PY -m pip install -v --no-build-isolation --no-deps --no-index -e . "$@" >> "$OUT/build.log" 2>&1
}
if [ "$MODE" = device ]; then
  CUDA_ARCH=90
  simulated cuda_build && CUDA_ARCH=10  # nvcc has no sm_10: the forced CUDA probe fails for real
  if build "HOLOPART_CUDA=ON, sm_$CUDA_ARCH" -C cmake.define.HOLOPART_CUDA=ON \
       -C cmake.define.CMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH; then
    BUILD=cuda
    $PY -c "import holopart_infer._cuda as m; n = m.device_count(); print('holopart_infer._cuda imports;', n, 'device(s)', m.device_status()); raise SystemExit(0 if n > 0 else 1)" \
      2>&1 | tee -a "$OUT/build.log"
    [ "${PIPESTATUS[0]}" = 0 ] || say "WARNING: holopart_infer._cuda does not import or sees no GPU (above)"
  else
    say "FAILED: building cpp_ext with CUDA (build.log, last lines below); rebuilding without CUDA"
    grep -iE "error|fatal" "$OUT/build.log" | tail -8
    export HOLOPART_EXPECT_CUDA=0
    if build "HOLOPART_CUDA=OFF" -C cmake.define.HOLOPART_CUDA=OFF; then
      BUILD=cpu_fallback
      say "rebuilt without CUDA: the stages that need the CUDA kernels will be skipped, the torch stages run"
    else
      BUILD=failed
      say "FAILED: the rebuild without CUDA too (build.log); running what needs no extension"
      tail -20 "$OUT/build.log"
    fi
  fi
  # nothing on this machine is worth the window without a GPU torch can use
  $PY -c "import torch; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'sees', torch.cuda.device_count() if ok else 0, 'GPU(s)'); raise SystemExit(0 if ok else 1)" \
    2>&1 | tee -a "$OUT/build.log"
  [ "${PIPESTATUS[0]}" = 0 ] || { say "FAILED: torch is missing or sees no GPU (above): stopping"; exit 5; }
elif simulated cuda_build; then
  BUILD=cpu_fallback
  say "simulated: the CUDA build failed; the rehearsal builds nothing (the installed CPU build stands for the rebuild without CUDA)" \
    | tee -a "$OUT/build.log"
fi
say "setup done after $(awk "BEGIN{printf \"%.0f\", $(date +%s.%N) - $T0}") s (build: $BUILD)"

# 4. the stages, under the budget
$PY benchmarks/device_check.py --mode "$MODE" --out "$OUT" --budget-s "$BUDGET_S" --started-at "$T0" \
  --ckpt-dir "$CKPT_DIR" --build "$BUILD" ${CHECK_STAGES:+--stages "$CHECK_STAGES"}
rc=$?
wait  # the background checkpoint writer, if it is still running (never left behind)
exit $rc
