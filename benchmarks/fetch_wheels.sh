#!/usr/bin/env bash
# Download, here (with network), the cp312 wheels the lent GPU machine lacks into
# the git-ignored folder .whl/ at the repository root; device_check.sh installs
# them there with --no-index --no-deps. Name .whl in the run's carry.
#
#   bash benchmarks/fetch_wheels.sh          # ~1 MB: trimesh, fast-simplification
#
# Versions are pinned (one of each: two versions stop the whole install). They
# satisfy pyproject.toml (trimesh>=4.0, fast-simplification>=0.1.7); both need
# only numpy, which the device image has.
set -euo pipefail
cd "$(dirname "$0")/.."
PINS=("trimesh==5.2.0" "fast-simplification==0.2.0")
mkdir -p .whl
rm -f .whl/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${PINS[@]}"
ls -la .whl
