#!/usr/bin/env bash
# What a developer does in a checkout, timed on local disk and in an `aether mount`, in the
# same run, with the ratio of each step (design promise 11). The tree is real: the tokio crate's
# source from the cargo registry (582 files), or --tree DIR.
#
#   scripts/bench-mount.sh                      # on `aetherd dev` (local store, embedded coordination)
#   scripts/bench-mount.sh --cluster            # on scripts/local-cluster.sh (3 etcd, S3, 2 coordinators)
#   scripts/bench-mount.sh --tree DIR --runs 3  # another tree; best of 3 runs per step
#
# Steps: cp -r of the tree in; grep -r; git init + add -A + commit; git status (clean); a full
# `make -j2` over a generated Makefile (one rule per source file); touch-free edit of one file
# then `make` (must rebuild exactly one target: checked); rm -rf. The local side runs in a
# directory on the same disk as the mount's cache. Needs release binaries (built if missing),
# git, make, fuse3; run as root or with FUSE permissions.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

tree=
runs=1
cluster=false
while [ $# -gt 0 ]; do
  case "$1" in
    --tree) tree=${2:?--tree needs a directory}; shift ;;
    --runs) runs=${2:?--runs needs a number}; shift ;;
    --cluster) cluster=true ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "$tree" ]; then
  tree=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/tokio-1.* 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$tree" ] || { echo "no tokio source in the cargo registry: run \`cargo fetch\` or pass --tree DIR" >&2; exit 2; }
fi
files=$(find "$tree" -type f | wc -l)
for tool in git make fusermount3; do
  command -v $tool >/dev/null || { echo "$tool is missing (apt-get install -y git make fuse3)" >&2; exit 2; }
done

[ -x target/release/aetherd ] && [ -x target/release/aether ] || cargo build --release --locked -p aether-server -p aether-cli
aether=$repo/target/release/aether
work=$(mktemp -d /var/tmp/aether-bench-mount.XXXXXX)
pids=()
cleanup() {
  fusermount3 -u "$work/mnt" 2>/dev/null || fusermount3 -u -z "$work/mnt" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if $cluster; then scripts/local-cluster.sh stop --dir "$work/cluster" --base-port 27600 >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if $cluster; then
  AETHERD=target/release/aetherd scripts/local-cluster.sh start -d --dir "$work/cluster" --base-port 27600 >/dev/null
  export AETHER_ENDPOINT=http://127.0.0.1:27600 AETHER_STORE_ENDPOINT=http://127.0.0.1:27610 AETHER_BUS_ENDPOINT=http://127.0.0.1:27620
  where="local cluster (3 etcd, moto S3, 2 coordinators)"
else
  port=$((20000 + RANDOM % 20000))
  target/release/aetherd dev --data "$work/data" --listen 127.0.0.1:$port >"$work/dev.log" 2>&1 &
  pids+=($!)
  export AETHER_ENDPOINT=http://127.0.0.1:$port
  for _ in $(seq 100); do "$aether" session ls >/dev/null 2>&1 && break; sleep 0.1; done
  where="aetherd dev (local store)"
fi

session=$("$aether" session create --label bench=mount)
mkdir -p "$work/mnt" "$work/local" "$work/cache"
"$aether" mount "$session" "$work/mnt" --cache-dir "$work/cache" >"$work/mount.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
mountpoint -q "$work/mnt" || { cat "$work/mount.log" >&2; exit 1; }

now() { date +%s.%N; }
git_q() { git -c user.name=bench -c user.email=bench@example.com -c init.defaultBranch=main "$@" >/dev/null; }
makefile() { # one target per .rs file: out/<path>.sum from cksum
  {
    echo 'SRCS := $(shell find src -name "*.rs" 2>/dev/null)'
    echo 'OUTS := $(patsubst %,out/%.sum,$(SRCS))'
    echo 'all: $(OUTS)'
    echo 'out/%.sum: %'
    printf '\t@mkdir -p $(dir $@) && cksum $< > $@\n'
  } >"$1/Makefile"
}

# step NAME DIR COMMAND...: runs COMMAND in DIR, prints seconds.
step() {
  local dir=$2; shift 2
  local start end
  sync
  start=$(now)
  (cd "$dir" && "$@")
  end=$(now)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.4f", b - a }'
}
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

run_all() { # DIR -> "cp grep commit status make remake rm" seconds
  local base=$1 out=()
  out+=("$(step cp "$base" cp -r "$tree" t)")
  out+=("$(step grep "$base/t" sh -c 'grep -r -c fn . >/dev/null')")
  makefile "$base/t"
  out+=("$(step commit "$base/t" sh -c 'git init -q . && git -c user.name=b -c user.email=b@e add -A && git -c user.name=b -c user.email=b@e commit -q -m import')")
  out+=("$(step status "$base/t" sh -c 'git status --porcelain >/dev/null')")
  out+=("$(step make "$base/t" make -s -j2)")
  # An edit (a new mtime), then make must rebuild exactly that file's target.
  local edited
  edited=$(cd "$base/t" && find src -name '*.rs' | sort | head -1)
  sleep 0.1 # past the disk's timestamp granularity (ext4 stamps with a coarse clock)
  echo "// edited" >>"$base/t/$edited"
  local pending
  pending=$(cd "$base/t" && make -n | grep -c cksum || true)
  [ "$pending" = 1 ] || { echo "after editing $edited, make in $base wants to rebuild $pending targets, not 1" >&2; exit 1; }
  out+=("$(step remake "$base/t" make -s -j2)")
  pending=$(cd "$base/t" && make -n | grep -c cksum || true)
  [ "$pending" = 0 ] || { echo "make in $base left $pending targets stale" >&2; exit 1; }
  out+=("$(step rm "$base" rm -rf t)")
  echo "${out[*]}"
}

echo "tree: $tree ($files files); AetherFS on $where; best of $runs run(s)"
names=(cp-r grep-r git-init-add-commit git-status make-j2 make-after-edit rm-rf)
best_local=(); best_mount=()
for run in $(seq "$runs"); do
  read -r -a l <<<"$(run_all "$work/local")"
  read -r -a m <<<"$(run_all "$work/mnt")"
  for i in "${!names[@]}"; do
    if [ "$run" = 1 ] || lt "${l[$i]}" "${best_local[$i]}"; then best_local[$i]=${l[$i]}; fi
    if [ "$run" = 1 ] || lt "${m[$i]}" "${best_mount[$i]}"; then best_mount[$i]=${m[$i]}; fi
  done
done
printf '| %-20s | %9s | %9s | %6s |\n' step "ext4 (s)" "mount (s)" ratio
printf '|%s|%s|%s|%s|\n' ---------------------- ----------- ----------- --------
for i in "${!names[@]}"; do
  echo "${names[$i]} ${best_local[$i]} ${best_mount[$i]}"
done | awk '{ l += $2; m += $3; printf "| %-20s | %9.3f | %9.3f | %5.1f× |\n", $1, $2, $3, $3 / $2 }
  END { printf "| %-20s | %9.3f | %9.3f | %5.1f× |\n", "total", l, m, m / l }'
