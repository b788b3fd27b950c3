#!/usr/bin/env bash
# Everything owed on a GPU, in one call: the GPU tests, then the op and
# training-step benchmarks into benchmarks/results/<gpu>-<yyyymmdd>.{json,md}. Run from the repository root
# after `pip install --no-build-isolation -e ".[test]"`; pass an output folder to write elsewhere
# (e.g. "$OUT" on the device machine), and set GPU_TAG to name the file (default: from nvidia-smi).
set -uo pipefail
out="${1:-benchmarks/results}"
mkdir -p "$out"
tag="${GPU_TAG:-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | awk '{print tolower($2)}')}"
stem="$out/${tag}-$(date -u +%Y%m%d)"
python -m pytest tests/test_backends.py tests/test_step.py tests/test_optim.py -q -x 2>&1 | tail -20 | tee "$stem-tests.txt"
cmd="pytest benchmarks/ --benchmark-only --benchmark-min-rounds=5 --benchmark-max-time=0.5 --benchmark-json $stem.json"
python -m $cmd -q 2>&1 | tail -5
python benchmarks/report.py "$stem.json" --command "$cmd" > "$stem.md"
echo "wrote $stem.json $stem.md $stem-tests.txt"
