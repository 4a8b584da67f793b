#include "datasets/readers.hpp"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace flatmin::data {

namespace fs = std::filesystem;

static std::string num(uint64_t v) { return std::to_string(v); }

Bytes read_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw Error(path + ": no such file (or not a regular file)");
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw Error(path + ": cannot open: " + std::strerror(errno));
  const std::streamoff size = f.tellg();
  if (size < 0) throw Error(path + ": cannot tell its size");
  Bytes b(static_cast<size_t>(size));
  f.seekg(0);
  if (size > 0 && !f.read(reinterpret_cast<char*>(b.data()), size))
    throw Error(path + ": read failed after " + num(uint64_t(f.gcount())) + " of " + num(uint64_t(size)) + " bytes");
  return b;
}

bool is_gzip(ByteView b) { return b.size() >= 2 && b[0] == 0x1f && b[1] == 0x8b; }

// ---- byte sources: a plain buffer, or a gzip stream decompressed on demand ----
namespace {

class Source {
 public:
  virtual ~Source() = default;
  // Up to n bytes into dst; fewer only at the end of the data.
  virtual size_t read(uint8_t* dst, size_t n) = 0;
};

class PlainSource final : public Source {
 public:
  explicit PlainSource(ByteView b) : b_(b) {}
  size_t read(uint8_t* dst, size_t n) override {
    const size_t k = std::min(n, b_.size() - pos_);
    if (k) std::memcpy(dst, b_.data() + pos_, k);
    pos_ += k;
    return k;
  }

 private:
  ByteView b_;
  size_t pos_ = 0;
};

class GzipSource final : public Source {
 public:
  GzipSource(ByteView in, std::string source) : in_(in), source_(std::move(source)) {
    std::memset(&z_, 0, sizeof z_);
    if (inflateInit2(&z_, 16 + MAX_WBITS) != Z_OK) throw Error(source_ + ": zlib initialisation failed");
  }
  ~GzipSource() override { inflateEnd(&z_); }
  GzipSource(const GzipSource&) = delete;
  GzipSource& operator=(const GzipSource&) = delete;

  size_t read(uint8_t* dst, size_t n) override {
    size_t got = 0;
    while (got < n && !done_) {
      if (member_ended_) {  // another member follows, or the data must end here
        if (pos_ == in_.size()) {
          done_ = true;
          break;
        }
        if (!is_gzip(in_.subspan(pos_)))
          throw Error(source_ + ": " + num(in_.size() - pos_) + " bytes of trailing garbage after the gzip data");
        if (inflateReset(&z_) != Z_OK) throw Error(source_ + ": zlib reset failed");
        member_ended_ = false;
      }
      const size_t in_chunk = std::min<size_t>(in_.size() - pos_, size_t(1) << 30);
      const size_t out_chunk = std::min<size_t>(n - got, size_t(1) << 30);
      z_.next_in = const_cast<Bytef*>(in_.data() + pos_);
      z_.avail_in = uInt(in_chunk);
      z_.next_out = dst + got;
      z_.avail_out = uInt(out_chunk);
      const int rc = inflate(&z_, Z_NO_FLUSH);
      const size_t used = in_chunk - z_.avail_in, made = out_chunk - z_.avail_out;
      pos_ += used;
      got += made;
      if (rc == Z_STREAM_END) {
        member_ended_ = true;
      } else if (rc == Z_OK || rc == Z_BUF_ERROR) {
        if (used == 0 && made == 0) {
          if (pos_ == in_.size()) throw Error(source_ + ": truncated gzip data (the stream ends early)");
          throw Error(source_ + ": corrupt gzip data (no progress)");
        }
      } else {
        throw Error(source_ + ": corrupt gzip data (" + (z_.msg ? z_.msg : "zlib error " + std::to_string(rc)) + ")");
      }
    }
    return got;
  }

 private:
  ByteView in_;
  std::string source_;
  z_stream z_;
  size_t pos_ = 0;
  bool member_ended_ = false, done_ = false;
};

// Exactly n bytes appended to out, growing it only as data arrives (a header that claims
// more than the input holds costs no memory); Error naming `what` when the data ends early.
void read_exact(Source& src, size_t n, Bytes& out, const std::string& source, const char* what) {
  const size_t start = out.size();
  size_t got = 0;
  while (got < n) {
    const size_t step = std::min<size_t>(n - got, size_t(16) << 20);
    out.resize(start + got + step);
    const size_t k = src.read(out.data() + start + got, step);
    got += k;
    if (k < step) {
      out.resize(start + got);
      throw Error(source + ": truncated " + what + ": expected " + num(n) + " bytes, found " + num(got));
    }
  }
}

void expect_end(Source& src, const std::string& source, const char* after) {
  uint8_t extra[64];
  size_t total = 0, k;
  while ((k = src.read(extra, sizeof extra)) > 0) {
    total += k;
    if (total >= 64) break;
  }
  if (total > 0)
    throw Error(source + ": " + (total >= 64 ? "at least " : "") + num(total) + " unexpected bytes after the " + after);
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

}  // namespace

Bytes gunzip(ByteView in, const std::string& source, size_t max_bytes) {
  if (!is_gzip(in)) throw Error(source + ": not gzip data (no 1f 8b magic)");
  GzipSource z(in, source);
  Bytes out;
  for (;;) {
    const size_t step = size_t(16) << 20;
    const size_t have = out.size();
    if (have > max_bytes) break;
    const size_t room = max_bytes - have;
    const size_t want = room >= step ? step : room + 1;  // one past the limit detects excess
    out.resize(have + want);
    const size_t k = z.read(out.data() + have, want);
    out.resize(have + k);
    if (k < want) break;
  }
  if (out.size() > max_bytes)
    throw Error(source + ": decompresses to more than the limit of " + num(max_bytes) + " bytes");
  return out;
}

// ---- IDX ----
namespace {
// A plain or gzip byte source over `bytes`, chosen by the magic bytes.
struct AnySource {
  PlainSource plain;
  std::unique_ptr<GzipSource> gz;
  AnySource(ByteView bytes, const std::string& source) : plain(bytes) {
    if (is_gzip(bytes)) gz = std::make_unique<GzipSource>(bytes, source);
  }
  Source& get() { return gz ? static_cast<Source&>(*gz) : plain; }
};

struct IdxHeader {
  std::vector<int64_t> dims;
  uint64_t total = 1;  // prod(dims) bytes of data follow
};
// Magic and dimensions; the data they imply is bounded by max_bytes before any is read.
IdxHeader read_idx_header(Source& src, const std::string& source, size_t max_bytes) {
  Bytes head;
  read_exact(src, 4, head, source, "IDX header (magic number)");
  const uint32_t magic = be32(head.data());
  if (magic != 0x00000801u && magic != 0x00000803u) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", magic);
    throw Error(source + ": bad IDX magic number " + hex +
                " (expected 0x00000801 for labels or 0x00000803 for images, unsigned bytes)");
  }
  const size_t ndim = magic & 0xffu;
  read_exact(src, 4 * ndim, head, source, "IDX header (dimensions)");
  IdxHeader h;
  for (size_t k = 0; k < ndim; ++k) {
    const uint32_t d = be32(head.data() + 4 + 4 * k);
    if (d == 0) throw Error(source + ": IDX dimension " + num(k) + " is 0 (an empty array)");
    if (h.total > uint64_t(max_bytes) / d)  // also rules out overflow
      throw Error(source + ": IDX header claims more than the limit of " + num(max_bytes) + " bytes of data");
    h.total *= d;
    h.dims.push_back(int64_t(d));
  }
  return h;
}

// Labels (N) as int64, each checked against `classes`.
Tensor idx_labels(const Bytes& values, int64_t n, int64_t classes, const std::string& name) {
  if (classes < 1 || classes > 256) throw Error(name + ": class count must be in [1, 256]");
  Tensor lab = empty({n}, {DType::i64});
  int64_t* l = lab.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    l[i] = values[size_t(i)];
    if (l[i] >= classes)
      throw Error(name + ": label " + num(uint64_t(l[i])) + " of example " + num(uint64_t(i)) + " is outside [0, " +
                  num(uint64_t(classes)) + ")");
  }
  return lab;
}
}  // namespace

IdxArray parse_idx(ByteView bytes, const std::string& source, size_t max_bytes) {
  AnySource any(bytes, source);
  Source& src = any.get();
  const IdxHeader h = read_idx_header(src, source, max_bytes);
  IdxArray a;
  a.dims = h.dims;
  read_exact(src, size_t(h.total), a.values, source, "IDX data (the header's dimensions need more)");
  expect_end(src, source, "IDX data the header describes");
  return a;
}

IdxArray read_idx(const std::string& path, size_t max_bytes) {
  const Bytes b = read_file(path);
  return parse_idx(b, path, max_bytes);
}

Dataset idx_dataset(const IdxArray& images, const IdxArray& labels, int64_t classes, const std::string& name) {
  if (images.dims.size() != 3)
    throw Error(name + ": the images file must be a 3-d IDX array (N,H,W), got " + num(images.dims.size()) + " dims");
  if (labels.dims.size() != 1)
    throw Error(name + ": the labels file must be a 1-d IDX array (N), got " + num(labels.dims.size()) + " dims");
  const int64_t n = images.dims[0], h = images.dims[1], w = images.dims[2];
  if (labels.dims[0] != n)
    throw Error(name + ": " + num(uint64_t(n)) + " images but " + num(uint64_t(labels.dims[0])) + " labels");
  Tensor lab = idx_labels(labels.values, n, classes, name);
  Tensor img = empty({n, 1, h, w});
  float* p = img.data<float>();
  for (size_t i = 0; i < images.values.size(); ++i) p[i] = float(images.values[i]) / 255.0f;
  return {img, lab, classes, name};
}

// Memory bounded by what the headers allow before anything is inflated: the images' header
// first (N, H, W within the limit), then the labels, which must be exactly N bytes, then
// the image data streamed in 64 KiB chunks straight into the float tensor (no byte copy of
// the images; the tensor's pages are touched only as data arrives).
static Dataset load_idx_files(const std::string& images_path, const std::string& labels_path, int64_t classes,
                              const std::string& name) {
  const Bytes raw = read_file(images_path);
  AnySource any(raw, images_path);
  Source& src = any.get();
  const IdxHeader h = read_idx_header(src, images_path, kDefaultMaxBytes);
  if (h.dims.size() != 3)
    throw Error(name + ": the images file must be a 3-d IDX array (N,H,W), got " + num(h.dims.size()) + " dims");
  const int64_t n = h.dims[0];
  IdxArray labels;
  try {
    labels = read_idx(labels_path, size_t(n));
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (the images file holds " + num(uint64_t(n)) + " images)");
  }
  if (labels.dims.size() != 1)
    throw Error(name + ": the labels file must be a 1-d IDX array (N), got " + num(labels.dims.size()) + " dims");
  if (labels.dims[0] != n)
    throw Error(name + ": " + num(uint64_t(n)) + " images but " + num(uint64_t(labels.dims[0])) + " labels");
  Tensor lab = idx_labels(labels.values, n, classes, name);
  Tensor img = empty({n, 1, h.dims[1], h.dims[2]});
  float* p = img.data<float>();
  uint8_t chunk[1 << 16];
  for (uint64_t done = 0; done < h.total;) {
    const size_t want = size_t(std::min<uint64_t>(sizeof chunk, h.total - done));
    const size_t k = src.read(chunk, want);
    for (size_t i = 0; i < k; ++i) p[done + i] = float(chunk[i]) / 255.0f;
    done += k;
    if (k < want)
      throw Error(images_path + ": truncated IDX data (the header's dimensions need more): expected " + num(h.total) +
                  " bytes, found " + num(done));
  }
  expect_end(src, images_path, "IDX data the header describes");
  return {img, lab, classes, name};
}

Dataset load_idx(const std::string& images_path, const std::string& labels_path, int64_t classes) {
  return load_idx_files(images_path, labels_path, classes, images_path + " + " + labels_path);
}

// path, or path + ".gz" when only that exists; "" when neither does.
static std::string find_variant(const fs::path& dir, const std::string& base) {
  std::error_code ec;
  if (fs::is_regular_file(dir / base, ec)) return (dir / base).string();
  if (fs::is_regular_file(dir / (base + ".gz"), ec)) return (dir / (base + ".gz")).string();
  return "";
}

Dataset load_mnist_layout(const std::string& dir, bool train, const std::string& name) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string images = find_variant(dir, prefix + "-images-idx3-ubyte");
  const std::string labels = find_variant(dir, prefix + "-labels-idx1-ubyte");
  if (images.empty() || labels.empty())
    throw Error(name + ": " + dir + " has no " + prefix +
                (images.empty() ? "-images-idx3-ubyte" : "-labels-idx1-ubyte") + "[.gz]");
  try {
    return load_idx_files(images, labels, 10, name + (train ? "-train" : "-test"));
  } catch (const Error& e) {  // name the files, not only the set
    const std::string what = e.what();
    throw Error(what.find(images) != std::string::npos || what.find(labels) != std::string::npos
                    ? what
                    : images + " + " + labels + ": " + what);
  }
}

Dataset load_fashion_mnist(bool train, const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || find_variant(dir, "train-images-idx3-ubyte").empty())
    throw Error("Fashion-MNIST not found in " + dir +
                ": install Debian's package (apt-get install dataset-fashion-mnist, files in " + kFashionMnistDir +
                ") or pass the folder that holds the IDX files");
  return load_mnist_layout(dir, train, "fashion-mnist");
}

// ---- CIFAR ----
namespace {
struct CifarLayout {
  size_t label_bytes;
  int64_t classes;
  int64_t max_records;  // the largest file of the real set: what a file of this kind may hold
  const char* name;
};
CifarLayout layout(CifarKind k) {
  switch (k) {
    case CifarKind::cifar10: return {1, 10, kCifar10FileRecords, "CIFAR-10"};
    case CifarKind::cifar100_fine: return {2, 100, kCifar100FileRecords, "CIFAR-100"};
    case CifarKind::cifar100_coarse: return {2, 20, kCifar100FileRecords, "CIFAR-100 (coarse)"};
  }
  throw Error("unknown CIFAR kind");
}
constexpr size_t kImageBytes = 3 * 32 * 32;

// How many records a file holds, known before any tensor is allocated: a plain file's size
// says; a gzip file holds `records` when that is given (decode_cifar then stops reading one
// record's worth past them); otherwise its data is inflated once through a 64 KiB buffer and
// counted, stopping past what the kind's largest file holds. Nothing here grows with the data.
int64_t count_cifar(ByteView raw, const std::string& source, CifarKind kind, int64_t records) {
  const CifarLayout L = layout(kind);
  const size_t rec = L.label_bytes + kImageBytes;
  if (records < 0 || records > L.max_records)
    throw Error(source + ": expected record count " + std::to_string(records) + " is outside [0, " +
                num(uint64_t(L.max_records)) + "] (a " + L.name + " file holds at most " +
                num(uint64_t(L.max_records)) + ")");
  uint64_t size = raw.size();
  if (is_gzip(raw)) {
    if (records > 0) return records;
    GzipSource z(raw, source);
    const uint64_t cap = uint64_t(L.max_records) * rec;
    uint8_t chunk[1 << 16];
    size = 0;
    for (size_t k; (k = z.read(chunk, sizeof chunk)) > 0;) {
      size += k;
      if (size > cap)
        throw Error(source + ": decompresses to more than the " + num(uint64_t(L.max_records)) + " records (" +
                    num(cap) + " bytes) a " + L.name + " file holds");
    }
  }
  if (size == 0) throw Error(source + ": empty " + L.name + " file");
  if (size % rec != 0)
    throw Error(source + ": size " + num(size) + " bytes is not a multiple of the " + L.name + " record size " +
                num(rec) + " (" + num(L.label_bytes) + " label byte(s) + 3072 image bytes)");
  const uint64_t n = size / rec;
  if (n > uint64_t(L.max_records))
    throw Error(source + ": " + num(n) + " records, more than the " + num(uint64_t(L.max_records)) + " a " + L.name +
                " file holds");
  if (records > 0 && n != uint64_t(records))
    throw Error(source + ": " + num(n) + " records, expected " + num(uint64_t(records)));
  return int64_t(n);
}

// Streams the n records of a file (counted by count_cifar) one by one into their rows of the
// final tensors, checking each label: images (n, 3, 32, 32) as byte/255, labels (n).
void decode_cifar(ByteView raw, const std::string& source, CifarKind kind, int64_t n, float* images, int64_t* labels) {
  const CifarLayout L = layout(kind);
  const size_t rec = L.label_bytes + kImageBytes;
  const uint8_t limit = kind == CifarKind::cifar10 ? 10 : 100;
  AnySource any(raw, source);
  Source& src = any.get();
  Bytes r;
  r.reserve(rec);
  const std::string expected = "of the " + num(uint64_t(n)) + " expected";
  for (int64_t i = 0; i < n; ++i) {
    r.clear();
    read_exact(src, rec, r, source, (L.name + std::string(" record ") + num(uint64_t(i)) + " " + expected).c_str());
    if (L.label_bytes == 2 && r[0] >= 20)
      throw Error(source + ": coarse label " + num(r[0]) + " of record " + num(uint64_t(i)) + " is outside [0, 20)");
    if (r[L.label_bytes - 1] >= limit)
      throw Error(source + ": label " + num(r[L.label_bytes - 1]) + " of record " + num(uint64_t(i)) +
                  " is outside [0, " + num(limit) + ")");
    labels[i] = kind == CifarKind::cifar100_coarse ? r[0] : r[L.label_bytes - 1];
    float* dst = images + size_t(i) * kImageBytes;
    for (size_t j = 0; j < kImageBytes; ++j) dst[j] = float(r[L.label_bytes + j]) / 255.0f;
  }
  expect_end(src, source, (num(uint64_t(n)) + " records expected").c_str());
}

// The files of one split in one dataset: every file counted first (each read and, if gzip
// without an expected count, inflated once), the tensors allocated once, then each file read
// again and streamed into its rows. One file's bytes and the final tensors are all it holds
// (one file alone is read once, by read_cifar).
Dataset load_cifar_files(const std::vector<std::string>& paths, CifarKind kind, int64_t records_per_file,
                         const std::string& name) {
  if (paths.size() == 1) {
    Dataset d = read_cifar(paths[0], kind, records_per_file);
    d.name = name;
    return d;
  }
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (const auto& p : paths) total += counts.emplace_back(count_cifar(read_file(p), p, kind, records_per_file));
  Tensor img = empty({total, 3, 32, 32});
  Tensor lab = empty({total}, {DType::i64});
  int64_t at = 0;
  for (size_t k = 0; k < paths.size(); ++k) {
    decode_cifar(read_file(paths[k]), paths[k], kind, counts[k], img.data<float>() + size_t(at) * kImageBytes,
                 lab.data<int64_t>() + at);
    at += counts[k];
  }
  return {img, lab, layout(kind).classes, name};
}

fs::path cifar_folder(const std::string& dir, const char* sub, const char* probe) {
  std::error_code ec;
  if (fs::is_regular_file(fs::path(dir) / probe, ec)) return dir;
  if (fs::is_regular_file(fs::path(dir) / sub / probe, ec)) return fs::path(dir) / sub;
  throw Error(std::string("CIFAR: ") + dir + " holds neither " + probe + " nor " + sub + "/" + probe);
}
}  // namespace

Dataset parse_cifar(ByteView bytes, const std::string& source, CifarKind kind, int64_t records) {
  const int64_t n = count_cifar(bytes, source, kind, records);
  Tensor img = empty({n, 3, 32, 32});
  Tensor lab = empty({n}, {DType::i64});
  decode_cifar(bytes, source, kind, n, img.data<float>(), lab.data<int64_t>());
  return {img, lab, layout(kind).classes, source};
}

Dataset read_cifar(const std::string& path, CifarKind kind, int64_t records) {
  return parse_cifar(read_file(path), path, kind, records);
}

Dataset load_cifar10(const std::string& dir, Split split, const CifarOptions& opt) {
  const bool train = split == Split::train;
  const fs::path folder = cifar_folder(dir, "cifar-10-batches-bin", train ? "data_batch_1.bin" : "test_batch.bin");
  std::vector<std::string> paths;
  if (train)
    for (int i = 1; i <= 5; ++i) paths.push_back((folder / ("data_batch_" + std::to_string(i) + ".bin")).string());
  else
    paths.push_back((folder / "test_batch.bin").string());
  return load_cifar_files(paths, CifarKind::cifar10, opt.check_counts ? kCifar10FileRecords : 0,
                          train ? "cifar10-train" : "cifar10-test");
}

Dataset load_cifar100(const std::string& dir, Split split, const CifarOptions& opt) {
  const bool train = split == Split::train, coarse = opt.coarse;
  const char* file = train ? "train.bin" : "test.bin";
  const fs::path folder = cifar_folder(dir, "cifar-100-binary", file);
  const CifarKind kind = coarse ? CifarKind::cifar100_coarse : CifarKind::cifar100_fine;
  const std::string path = (folder / file).string();
  Dataset d = read_cifar(path, kind, opt.check_counts ? (train ? kCifar100FileRecords : 10000) : 0);
  d.name = std::string(train ? "cifar100-train" : "cifar100-test") + (coarse ? "-coarse" : "");
  return d;
}

}  // namespace flatmin::data
