#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine, skipping what is already there:
# etcd (Debian's etcd-server), protoc, an S3-compatible server (moto, in a venv), buf (npm).
# Tools that are not Debian packages go under .tools/ in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/.tools"
mkdir -p "$tools"

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server etcd-client)
{ command -v protoc >/dev/null 2>&1 && [ -f /usr/include/google/protobuf/descriptor.proto ]; } || need_apt+=(protobuf-compiler libprotobuf-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$tools/venv/bin/moto_server" ]; then
  echo "install-deps: moto[server] into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q 'moto[server]>=5,<6'
fi

if [ ! -x "$tools/buf/node_modules/.bin/buf" ]; then
  echo "install-deps: buf into $tools/buf"
  npm install --silent --prefix "$tools/buf" @bufbuild/buf@1 >/dev/null
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "install-deps: cargo-nextest"
  cargo install --locked cargo-nextest
fi
echo "install-deps: ready (etcd $(etcd --version | head -1 | awk '{print $3}'), $(protoc --version))"
