#!/usr/bin/env bash
# Validates the deployment files without a Docker engine or a Kubernetes cluster; part of
# scripts/test.sh (so of CI). Needs the tools scripts/install-deps.sh puts in .tools/venv.
#   1. docker-compose.yml: `docker compose config` (the real Compose v2+ binary: Compose
#      Specification schema, anchors, merges, references), then deploy/check_deploy.py
#      (build files exist, 3 etcd members, 2 of each service, addresses name services, ...).
#   2. deploy/Dockerfile: parsed with BuildKit's parser; multi-stage, numeric non-root USER.
#   3. deploy/kubernetes: every manifest against the Kubernetes OpenAPI schemas (strict), then
#      cross-checks (selectors, ports, probes, ConfigMap/Secret references, resources).
#   4. Shell scripts: `bash -n`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/venv
for tool in "$venv/bin/docker-compose" "$venv/bin/python"; do
  [ -x "$tool" ] || { echo "check-deploy: $tool is missing: run scripts/install-deps.sh" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

compose="$venv/bin/docker-compose"
echo "check-deploy: docker-compose.yml (docker compose $("$compose" version --short))"
"$compose" -f docker-compose.yml config -q
"$compose" -f docker-compose.yml config --format json >"$tmp/compose.json"
# A `docker compose` plugin, where the machine has one, must accept the file too.
if docker compose version >/dev/null 2>&1; then
  echo "check-deploy: docker-compose.yml (docker compose plugin $(docker compose version --short))"
  docker compose -f docker-compose.yml config -q
fi
"$venv/bin/python" deploy/check_deploy.py compose "$tmp/compose.json"

echo "check-deploy: deploy/Dockerfile"
"$venv/bin/python" deploy/check_deploy.py dockerfile deploy/Dockerfile

echo "check-deploy: deploy/kubernetes"
"$venv/bin/python" deploy/check_deploy.py kubernetes deploy/kubernetes

echo "check-deploy: shell syntax"
for script in scripts/*.sh .ci/run; do bash -n "$script"; done

echo "check-deploy: ok"
