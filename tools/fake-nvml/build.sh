#!/usr/bin/env bash
# Build the fake libnvidia-ml.so.1 against the real nvml.h from PyPI nvidia-nvml-dev.
# Usage: tools/fake-nvml/build.sh [OUTPUT_DIR]   (default build/fake-nvml; PYTHON picks the interpreter)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out_dir="${1:-build/fake-nvml}"
python="${PYTHON:-python3}"

# The header ships inside the wheel (nvidia/cu13/include/nvml.h for 13.x); ask pip's metadata where.
include_dir="$("$python" - <<'PY'
import importlib.metadata as md
import sys
try:
    files = md.distribution("nvidia-nvml-dev").files or []
except md.PackageNotFoundError:
    sys.exit("nvidia-nvml-dev is not installed: pip install nvidia-nvml-dev (it is in the test extra)")
headers = [f for f in files if f.name == "nvml.h"]
if not headers:
    sys.exit("nvidia-nvml-dev has no nvml.h")
print(headers[0].locate().parent)
PY
)"

mkdir -p "$out_dir"
tmp="$(mktemp "$out_dir/.libnvidia-ml.so.1.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
gcc -shared -fPIC -O2 -std=gnu11 -Wall -Wextra -Werror -Wno-deprecated-declarations \
    -I"$include_dir" -Wl,-soname,libnvidia-ml.so.1 \
    -o "$tmp" "$here/fake_nvml.c" "$here/fake_json.c" -lpthread
# Rename, never overwrite in place: a running agent may have the old library mapped.
mv -f "$tmp" "$out_dir/libnvidia-ml.so.1"
trap - EXIT
echo "built $out_dir/libnvidia-ml.so.1 (nvml.h from $include_dir)"
