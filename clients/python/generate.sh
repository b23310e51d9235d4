#!/usr/bin/env bash
# Generates the Python stubs of the aetherfs.v1 API from proto/ into clients/python/gen/
# (grpcio-tools; scripts/install-deps.sh puts it in .tools/venv). Any language works the same
# way: the protos are the API.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.tools/venv/bin/python}"
if ! "$python" -c 'import grpc_tools' >/dev/null 2>&1; then
  echo "grpcio-tools is missing for $python: run scripts/install-deps.sh (or pip install grpcio grpcio-tools)" >&2
  exit 1
fi
rm -rf "$here/gen" && mkdir -p "$here/gen"
"$python" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$here/gen" --grpc_python_out="$here/gen" \
  "$root"/proto/aetherfs/v1/*.proto
echo "generated Python stubs in $here/gen"
