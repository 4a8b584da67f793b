#!/usr/bin/env bash
# Includes point down only (docs/architecture.md): every `#include "dir/..."` in a folder of
# the library names that folder or one the table below allows. Relative includes without a
# folder stay inside their own folder, so they are allowed.
#   tests/layers.sh SOURCE_ROOT
set -uo pipefail
cd "$1" || exit 2
declare -A allowed=(
  [autodiff]="autodiff"
  [datasets]="autodiff datasets"
  [nn]="autodiff nn"
  [distributed]="autodiff distributed"
  [optim]="autodiff optim"
  [train]="autodiff datasets nn distributed optim train"
  [tools]="autodiff datasets nn distributed optim train tools"
)
failed=0
for layer in "${!allowed[@]}"; do
  [ -d "$layer" ] || { echo "FAIL: folder $layer/ is missing"; failed=1; continue; }
  while IFS= read -r hit; do
    target=${hit#*#include \"}; target=${target%%\"*}
    [[ $target == */* ]] || continue
    case " ${allowed[$layer]} " in
      *" ${target%%/*} "*) ;;
      *) echo "FAIL: $hit (a $layer/ file may include only: ${allowed[$layer]})"; failed=1 ;;
    esac
  done < <(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' --include='*.hpp' --include='*.cpp' \
             --include='*.h' --include='*.cu' --include='*.cuh' "$layer")
done
[ $failed -eq 0 ] && echo "every include points down (${#allowed[@]} layers)"
exit $failed
