#!/usr/bin/env bash
# Runs AetherFS on its embedded default: all services in one process, data in ./aether-data,
# listening on 127.0.0.1:7600 (override with --listen ADDR, --data DIR).
# The build needs protoc (for the generated gRPC code); it is installed first if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1 || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
  echo "dev: installing protoc (protobuf-compiler libprotobuf-dev)"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev >/dev/null
fi
exec cargo run --release --locked -p aether-cli --bin aether -- dev "$@"
