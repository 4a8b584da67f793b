#!/usr/bin/env bash
# Packs, on a machine where flatmin builds, the build dependencies that a GPU machine
# without network access may lack (Eigen, oneTBB, doctest, CLI11, nlohmann-json, zlib
# headers, OpenBLAS (pthread flavor, with libgfortran), pkg-config and meson) into .gpudeps/
# (about 60 MB) and .gpudeps.tar.xz (about 8 MB: what to carry, the device tool's limit being
# 64 MiB), and, where Debian's Fashion-MNIST package is installed, the files `flatmin escape`
# reads into .fmnist/ (the first 6,000 training images and the test set, about 7 MB). All
# three are in .gitignore. scripts/gpu_check.sh unpacks the archive and uses it only when the
# machine's own packages are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
D=.gpudeps
LIB=/usr/lib/x86_64-linux-gnu
rm -rf "$D"
mkdir -p "$D/include" "$D/lib/pkgconfig" "$D/runtime" "$D/bin" "$D/python"
cp -r /usr/include/eigen3 /usr/include/tbb /usr/include/oneapi /usr/include/doctest /usr/include/CLI \
  /usr/include/nlohmann /usr/include/zlib.h /usr/include/zconf.h "$D/include/"
# link-time libraries; at run time only oneTBB (and pkgconf's library) come from here,
# zlib from the system (any libz.so.1 provides the symbol versions linked against)
cp -P "$LIB"/libtbb.so* "$LIB"/libtbbmalloc.so* "$LIB"/libz.so.1* "$D/lib/"
ln -s "$(basename "$(readlink -f "$LIB/libz.so")")" "$D/lib/libz.so"  # relative: it travels
cp -P "$LIB"/libtbb.so* "$LIB"/libtbbmalloc.so* "$LIB"/libpkgconf.so.3* "$D/runtime/"
# OpenBLAS: headers, the library and its Fortran runtime, at link and at run time
OB=$LIB/openblas-pthread
mkdir -p "$D/include/openblas"
cp /usr/include/x86_64-linux-gnu/openblas-pthread/*.h "$D/include/openblas/"
# one copy (36 MB), in runtime/, which the link and the loader both use
cp -P "$OB"/libopenblas.so* "$OB"/libopenblasp-r*.so "$LIB"/libgfortran.so.5* "$LIB"/libquadmath.so.0* "$D/runtime/"
rm -rf "$D/include/eigen3/unsupported"  # not used; keeps .gpudeps under the 64 MiB a carry allows
cp /usr/bin/pkgconf "$D/bin/pkg-config"
cp -r /usr/lib/python3/dist-packages/mesonbuild "$D/python/"
pc() {  # name version cflags libs
  printf 'prefix=${pcfiledir}/../..\nlibdir=${prefix}/lib\nincludedir=${prefix}/include\n\nName: %s\nDescription: %s (carried by scripts/gpu_deps.sh)\nVersion: %s\nCflags: %s\nLibs: %s\n' \
    "$1" "$1" "$2" "$3" "$4" > "$D/lib/pkgconfig/$1.pc"
}
pc eigen3 "$(pkg-config --modversion eigen3)" '-I${includedir}/eigen3' ''
pc tbb "$(pkg-config --modversion tbb)" '-I${includedir}' '-L${libdir} -ltbb'
pc zlib "$(pkg-config --modversion zlib)" '-I${includedir}' '-L${libdir} -lz'
pc nlohmann_json "$(pkg-config --modversion nlohmann_json)" '-I${includedir}' ''
pc CLI11 "$(pkg-config --modversion CLI11)" '-I${includedir}' ''
pc openblas "$(pkg-config --modversion openblas)" '-I${includedir}/openblas' '-L${prefix}/runtime -lopenblas'
sed -i 's|^libdir=.*|libdir=${prefix}/runtime|' "$D/lib/pkgconfig/openblas.pc"  # meson reads it for the rpath
tar -cf - "$D" | xz -T0 -6 > .gpudeps.tar.xz
# Fashion-MNIST for gpu_check.sh's shortened `flatmin escape --preset gpu` run: a valid IDX
# file of the first 6,000 training images and labels (header count rewritten), the test set whole.
F=/usr/share/datasets/fashion-mnist
if [ -f "$F/train-images-idx3-ubyte.gz" ]; then
  rm -rf .fmnist && mkdir .fmnist && cp "$F"/t10k-* .fmnist/
  python3 - "$F" << 'PY'
import gzip, struct, sys
src = sys.argv[1]
for name, header, per_item in (("train-images-idx3-ubyte.gz", ">IIII", None), ("train-labels-idx1-ubyte.gz", ">II", 1)):
    data = gzip.open(f"{src}/{name}").read()
    fields = list(struct.unpack(header, data[: struct.calcsize(header)]))
    size = per_item or fields[2] * fields[3]
    fields[1] = 6000
    body = data[struct.calcsize(header) : struct.calcsize(header) + 6000 * size]
    gzip.open(f".fmnist/{name}", "wb").write(struct.pack(header, *fields) + body)
PY
fi
du -sh "$D" .gpudeps.tar.xz .fmnist 2> /dev/null
