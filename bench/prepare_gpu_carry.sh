#!/bin/bash
# Fill .cache/gpu with what a lent GPU machine lacks for bench/gpu_session.sh: it cannot reach a package
# registry or the hub, and what travels with it is limited to 64 MiB.
#   bash bench/prepare_gpu_carry.sh            (here, once; .cache/ is git-ignored)
# - wheels/: the packages its image lacks or holds at another version than requirements.txt pins
#   (Python 3.12 there), installed there with pip --no-index --no-deps;
# - bitsandbytes/: bitsandbytes unpacked with only its CPU and CUDA 13 libraries (the whole wheel, with the
#   libraries for CUDA 11.8-12.8, ROCm and XPU, is 43 MB, too much to travel beside the rest);
# - smollm2-tokenizer/: the offline default's tokenizer, which the random-initialised benchmarks use.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEST=.cache/gpu
rm -rf "$DEST"
mkdir -p "$DEST/wheels"

pin() { grep -E "^$1(\[[a-z]+\])?==" requirements.txt | sed -E 's/\[[a-z]+\]//; s/ .*//'; }
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST/wheels" \
    "$(pin transformers)" "$(pin datasets)" "$(pin jsonargparse)" "$(pin bitsandbytes)" \
    dill==0.4.1 multiprocess==0.70.19 docstring-parser==0.18.0 typeshed-client==2.15.0

unzip -q "$DEST"/wheels/bitsandbytes-*.whl -d "$DEST/bitsandbytes" \
    -x 'bitsandbytes/libbitsandbytes_cuda1[12]*' 'bitsandbytes/libbitsandbytes_rocm*' 'bitsandbytes/libbitsandbytes_xpu*'
rm "$DEST"/wheels/bitsandbytes-*.whl

"$PYTHON" -c "
from src.models.loading import load_tokenizer
load_tokenizer('offline:SmolLM2-135M-Instruct').save_pretrained('$DEST/smollm2-tokenizer')
"
du -sh "$DEST"/*
du -sh "$DEST"
