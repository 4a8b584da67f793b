#!/usr/bin/env bash
# Keeps the README's first ```cpp block compiling and running against the *installed*
# library found through pkg-config (a staged `meson install --destdir`).
set -euo pipefail
src=$1 build=$2 sanitize=${3:-none}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk '/^```cpp[[:space:]]*$/{f=1;next} /^```/{if(f)exit} f' "$src/README.md" > "$tmp/example.cpp"
[ -s "$tmp/example.cpp" ] || { echo "no \`\`\`cpp block in README.md"; exit 1; }
meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >/dev/null
pc=$(dirname "$(find "$tmp/root" -name flatmin.pc | head -n 1)")
prefix=$(sed -n "s/^prefix=//p" "$pc/flatmin.pc")
flags=$(PKG_CONFIG_PATH="$pc" pkg-config --define-variable=prefix="$tmp/root$prefix" --cflags --libs flatmin)
extra=(); [ "$sanitize" != none ] && extra=("-fsanitize=$sanitize")  # match a sanitized library
g++ -std=c++20 "${extra[@]}" "$tmp/example.cpp" $flags -o "$tmp/example"
libdir=$(dirname "$(find "$tmp/root" -name 'libflatmin.so' | head -n 1)")
LD_LIBRARY_PATH="$libdir" "$tmp/example"
