#!/usr/bin/env bash
# `aether clone/status/pull/push` against git on the same tree, same run: a 10-file change in a
# tree of 10,000 files (100 directories of 100), pushed and pulled, and a no-op status, with
# git's `status`, `commit + push` and `pull` to a local bare repository as the baseline.
#
#   scripts/bench-sync.sh             # best of 3 runs per step
#   scripts/bench-sync.sh --runs 5
#
# Needs release binaries (built if missing) and git.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:?--runs needs a number}; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v git >/dev/null || { echo "git is missing (apt-get install -y git)" >&2; exit 2; }
[ -x target/release/aetherd ] && [ -x target/release/aether ] || cargo build --release --locked -p aether-server -p aether-cli
aether=$repo/target/release/aether
work=$(mktemp -d /var/tmp/aether-bench-sync.XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
target/release/aetherd dev --data "$work/data" --listen 127.0.0.1:$port >"$work/dev.log" 2>&1 &
pid=$!
export AETHER_ENDPOINT=http://127.0.0.1:$port
for _ in $(seq 100); do "$aether" session ls >/dev/null 2>&1 && break; sleep 0.1; done

cd "$work"
mkdir tree
for d in $(seq -w 0 99); do
  mkdir tree/d$d
  for f in $(seq -w 0 99); do printf 'directory %s file %s\n' "$d" "$f" >tree/d$d/f$f.txt; done
done
g() { git -c user.name=bench -c user.email=bench@example.com -c init.defaultBranch=main "$@" >/dev/null 2>&1; }
session=$("$aether" session create)
"$aether" put tree "$session:tree" >/dev/null
"$aether" clone "$session:tree" mine >/dev/null
"$aether" clone "$session:tree" theirs >/dev/null
g init --bare bare.git
cp -r tree gmine && (cd gmine && g init && g add -A && g commit -m import && g remote add origin ../bare.git && g push -u origin main)
g clone bare.git gtheirs

now() { date +%s.%N; }
timed() { local s e; s=$(now); "$@" >/dev/null 2>&1; e=$(now); awk -v a="$s" -v b="$e" 'BEGIN { printf "%.4f", b - a }'; }
edit10() { for i in 0 1 2 3 4 5 6 7 8 9; do echo "edit $1 $i" >>"$2/d0$i/f0$i.txt"; done; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
names=(status-noop push-10 pull-10)
declare -a best_a best_g
for run in $(seq "$runs"); do
  a=(); gg=()
  a+=("$(timed "$aether" status mine)")
  gg+=("$(timed git -C gmine status --porcelain)")
  edit10 "m$run" mine; edit10 "m$run" gmine
  a+=("$(timed "$aether" push mine)")
  gg+=("$(timed sh -c 'cd gmine && git -c user.name=b -c user.email=b@e commit -qam edit && git push -q')")
  a+=("$(timed "$aether" pull theirs)")
  gg+=("$(timed git -C gtheirs pull -q)")
  # The other side catches up and pushes back, so the next run starts in step.
  "$aether" pull mine >/dev/null
  for i in "${!names[@]}"; do
    if [ "$run" = 1 ] || lt "${a[$i]}" "${best_a[$i]}"; then best_a[$i]=${a[$i]}; fi
    if [ "$run" = 1 ] || lt "${gg[$i]}" "${best_g[$i]}"; then best_g[$i]=${gg[$i]}; fi
  done
done
echo "10,000 files (100 directories of 100); a 10-file change; best of $runs run(s)"
printf '| %-12s | %9s | %9s | %6s |\n' step "git (s)" "aether (s)" ratio
printf '|%s|%s|%s|%s|\n' -------------- ----------- ------------ --------
for i in "${!names[@]}"; do
  awk -v n="${names[$i]}" -v g="${best_g[$i]}" -v a="${best_a[$i]}" \
    'BEGIN { printf "| %-12s | %9.3f | %10.3f | %5.1f× |\n", n, g, a, a / g }'
done
