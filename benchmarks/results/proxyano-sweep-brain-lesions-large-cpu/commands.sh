#!/bin/bash
cd /work/main
run() {
  label=$1; shift
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/proxyano_sweep.py --label bl-$label --root datasets/brain_tumor_lesions_large \
    --split-csv manifest.csv --epochs 30 --every 3 --batch-size 16 --threads 1 \
    --set 'proxy_kwargs={"n_segments": 1000}' "$@" > /work/logs/blsweep/$label.jsonl 2> /work/logs/blsweep/$label.err
}
run shipped
run skips-memory --set 'pem_skips="memory"' --set 'memory_size=100' --set 'memory_shrink_threshold=0.02'
run skips-none --set 'pem_skips="none"'
