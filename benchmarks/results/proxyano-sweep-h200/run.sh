#!/usr/bin/env bash
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 PROXYANO_PLUGIN_CACHE=/tmp/cache
mkdir -p /tmp/sweep; cd .gpudata
python3 -c "from proxyano_plugin import BrainMRIDemo as D; d = D(root='/tmp/demo'); d.prepare_data()" 2>&1 | tail -1
run_sweep() { label=$1; shift; timeout 170 python3 sweep.py label=$label epochs=300 every=25 root=/tmp/demo "$@" > /tmp/sweep/$label.log 2>&1; }
run_sweep base &
run_sweep nopaste paste_probability=0 &
run_sweep nomem memory_size=0 &
run_sweep identity proxy='"identity"' &
run_sweep px128 image_size=128 &
run_sweep lr3e3 learning_rate=0.003 &
wait
grep -h '"epoch"' /tmp/sweep/*.log | cut -c1-420
tar czf $OUT/sweep.tar.gz -C /tmp sweep
