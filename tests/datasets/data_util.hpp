// Small hand-built files in the IDX and CIFAR formats, for the datasets tests.
#pragma once
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace testdata {

using Bytes = std::vector<uint8_t>;

inline void put_be32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}

// IDX file: magic 0x00000800 | ndim (unsigned bytes), big-endian dims, then the values.
inline Bytes idx(const std::vector<uint32_t>& dims, const Bytes& values) {
  Bytes b;
  put_be32(b, 0x00000800u | uint32_t(dims.size()));
  for (uint32_t d : dims) put_be32(b, d);
  b.insert(b.end(), values.begin(), values.end());
  return b;
}

// gzip member of `in` (zlib's deflate with a gzip wrapper), independent of the reader.
inline Bytes gzip(const Bytes& in) {
  z_stream z{};
  if (deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("deflateInit2");
  Bytes out(deflateBound(&z, uLong(in.size())) + 32);
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = uInt(in.size());
  z.next_out = out.data();
  z.avail_out = uInt(out.size());
  const int rc = deflate(&z, Z_FINISH);
  deflateEnd(&z);
  if (rc != Z_STREAM_END) throw std::runtime_error("deflate");
  out.resize(size_t(z.total_out));
  return out;
}

// Pixel value of image i, channel c, row y, column x in the test's CIFAR files.
inline uint8_t cifar_pixel(int i, int c, int y, int x) { return uint8_t((i * 7 + c * 50 + y * 3 + x) % 256); }

// CIFAR-10 records (label byte + 3072) or CIFAR-100 records (coarse, fine + 3072).
inline Bytes cifar(const std::vector<std::vector<uint8_t>>& label_bytes, int first_image = 0) {
  Bytes b;
  for (size_t r = 0; r < label_bytes.size(); ++r) {
    b.insert(b.end(), label_bytes[r].begin(), label_bytes[r].end());
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 32; ++x) b.push_back(cifar_pixel(first_image + int(r), c, y, x));
  }
  return b;
}

inline void write(const std::filesystem::path& p, const Bytes& b) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

// A fresh empty folder under the system temp dir, removed when the object goes.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / ("flatmin-" + tag + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

}  // namespace testdata
