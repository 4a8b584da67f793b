#!/usr/bin/env bash
# The tree is formatted: every C++/CUDA file tracked by git as clang-format (.clang-format)
# writes it. Fails naming each file that differs; to fix: clang-format -i FILE (or
# `git clang-format` for the lines of a change). Skipped (exit 77) without clang-format or git.
set -uo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "clang-format not installed: format check skipped"; exit 77; }
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "not a git checkout: format check skipped"; exit 77; }
mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh' '*.h')
bad=()
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
  echo "not formatted (clang-format -i to fix): ${bad[*]}"
  exit 1
fi
echo "formatted: ${#files[@]} files ($(clang-format --version))"
