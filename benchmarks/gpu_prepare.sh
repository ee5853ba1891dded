#!/usr/bin/env bash
# Run HERE (the development machine) before a device session: everything benchmarks/gpu_check.sh
# needs that the device image lacks, in git-ignored folders that the device tool carries.
#   .whl/    wheels: the project's transformers and diffusers versions, and the small pure-Python
#            packages the encoder imports that the device image does not hold
#   .bench/  the two caption files whose length distributions t5_gpu.py measures, and the web photos
#            caption_gpu.py captions (its caption lengths are bundled: benchmarks/caption_lengths.json)
# Then, with the device tool:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".bench"],
#                                  timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${RECAPTION_SHARED:-../shared}"
rm -rf .whl && mkdir -p .whl .bench/shared/data/dense .bench/shared/data/laion
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl transformers==5.24.0 diffusers==0.42.1 importlib_metadata ftfy wcwidth beautifulsoup4 \
  soupsieve "regex>=2025.10.22"
cp "$SHARED/data/dense/iiw_IIW-400.jsonl" .bench/shared/data/dense/
cp "$SHARED/data/laion/img2dataset_test_1000.parquet" .bench/shared/data/laion/
# caption_gpu.py reads real photos of mixed sizes (the web pairs: ~15 MB)
mkdir -p .bench/shared/data/web_pairs && cp -r "$SHARED/data/web_pairs/images" .bench/shared/data/web_pairs/
du -sh .whl .bench
