#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing (etcd, protoc, the S3 server,
# buf, cargo-nextest, the deployment checkers), then lints the API, validates the deployment
# files, checks formatting and lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== buf lint (STANDARD)"
.tools/buf/node_modules/.bin/buf lint

echo "== deployment files: docker compose config, Dockerfile, Kubernetes schemas"
scripts/check-deploy.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo nextest"
cargo nextest run --workspace --locked --no-fail-fast "$@"
