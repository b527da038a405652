#!/usr/bin/env bash
# Second lent-GPU call (2026-12-04): is the loader "hang" a hang? Few batches, no crowding, workers 4 against 0.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH PROXYANO_PLUGIN_CACHE=/tmp/cache MPLBACKEND=Agg
A="--batches 4 --deadline 150 --root .gpudata/lgg_flair --split-csv patients_seed0"
date +%T > $OUT/times.txt
timeout 230 python3 benchmarks/loader_hang.py --parallel --workers 4 --variants harness harness-fork fork $A > $OUT/workers4.log 2>&1 &
timeout 230 python3 benchmarks/loader_hang.py --workers 0 --variants fork $A > $OUT/workers0.log 2>&1 &
wait
date +%T >> $OUT/times.txt
