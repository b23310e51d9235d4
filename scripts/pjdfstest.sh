#!/usr/bin/env bash
# POSIX conformance run of a directory (normally an `aether mount` point) with
# pjdfstest, the Rust rewrite of pjdfstest (crates.io `pjdfstest`).
#
# Usage:
#   scripts/pjdfstest.sh DIR [CONFIG] [-- PATTERN...]
#   scripts/pjdfstest.sh --list            every test name of the pinned pjdfstest
#   scripts/pjdfstest.sh --list-excluded   the tests the exclusion list removes, with reasons
#   scripts/pjdfstest.sh --install         only install pjdfstest
#
#   DIR      directory to test; the tests run in a fresh subdirectory of it,
#            which is removed afterwards.
#   CONFIG   pjdfstest TOML config (default: scripts/pjdfstest.toml).
#   PATTERN  run only tests whose name contains one of the patterns
#            (e.g. `rename::` or `open::o`); default: all tests.
#
# Tests that the mount's file-system model does not hold are left out: they are
# listed, each with its reason, in scripts/pjdfstest-excluded.txt (format
# described there). Environment:
#   PJDFSTEST_EXCLUDE_FILE  another exclusion list; `none` runs everything.
#   PJDFSTEST_EXCLUDE       extra exclusion patterns, space-separated, same syntax.
#   PJDFSTEST_VERBOSE=1     pass -v (print each test's description).
#   PJDFSTEST_LOG=FILE      also write the full output to FILE.
#
# Exit status: 0 if every selected test passed or was skipped, 1 if any failed
# (or passed although listed in the config's expected_failures), 2 on a usage
# or setup error (including a selection that matches no test).
#
# pjdfstest is installed (pinned, --locked) into .tools/cargo on first use; its
# build links libacl, so libacl1-dev is apt-installed when missing (as root).
# Run as root: about a quarter of the tests switch to the config's dummy users
# and are skipped otherwise.
set -euo pipefail

PJDFSTEST_VERSION=0.2.2
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=$REPO/.tools
BIN=$TOOLS/cargo/bin/pjdfstest
TEST_LIST=$TOOLS/pjdfstest-$PJDFSTEST_VERSION.tests
DEFAULT_CONFIG=$REPO/scripts/pjdfstest.toml
EXCLUDE_FILE=${PJDFSTEST_EXCLUDE_FILE:-$REPO/scripts/pjdfstest-excluded.txt}
# pjdfstest's -e compares against the unshortened test name.
NAME_PREFIX=pjdfstest::tests::

export NO_COLOR=1 RUST_BACKTRACE=0

die() { echo "pjdfstest.sh: $*" >&2; exit 2; }
note() { echo "pjdfstest.sh: $*" >&2; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

have_libacl() {
  local f
  for f in /usr/lib/*/libacl.so /usr/lib/libacl.so /usr/lib64/libacl.so; do
    [[ -e $f ]] && return 0
  done
  return 1
}

install_pjdfstest() {
  if [[ -x $BIN ]] && [[ "$("$BIN" --version 2>/dev/null)" == "pjdfstest $PJDFSTEST_VERSION" ]]; then
    return 0
  fi
  command -v cargo >/dev/null || die "cargo is needed to install pjdfstest"
  if ! have_libacl; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      note "installing libacl1-dev (pjdfstest links libacl)"
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libacl1-dev >&2 \
        || die "apt-get install libacl1-dev failed"
    else
      die "libacl development files are missing: install libacl1-dev (Debian) / libacl-devel (Fedora)"
    fi
  fi
  note "installing pjdfstest $PJDFSTEST_VERSION into $TOOLS/cargo (about a minute on 2 cores)"
  local start=$SECONDS
  local target=${PJDFSTEST_TARGET_DIR:-${TMPDIR:-/tmp}/pjdfstest-target}
  CARGO_TARGET_DIR=$target \
    cargo install pjdfstest --version "=$PJDFSTEST_VERSION" --locked --root "$TOOLS/cargo" >&2 \
    || die "cargo install pjdfstest failed"
  rm -rf "$target" # the build cache is not needed once installed (disk on small CI machines)
  note "pjdfstest installed in $((SECONDS - start))s"
}

# Prints the short test names (as pjdfstest prints them) in pjdfstest's output.
result_names() { sed -nE 's/^([a-z0-9_]+(::[a-z0-9_]+)+) +(ok|FAILED|skipped|PASSED UNEXPECTEDLY|failed as expected)$/\1/p'; }

# pjdfstest cannot list its tests, so the list is taken once per version from a
# full run in a scratch directory on local disk (a few seconds) and cached.
ensure_test_list() {
  local config=$1
  [[ -s $TEST_LIST ]] && return 0
  local scratch
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/pjdfstest-list.XXXXXX")
  chmod 0755 "$scratch"
  note "listing pjdfstest's tests (one run on $scratch)"
  "$BIN" -c "$config" -p "$scratch" 2>&1 | result_names | sort -u >"$TEST_LIST.tmp" || true
  rm -rf "$scratch"
  [[ -s $TEST_LIST.tmp ]] || { rm -f "$TEST_LIST.tmp"; die "could not list pjdfstest's tests"; }
  mv "$TEST_LIST.tmp" "$TEST_LIST"
}

# EXCL_PATS / EXCL_REASONS: the exclusion entries, group names expanded to globs.
EXCL_PATS=()
EXCL_REASONS=()
load_exclusions() {
  local line pat reason
  if [[ $EXCLUDE_FILE != none ]]; then
    [[ -r $EXCLUDE_FILE ]] || die "cannot read the exclusion list $EXCLUDE_FILE"
    while IFS= read -r line || [[ -n $line ]]; do
      line=${line%%$'\r'}
      [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
      read -r pat reason <<<"$line"
      [[ -n $reason ]] || die "$EXCLUDE_FILE: no reason given for '$pat'"
      EXCL_PATS+=("$pat")
      EXCL_REASONS+=("$reason")
    done <"$EXCLUDE_FILE"
  fi
  for pat in ${PJDFSTEST_EXCLUDE:-}; do
    EXCL_PATS+=("$pat")
    EXCL_REASONS+=("excluded by PJDFSTEST_EXCLUDE")
  done
  local i
  for i in "${!EXCL_PATS[@]}"; do
    pat=${EXCL_PATS[$i]}
    [[ $pat == *::* || $pat == *[\*\?\[]* ]] || EXCL_PATS[i]="$pat::*"
  done
}

# Prints the index of the first exclusion entry matching test name $1, or fails.
excluded_by() {
  local i
  for i in "${!EXCL_PATS[@]}"; do
    # shellcheck disable=SC2053  # the right-hand side is a glob on purpose
    if [[ $1 == ${EXCL_PATS[$i]} ]]; then
      echo "$i"
      return 0
    fi
  done
  return 1
}

mode=run
case ${1:-} in
  -h|--help) usage; exit 0 ;;
  --install) install_pjdfstest; exit 0 ;;
  --list) mode=list; shift ;;
  --list-excluded) mode=list-excluded; shift ;;
  "") usage >&2; exit 2 ;;
esac

DIR=
CONFIG=$DEFAULT_CONFIG
PATTERNS=()
if [[ $mode == run ]]; then
  DIR=$1
  shift
  if [[ $# -gt 0 && $1 != -- ]]; then CONFIG=$1; shift; fi
fi
if [[ $# -gt 0 ]]; then
  [[ $1 == -- ]] || die "unexpected argument '$1' (patterns go after --)"
  shift
  PATTERNS=("$@")
fi
[[ -r $CONFIG ]] || die "cannot read the config $CONFIG"
CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")

install_pjdfstest
ensure_test_list "$CONFIG"
mapfile -t ALL_TESTS <"$TEST_LIST"

if [[ $mode == list ]]; then
  printf '%s\n' "${ALL_TESTS[@]}"
  exit 0
fi

load_exclusions
SELECTED=()
EXCLUDED=()
for name in "${ALL_TESTS[@]}"; do
  if [[ ${#PATTERNS[@]} -gt 0 ]]; then
    wanted=false
    for pat in "${PATTERNS[@]}"; do
      [[ $name == *"$pat"* ]] && { wanted=true; break; }
    done
    $wanted || continue
  fi
  if i=$(excluded_by "$name"); then
    EXCLUDED+=("$name	${EXCL_REASONS[$i]}")
  else
    SELECTED+=("$name")
  fi
done

if [[ $mode == list-excluded ]]; then
  [[ ${#EXCLUDED[@]} -eq 0 ]] || printf '%s\n' "${EXCLUDED[@]}" | column -t -s $'\t'
  echo "${#EXCLUDED[@]} of ${#ALL_TESTS[@]} tests excluded" >&2
  exit 0
fi

[[ -d $DIR ]] || die "$DIR is not a directory"
[[ ${#SELECTED[@]} -gt 0 ]] || die "no test selected (patterns: ${PATTERNS[*]:-none}; ${#EXCLUDED[@]} excluded)"

[[ $(id -u) == 0 ]] || note "warning: not root: tests that need root or switch users will be skipped"
perm=$(stat -c %A "$DIR")
[[ ${perm:9:1} == [xt] ]] || note "warning: $DIR is not searchable by others (mode $perm): tests run as the dummy users will fail with EACCES"
fs=$(findmnt -n -o FSTYPE,OPTIONS --target "$DIR" 2>/dev/null || true)
if [[ $fs == fuse* && $fs != *allow_other* ]]; then
  note "warning: $DIR is on a FUSE mount without allow_other: tests run as the dummy users will fail with EACCES"
fi

SCRATCH=$(mktemp -d "$DIR/pjdfstest.XXXXXX")
chmod 0755 "$SCRATCH"
trap 'rm -rf "$SCRATCH"' EXIT

ARGS=(-c "$CONFIG" -p "$SCRATCH" -e)
[[ ${PJDFSTEST_VERBOSE:-0} == 1 ]] && ARGS+=(-v)
for name in "${SELECTED[@]}"; do ARGS+=("$NAME_PREFIX$name"); done

echo "pjdfstest $PJDFSTEST_VERSION on $DIR: ${#SELECTED[@]} tests selected, ${#EXCLUDED[@]} excluded (see ${EXCLUDE_FILE#"$REPO"/}), config ${CONFIG#"$REPO"/}"
OUT=$(mktemp "${TMPDIR:-/tmp}/pjdfstest-out.XXXXXX")
trap 'rm -rf "$SCRATCH" "$OUT"' EXIT
set +e
"$BIN" "${ARGS[@]}" 2>&1 | tee "$OUT"
rc=${PIPESTATUS[0]}
set -e
[[ -n ${PJDFSTEST_LOG:-} ]] && cp "$OUT" "$PJDFSTEST_LOG"

summary=$(grep -E '^Summary: ' "$OUT" | tail -n 1 || true)
if [[ ! $summary =~ ^Summary:\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped,\ ([0-9]+)\ passed,\ ([0-9]+)\ expected\ failures,\ ([0-9]+)\ total ]]; then
  note "pjdfstest ended without a summary (exit status $rc)"
  exit 1
fi
failed=${BASH_REMATCH[1]} skipped=${BASH_REMATCH[2]} passed=${BASH_REMATCH[3]} xfail=${BASH_REMATCH[4]}

if [[ $failed -gt 0 ]]; then
  echo
  echo "Failed tests:"
  grep -E ' (FAILED|PASSED UNEXPECTEDLY)$' "$OUT" | sed -E 's/ +(FAILED|PASSED UNEXPECTEDLY)$//; s/^/  /'
fi
echo
echo "excluded: ${#EXCLUDED[@]}, expected failures: $xfail"
echo "pjdfstest: $passed passed, $failed failed, $skipped skipped"
if [[ $rc -ne 0 || $failed -gt 0 ]]; then
  exit 1
fi
exit 0
