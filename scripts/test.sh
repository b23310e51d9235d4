#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing (etcd, protoc, the S3 server,
# buf, cargo-nextest, the deployment checkers), then lints the API, validates the deployment
# files, checks formatting and lints, starts scripts/local-cluster.sh once, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build from scratch: incremental caches would more than double the target directory.
export CARGO_INCREMENTAL=0

scripts/install-deps.sh

echo "== buf lint (STANDARD)"
.tools/buf/node_modules/.bin/buf lint

echo "== deployment files: docker compose config, Dockerfile, Kubernetes schemas"
scripts/check-deploy.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Everything the tests need, built once: `--tests` resolves dependency features as the test run
# does, so the aetherd and aether binaries built here are the ones the tests start, and nextest
# below compiles nothing again.
echo "== cargo build (binaries and tests)"
cargo build --workspace --locked --bins --tests

# The local cluster with the debug binaries the tests use anyway (3 etcd members, S3, 2 stores,
# 2 buses, 2 coordinators; each waits for grpc.health.v1): write through one coordinator, read
# back through the other, stop it.
echo "== scripts/local-cluster.sh smoke test (debug aetherd)"
cluster_dir=target/local-cluster-smoke
smoke() { # (set -e does not apply inside `if smoke`: every step returns on failure)
  AETHERD=target/debug/aetherd scripts/local-cluster.sh start -d --dir "$cluster_dir" --base-port 17600 || return 1
  local aether=target/debug/aether one=(--endpoint http://127.0.0.1:17600 --store-endpoint http://127.0.0.1:17610)
  local two=(--endpoint http://127.0.0.1:17601 --store-endpoint http://127.0.0.1:17611 --bus-endpoint http://127.0.0.1:17621)
  local session
  session=$("$aether" "${one[@]}" --bus-endpoint http://127.0.0.1:17620 session create --label smoke=local-cluster) || return 1
  echo "local cluster smoke test" | "$aether" "${one[@]}" put - "$session:smoke.txt" || return 1
  [ "$("$aether" "${two[@]}" cat "$session:smoke.txt")" = "local cluster smoke test" ]
}
if smoke; then result=0; else result=1; fi
scripts/local-cluster.sh stop --dir "$cluster_dir" --base-port 17600
[ $result -eq 0 ] || { echo "local cluster smoke test FAILED (logs in $cluster_dir/logs)" >&2; exit 1; }
echo "local cluster smoke test: ok"

echo "== cargo nextest"
cargo nextest run --workspace --locked --no-fail-fast "$@"

