#!/usr/bin/env bash
# One entry point for people and CI: installs what is missing (Debian packages), configures
# and builds as needed, then runs what was asked. Safe to run again.
#   ./run.sh test          build and run the whole test suite
#   ./run.sh asan          the test suite under AddressSanitizer + UBSan (build-asan/)
#   ./run.sh build         install what is missing and build (build/), nothing else
#   ./run.sh <command> ... build, then run `flatmin <command> ...` (e.g. escape, check, probe)
set -euo pipefail
cd "$(dirname "$0")"

packages=(meson ninja-build pkg-config g++ libeigen3-dev libtbb-dev doctest-dev nlohmann-json3-dev
          libcli11-dev zlib1g-dev libopenblas-pthread-dev dataset-fashion-mnist python3-matplotlib
          libopenmpi-dev openmpi-bin clang-format libdnnl-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[run.sh] installing: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq -o DPkg::Lock::Timeout=600
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${missing[@]}"
fi

build() {  # build DIR [meson options...]
  local dir=$1; shift
  [ -f "$dir/build.ninja" ] || meson setup "$dir" "$@"
  ninja -C "$dir"
}

# `meson test`, then one plain closing line "N passed, N failed, N skipped".
run_tests() {
  local dir=$1 rc=0
  meson test -C "$dir" --print-errorlogs --no-rebuild || rc=$?
  /usr/bin/python3 - "$dir/meson-logs/testlog.json" <<'PY'
import json, sys
r = [json.loads(l)["result"] for l in open(sys.argv[1]) if l.strip()]
print(f"meson: {r.count('OK')} passed, {r.count('FAIL') + r.count('TIMEOUT') + r.count('ERROR')} failed, {r.count('SKIP')} skipped")
PY
  return $rc
}

cmd=${1:-test}
case "$cmd" in
  test) build build; run_tests build ;;
  build) build build ;;
  asan) build build-asan -Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Dcuda=disabled
        ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 run_tests build-asan ;;
  *) build build >&2; shift; exec ./build/tools/flatmin "$cmd" "$@" ;;
esac
