#!/usr/bin/env bash
# The README's first ```cpp block built by CMake against the *installed* library found with
# find_package(flatmin CONFIG) (a staged `meson install --destdir`), and run; plus the
# installed pkg-config flags carrying no -march (a library meant for other machines).
set -euo pipefail
src=$1 build=$2 sanitize=${3:-none}
command -v cmake >/dev/null || { echo "cmake not installed: skipping"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/project"
awk '/^```cpp[[:space:]]*$/{f=1;next} /^```/{if(f)exit} f' "$src/README.md" > "$tmp/project/example.cpp"
[ -s "$tmp/project/example.cpp" ] || { echo "no \`\`\`cpp block in README.md"; exit 1; }
meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >/dev/null
config=$(find "$tmp/root" -name flatminConfig.cmake | head -n 1)
[ -n "$config" ] || { echo "flatminConfig.cmake was not installed"; exit 1; }
pc=$(find "$tmp/root" -name flatmin.pc | head -n 1)
if grep -q -- '-march' "$pc"; then echo "installed flatmin.pc carries -march: $(grep -- -march "$pc")"; exit 1; fi
flags=""; [ "$sanitize" != none ] && flags="-fsanitize=$sanitize"  # match a sanitized library
cat > "$tmp/project/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.16)
project(flatmin_consumer CXX)
find_package(flatmin 0.1 CONFIG REQUIRED)
add_executable(example example.cpp)
target_link_libraries(example PRIVATE flatmin::flatmin)
CMAKE
prefix=$(sed -n "s/^prefix=//p" "$pc")  # the staged install prefix, as a consumer would pass it
cmake -S "$tmp/project" -B "$tmp/cbuild" -DCMAKE_PREFIX_PATH="$tmp/root$prefix" \
  -DCMAKE_CXX_FLAGS="$flags" >"$tmp/cmake.log" 2>&1 || { cat "$tmp/cmake.log"; exit 1; }
cmake --build "$tmp/cbuild" >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; exit 1; }
"$tmp/cbuild/example"
