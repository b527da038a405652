#!/usr/bin/env bash
# One lent-GPU call (2026-12-04): issue 13's loader hang (diagnosis + the harness's fix) and issue 15's speed-gpu suite.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH PROXYANO_PLUGIN_CACHE=/tmp/cache
export PROXYANO_SHARED_DATA=$PWD/.gpudata MPLBACKEND=Agg
{ nvidia-smi; df -h /dev/shm; nproc; python3 -c "import torch, anomalib, lightning, proxyano_plugin; print(torch.__version__, anomalib.__version__, lightning.__version__, proxyano_plugin.__file__)"; } > $OUT/env.txt 2>&1
date +%T >> $OUT/env.txt
timeout 250 python3 benchmarks/loader_hang.py --parallel --workers 4 --batches 20 --deadline 110 \
    --root .gpudata/lgg_flair --split-csv patients_seed0 > $OUT/loader_hang.log 2>&1
echo "loader_hang rc=$? $(date +%T)" >> $OUT/env.txt
timeout 290 python3 -m proxyano_plugin.bench.cli run speed-gpu --set run_timeout_s=200 --output /tmp/speed-gpu > $OUT/speed.log 2>&1
echo "speed rc=$? $(date +%T)" >> $OUT/env.txt
tar czf $OUT/speed-gpu.tar.gz --exclude=runs -C /tmp speed-gpu
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv >> $OUT/env.txt
