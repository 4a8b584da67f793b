// Readers for the formats people have on disk: IDX (MNIST, Fashion-MNIST; plain or gzip)
// and the CIFAR-10/100 binary batches. Each has an in-memory entry point (parse_*) that the
// file readers call and the fuzz test drives. Every reader checks sizes, magic numbers,
// dimensions, label ranges and image/label agreement and throws flatmin::Error naming the
// file and the problem; nothing is allocated beyond what the input actually holds, the
// MNIST-layout loaders bound the labels by the images' header and stream the images into
// their float tensor, and the CIFAR readers stream record by record into theirs (no
// intermediate byte copy).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "datasets/dataset.hpp"

namespace flatmin::data {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

// Decompressed output above this is refused (a gzip bomb stops here). 2 GiB by default:
// Fashion-MNIST's training images are 47 MB, CIFAR-10 in total 184 MB.
inline constexpr size_t kDefaultMaxBytes = size_t(2) << 30;

Bytes read_file(const std::string& path);  // Error naming the file when it cannot be read
bool is_gzip(ByteView bytes);              // starts with the gzip magic 1f 8b
// All members of a gzip stream, CRC-checked; Error past max_bytes of output.
Bytes gunzip(ByteView in, const std::string& source, size_t max_bytes = kDefaultMaxBytes);

// ---- IDX (unsigned-byte arrays: magic 0x00000801 labels, 0x00000803 images) ----
struct IdxArray {
  std::vector<int64_t> dims;  // big-endian u32 dims from the header
  Bytes values;               // prod(dims) bytes, row-major
};
// Plain or gzip (detected by magic bytes). With gzip, decompression stops at the size the
// header implies (plus one byte to detect trailing data).
IdxArray parse_idx(ByteView bytes, const std::string& source, size_t max_bytes = kDefaultMaxBytes);
IdxArray read_idx(const std::string& path, size_t max_bytes = kDefaultMaxBytes);
// images (N,H,W) + labels (N) -> Dataset with images (N,1,H,W) float32 = byte/255.
Dataset idx_dataset(const IdxArray& images, const IdxArray& labels, int64_t classes, const std::string& name);
Dataset load_idx(const std::string& images_path, const std::string& labels_path, int64_t classes = 10);

// The MNIST file layout in `dir`: {train,t10k}-{images-idx3,labels-idx1}-ubyte, with or
// without .gz. Fashion-MNIST ships the same names.
Dataset load_mnist_layout(const std::string& dir, bool train, const std::string& name);
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
// Debian's dataset-fashion-mnist package; a clear Error telling to install it when missing.
Dataset load_fashion_mnist(bool train, const std::string& dir = kFashionMnistDir);

// ---- CIFAR binary ----
enum class CifarKind { cifar10, cifar100_fine, cifar100_coarse };
// The largest file of each set (CIFAR-10's batches, CIFAR-100's train.bin): what one file of
// that kind may hold, so what a gzip'd one may inflate to.
inline constexpr int64_t kCifar10FileRecords = 10000;
inline constexpr int64_t kCifar100FileRecords = 50000;
// Records of 1 label byte (CIFAR-10) or 2 (CIFAR-100: coarse, fine) + 3072 bytes of a 3x32x32
// image in channel-major order. `records` = expected record count, or 0 for any positive count
// up to the kind's largest file. Plain or gzip; the records are streamed one by one into the
// final tensors, and gzip data is inflated no further than the expected count (plus 64 bytes
// to detect more) or, without one, than the kind's largest file.
Dataset parse_cifar(ByteView bytes, const std::string& source, CifarKind kind, int64_t records = 0);
Dataset read_cifar(const std::string& path, CifarKind kind, int64_t records = 0);
enum class Split { train, test };
struct CifarOptions {
  bool coarse = false;       // CIFAR-100: the 20 superclass labels instead of the 100 classes
  bool check_counts = true;  // false accepts files with fewer records than the real ones (tests)
};
// cifar-10-batches-bin: data_batch_1..5.bin (train) or test_batch.bin, 10000 records each.
// `dir` may be that folder or its parent.
Dataset load_cifar10(const std::string& dir, Split split, const CifarOptions& opt = {});
// cifar-100-binary: train.bin (50000 records) or test.bin (10000).
Dataset load_cifar100(const std::string& dir, Split split, const CifarOptions& opt = {});

}  // namespace flatmin::data
