// Seeded mutation fuzzing of the readers from memory: >= 100,000 mutated inputs (bytes
// flipped, header fields rewritten, truncated, extended; plain and gzip IDX, CIFAR-10/100).
// Every input must either parse into a consistent result or throw flatmin::Error; anything
// else (a crash, another exception type, a hang, an out-of-bounds read under ASan) fails.
#include <doctest/doctest.h>

#include <random>

#include "data_util.hpp"
#include "datasets/readers.hpp"

using namespace flatmin;
using namespace flatmin::data;
using testdata::Bytes;

namespace {

struct Tally {
  int64_t ok = 0, errors = 0;
};

// One random mutation of `in`; header fields get special attention.
Bytes mutate(const Bytes& in, std::mt19937_64& rng, size_t header_bytes) {
  Bytes b = in;
  auto pick = [&](size_t n) { return size_t(rng() % std::max<size_t>(n, 1)); };
  const int kinds = 7;
  const int rounds = 1 + int(rng() % 3);
  for (int r = 0; r < rounds; ++r) {
    switch (rng() % kinds) {
      case 0:  // flip a bit anywhere
        if (!b.empty()) b[pick(b.size())] ^= uint8_t(1u << (rng() % 8));
        break;
      case 1:  // an interesting byte in the header
        if (!b.empty()) {
          static const uint8_t special[] = {0x00, 0x01, 0x03, 0x7f, 0x80, 0xff, 0x08, 0x0d};
          b[pick(std::min(header_bytes, b.size()))] = special[rng() % sizeof special];
        }
        break;
      case 2: {  // a whole 32-bit header field
        static const uint32_t fields[] = {0, 1, 2, 3, 28, 0x7fffffff, 0x80000000u, 0xffffffffu, 0x00000803, 0x00000801};
        if (b.size() >= 4 && header_bytes >= 4) {
          const size_t at = 4 * pick(std::min(header_bytes, b.size()) / 4);
          const uint32_t v = fields[rng() % (sizeof fields / sizeof fields[0])];
          for (int k = 0; k < 4; ++k) b[at + k] = uint8_t(v >> (24 - 8 * k));
        }
        break;
      }
      case 3:  // truncate
        b.resize(pick(b.size() + 1));
        break;
      case 4: {  // extend with random bytes
        const size_t extra = 1 + rng() % 64;
        for (size_t k = 0; k < extra; ++k) b.push_back(uint8_t(rng()));
        break;
      }
      case 5:  // random byte anywhere
        if (!b.empty()) b[pick(b.size())] = uint8_t(rng());
        break;
      case 6: {  // duplicate or drop a slice
        if (b.size() < 2) break;
        const size_t from = pick(b.size()), len = 1 + pick(std::min<size_t>(b.size() - from, 32));
        if (rng() % 2)
          b.insert(b.begin() + long(from), b.begin() + long(from), b.begin() + long(from + len));
        else
          b.erase(b.begin() + long(from), b.begin() + long(from + len));
        break;
      }
    }
  }
  return b;
}

void check_idx(const Bytes& b, Tally& t) {
  try {
    const IdxArray a = parse_idx(b, "fuzz.idx", size_t(1) << 20);
    size_t total = 1;
    for (int64_t d : a.dims) total *= size_t(d);
    REQUIRE(a.values.size() == total);
    if (a.dims.size() == 3) {  // images: pair them with labels of the same count
      const Bytes labels = testdata::idx({uint32_t(a.dims[0])}, Bytes(size_t(a.dims[0]), 1));
      const Dataset d = idx_dataset(a, parse_idx(labels, "l"), 10, "fuzz");
      REQUIRE(d.images.numel() == int64_t(total));
    }
    ++t.ok;
  } catch (const Error&) {
    ++t.errors;
  }
}

void check_cifar(const Bytes& b, CifarKind kind, Tally& t) {
  try {
    const Dataset d = parse_cifar(b, "fuzz.bin", kind);
    d.validate();  // labels in range, shapes consistent
    ++t.ok;
  } catch (const Error&) {
    ++t.errors;
  }
}

}  // namespace

TEST_CASE("fuzz: mutated IDX and CIFAR inputs give a result or a flatmin::Error, nothing else") {
  std::mt19937_64 rng(20261127);
  Bytes pixels(3 * 4 * 5);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = uint8_t(i * 17);
  const Bytes images = testdata::idx({3, 4, 5}, pixels);
  const Bytes labels = testdata::idx({3}, {1, 2, 9});
  const Bytes images_gz = testdata::gzip(images), labels_gz = testdata::gzip(labels);
  const Bytes c10 = testdata::cifar({{3}, {9}});
  const Bytes c100 = testdata::cifar({{19, 99}});

  Tally idx_plain, idx_gz, idx_regz, cifar10, cifar100;
  for (int i = 0; i < 40000; ++i) check_idx(mutate(i % 2 ? images : labels, rng, 16), idx_plain);
  for (int i = 0; i < 30000; ++i) check_idx(mutate(i % 2 ? images_gz : labels_gz, rng, 24), idx_gz);
  // content mutated, then compressed: reaches the IDX checks through the gzip path
  for (int i = 0; i < 15000; ++i) check_idx(testdata::gzip(mutate(i % 2 ? images : labels, rng, 16)), idx_regz);
  for (int i = 0; i < 10000; ++i) check_cifar(mutate(c10, rng, 1), CifarKind::cifar10, cifar10);
  for (int i = 0; i < 5000; ++i)
    check_cifar(mutate(c100, rng, 2), i % 2 ? CifarKind::cifar100_fine : CifarKind::cifar100_coarse, cifar100);

  int64_t total = 0;
  for (const Tally* t : {&idx_plain, &idx_gz, &idx_regz, &cifar10, &cifar100}) {
    total += t->ok + t->errors;
    // both outcomes must occur, or the mutations are not exercising the reader
    CHECK(t->ok > 0);
    CHECK(t->errors > 0);
  }
  CHECK(total >= 100000);
  MESSAGE("fuzz: idx plain ok/err " << idx_plain.ok << "/" << idx_plain.errors << ", idx gzip " << idx_gz.ok << "/"
                                    << idx_gz.errors << ", idx re-gzip " << idx_regz.ok << "/" << idx_regz.errors
                                    << ", cifar10 " << cifar10.ok << "/" << cifar10.errors << ", cifar100 "
                                    << cifar100.ok << "/" << cifar100.errors);
}
