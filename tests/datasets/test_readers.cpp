// IDX and CIFAR readers on small files built byte by byte here; expected values are known
// by construction (pixel byte v becomes v/255).
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data_util.hpp"
#include "datasets/readers.hpp"

using namespace flatmin;
using namespace flatmin::data;
using testdata::Bytes;

namespace {
// 2 images of 2x3 and their labels.
const Bytes kPixels = {0, 51, 102, 153, 204, 255, 1, 2, 3, 4, 5, 6};
Bytes images_file() { return testdata::idx({2, 2, 3}, kPixels); }
Bytes labels_file(uint8_t a = 7, uint8_t b = 3) { return testdata::idx({2}, {a, b}); }

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST_CASE("idx: plain arrays parse to their header's dims and bytes") {
  const IdxArray a = parse_idx(images_file(), "img");
  CHECK(a.dims == std::vector<int64_t>{2, 2, 3});
  CHECK(a.values == kPixels);
  const IdxArray l = parse_idx(labels_file(), "lab");
  CHECK(l.dims == std::vector<int64_t>{2});
  CHECK(l.values == Bytes{7, 3});
}

TEST_CASE("idx: gzip is detected by its magic and gives the same array; members concatenate") {
  const Bytes gz = testdata::gzip(images_file());
  CHECK(is_gzip(gz));
  CHECK_FALSE(is_gzip(images_file()));
  const IdxArray a = parse_idx(gz, "img.gz");
  CHECK(a.dims == std::vector<int64_t>{2, 2, 3});
  CHECK(a.values == kPixels);
  // The same file split into two gzip members.
  const Bytes whole = images_file();
  Bytes two = testdata::gzip(Bytes(whole.begin(), whole.begin() + 10));
  const Bytes rest = testdata::gzip(Bytes(whole.begin() + 10, whole.end()));
  two.insert(two.end(), rest.begin(), rest.end());
  CHECK(parse_idx(two, "two").values == kPixels);
}

TEST_CASE("idx: images and labels make a dataset with values byte/255") {
  const Dataset d = idx_dataset(parse_idx(images_file(), "i"), parse_idx(labels_file(), "l"), 10, "tiny");
  CHECK(d.images.shape() == Shape{2, 1, 2, 3});
  CHECK(d.labels.to_int_vector() == std::vector<int64_t>{7, 3});
  const float* p = d.images.data<float>();
  CHECK(p[0] == 0.0f);
  CHECK(p[1] == doctest::Approx(0.2));
  CHECK(p[5] == 1.0f);
  CHECK(p[11] == doctest::Approx(6.0 / 255.0));
  CHECK(d.classes == 10);
}

TEST_CASE("idx: bad inputs are named errors") {
  Bytes bad_magic = images_file();
  bad_magic[2] = 0x0d;  // int32 type: not supported
  CHECK(error_of([&] { parse_idx(bad_magic, "f.idx"); }).find("f.idx: bad IDX magic number 0x00000d03") == 0);
  Bytes truncated = images_file();
  truncated.pop_back();
  CHECK(error_of([&] { parse_idx(truncated, "t"); }).find("truncated IDX data") != std::string::npos);
  Bytes longer = images_file();
  longer.push_back(9);
  CHECK(error_of([&] { parse_idx(longer, "x"); }).find("1 unexpected bytes after") != std::string::npos);
  CHECK(error_of([&] { parse_idx(Bytes{0, 0}, "s"); }).find("truncated IDX header") != std::string::npos);
  CHECK(error_of([&] { parse_idx(testdata::idx({0, 2, 3}, {}), "z"); }).find("dimension 0 is 0") != std::string::npos);
  const auto lab = parse_idx(labels_file(7, 10), "l");
  CHECK(error_of([&] {
          idx_dataset(parse_idx(images_file(), "i"), lab, 10, "set");
        }).find("label 10 of example 1 is outside [0, 10)") != std::string::npos);
  const auto three = parse_idx(testdata::idx({3}, {1, 2, 3}), "l3");
  CHECK(error_of([&] { idx_dataset(parse_idx(images_file(), "i"), three, 10, "set"); }).find("2 images but 3 labels") !=
        std::string::npos);
  CHECK(error_of([&] { idx_dataset(parse_idx(labels_file(), "i"), three, 10, "set"); }).find("3-d IDX array") !=
        std::string::npos);
}

TEST_CASE("idx: a header claiming 2^31 images costs no memory, plain or gzip") {
  const Bytes huge = testdata::idx({0x80000000u, 28, 28}, Bytes(100, 1));
  CHECK(error_of([&] { parse_idx(huge, "h"); }).find("more than the limit") != std::string::npos);
  CHECK(error_of([&] { parse_idx(huge, "h", size_t(1) << 50); }).find("truncated IDX data") != std::string::npos);
  CHECK(error_of([&] { parse_idx(testdata::gzip(huge), "h.gz", size_t(1) << 50); }).find("truncated IDX data") !=
        std::string::npos);
}

TEST_CASE("idx: a gzip bomb stops at the size the header implies") {
  // Header for 2 images of 2x2 (8 bytes), followed by 16 MiB of zeros: decompression must
  // stop one byte past the 8 bytes, long before the 16 MiB.
  Bytes bomb = testdata::idx({2, 2, 2}, Bytes(size_t(16) << 20, 0));
  const Bytes gz = testdata::gzip(bomb);
  CHECK(gz.size() < 50000);
  CHECK(error_of([&] { parse_idx(gz, "bomb.gz"); }).find("unexpected bytes after the IDX data") != std::string::npos);
  // gunzip on its own honours its limit.
  CHECK(error_of([&] { gunzip(gz, "bomb.gz", 1000); }).find("more than the limit of 1000 bytes") != std::string::npos);
  CHECK(gunzip(testdata::gzip(images_file()), "ok").size() == images_file().size());
}

TEST_CASE("gzip: corrupt, truncated and trailing data are named errors") {
  Bytes gz = testdata::gzip(images_file());
  Bytes cut(gz.begin(), gz.end() - 5);
  CHECK(error_of([&] { parse_idx(cut, "c.gz"); }).find("c.gz: truncated gzip data") == 0);
  Bytes crc = gz;
  crc[crc.size() - 6] ^= 0xff;  // CRC32 of the member
  CHECK(error_of([&] { parse_idx(crc, "crc.gz"); }).find("corrupt gzip data") != std::string::npos);
  Bytes trailing = gz;
  trailing.push_back(0);
  CHECK(error_of([&] { parse_idx(trailing, "t.gz"); }).find("trailing garbage") != std::string::npos);
}

TEST_CASE("cifar-10: records map to labels and (3,32,32) images in channel-major order") {
  const Bytes b = testdata::cifar({{3}, {9}, {0}});
  const Dataset d = parse_cifar(b, "batch", CifarKind::cifar10);
  CHECK(d.images.shape() == Shape{3, 3, 32, 32});
  CHECK(d.labels.to_int_vector() == std::vector<int64_t>{3, 9, 0});
  CHECK(d.classes == 10);
  const float* p = d.images.data<float>();
  for (int i : {0, 2})
    for (int c : {0, 1, 2})
      for (auto [y, x] : {std::pair{0, 0}, {5, 31}, {31, 7}})
        CHECK(p[((i * 3 + c) * 32 + y) * 32 + x] == float(testdata::cifar_pixel(i, c, y, x)) / 255.0f);
  CHECK(parse_cifar(b, "batch", CifarKind::cifar10, 3).size() == 3);
}

TEST_CASE("cifar-100: fine and coarse labels") {
  const Bytes b = testdata::cifar({{19, 99}, {0, 5}});
  const Dataset fine = parse_cifar(b, "train.bin", CifarKind::cifar100_fine);
  CHECK(fine.labels.to_int_vector() == std::vector<int64_t>{99, 5});
  CHECK(fine.classes == 100);
  const Dataset coarse = parse_cifar(b, "train.bin", CifarKind::cifar100_coarse);
  CHECK(coarse.labels.to_int_vector() == std::vector<int64_t>{19, 0});
  CHECK(coarse.classes == 20);
  CHECK(coarse.images.data<float>()[3072 + 1] == float(testdata::cifar_pixel(1, 0, 0, 1)) / 255.0f);
}

TEST_CASE("cifar: bad inputs are named errors") {
  Bytes b = testdata::cifar({{3}, {4}});
  CHECK(error_of([&] {
          parse_cifar(Bytes(b.begin(), b.end() - 1), "b1", CifarKind::cifar10);
        }).find("b1: size 6145 bytes is not a multiple of the CIFAR-10 record size 3073") == 0);
  CHECK(error_of([&] { parse_cifar(Bytes{}, "e", CifarKind::cifar10); }).find("empty") != std::string::npos);
  CHECK(error_of([&] {
          parse_cifar(testdata::cifar({{1}, {10}}), "l", CifarKind::cifar10);
        }).find("label 10 of record 1 is outside [0, 10)") != std::string::npos);
  CHECK(error_of([&] {
          parse_cifar(testdata::cifar({{20, 1}}), "c", CifarKind::cifar100_fine);
        }).find("coarse label 20 of record 0") != std::string::npos);
  CHECK(error_of([&] {
          parse_cifar(testdata::cifar({{2, 100}}), "f", CifarKind::cifar100_coarse);
        }).find("label 100 of record 0 is outside [0, 100)") != std::string::npos);
  CHECK(error_of([&] { parse_cifar(b, "n", CifarKind::cifar10, 10000); }).find("2 records, expected 10000") !=
        std::string::npos);
  // A CIFAR-10 file read as CIFAR-100 has the wrong record size.
  CHECK(error_of([&] { parse_cifar(b, "w", CifarKind::cifar100_fine); }).find("record size 3074") != std::string::npos);
}

TEST_CASE("cifar: gzip files stream to the same records, and their counts are checked") {
  const Bytes b = testdata::cifar({{3}, {9}, {0}});
  const Bytes gz = testdata::gzip(b);
  const Dataset plain = parse_cifar(b, "p", CifarKind::cifar10);
  for (int64_t records : {0, 3}) {
    const Dataset z = parse_cifar(gz, "z", CifarKind::cifar10, records);
    CHECK(z.labels.to_int_vector() == plain.labels.to_int_vector());
    CHECK(z.images.to_vector() == plain.images.to_vector());
  }
  CHECK(error_of([&] {
          parse_cifar(gz, "z", CifarKind::cifar10, 4);
        }).find("z: truncated CIFAR-10 record 3 of the 4 expected: expected 3073 bytes, found 0") == 0);
  CHECK(error_of([&] {
          parse_cifar(gz, "z", CifarKind::cifar10, 2);
        }).find("z: at least 64 unexpected bytes after the 2 records expected") == 0);
  CHECK(error_of([&] {
          parse_cifar(testdata::gzip(Bytes(b.begin(), b.end() - 5)), "z", CifarKind::cifar10);
        }).find("z: size 9214 bytes is not a multiple of the CIFAR-10 record size 3073") == 0);
  CHECK(error_of([&] {
          parse_cifar(b, "z", CifarKind::cifar10, 10001);
        }).find("expected record count 10001 is outside [0, 10000]") != std::string::npos);
}

// A gzip bomb (512 MiB of zeros: all-zero records with valid labels, in half a megabyte) is
// refused after inflating at most the records a file may hold, into a 64 KiB buffer: the
// peak resident memory it adds stays far below what inflating it would take. Measured in a
// child process (fork), whose peak (getrusage) starts at its size when forked, so that the
// rest of the suite's allocations do not hide it.
TEST_CASE("cifar: a gzip bomb is refused with bounded memory") {
  const Bytes member = testdata::gzip(Bytes(size_t(1) << 20, 0));
  Bytes bomb;
  for (int i = 0; i < 512; ++i) bomb.insert(bomb.end(), member.begin(), member.end());
  CHECK(bomb.size() < (size_t(1) << 20));
  struct Case {
    CifarKind kind;
    int64_t records;
    const char* message;
  };
  const Case cases[] = {
      {CifarKind::cifar10, 0, "decompresses to more than the 10000 records (30730000 bytes) a CIFAR-10 file holds"},
      {CifarKind::cifar100_fine, 0,
       "decompresses to more than the 50000 records (153700000 bytes) a CIFAR-100 file holds"},
      {CifarKind::cifar10, 10, "at least 64 unexpected bytes after the 10 records expected"},
  };
  for (const Case& c : cases) {
    const std::string message = c.message;
    CAPTURE(message);
    CHECK(error_of([&] { parse_cifar(bomb, "bomb.gz", c.kind, c.records); }).find(c.message) != std::string::npos);
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {  // the child: no doctest here; the peak's growth in KiB through the pipe
      close(fds[0]);
      alarm(120);
      rusage before{}, after{};
      getrusage(RUSAGE_SELF, &before);
      long grew = -1;
      try {
        parse_cifar(bomb, "bomb.gz", c.kind, c.records);
      } catch (const Error&) {
        getrusage(RUSAGE_SELF, &after);
        grew = after.ru_maxrss - before.ru_maxrss;
      }
      (void)!write(fds[1], &grew, sizeof grew);
      _exit(0);
    }
    close(fds[1]);
    long grew_kib = -2;
    const bool got = read(fds[0], &grew_kib, sizeof grew_kib) == ssize_t(sizeof grew_kib);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    REQUIRE(got);
    CHECK(grew_kib >= 0);         // the child saw the Error
    CHECK(grew_kib < 64 * 1024);  // under 64 MiB; inflating the bomb would take 512 MiB
    MESSAGE("peak resident memory grew by " << grew_kib << " KiB refusing the bomb (" << message << ")");
  }
}

TEST_CASE("cifar-10 and cifar-100 folders") {
  testdata::TempDir tmp("cifar");
  const auto dir10 = tmp.path / "cifar-10-batches-bin";
  for (int k = 1; k <= 5; ++k)
    testdata::write(dir10 / ("data_batch_" + std::to_string(k) + ".bin"),
                    testdata::cifar({{uint8_t(k)}, {uint8_t(k + 4)}}, 2 * (k - 1)));
  testdata::write(dir10 / "test_batch.bin", testdata::cifar({{6}}, 100));
  // the folder itself, or its parent
  const Dataset train = load_cifar10(tmp.path.string(), Split::train, {.check_counts = false});
  CHECK(train.size() == 10);
  CHECK(train.labels.to_int_vector() == std::vector<int64_t>{1, 5, 2, 6, 3, 7, 4, 8, 5, 9});
  const float* p = train.images.data<float>();
  CHECK(p[9 * 3072 + 2 * 1024 + 40] == float(testdata::cifar_pixel(9, 2, 1, 8)) / 255.0f);
  const Dataset test = load_cifar10(dir10.string(), Split::test, {.check_counts = false});
  CHECK(test.labels.to_int_vector() == std::vector<int64_t>{6});
  CHECK(test.images.data<float>()[0] == float(testdata::cifar_pixel(100, 0, 0, 0)) / 255.0f);
  CHECK(error_of([&] {
          load_cifar10(tmp.path.string(), Split::train);
        }).find("data_batch_1.bin: 2 records, expected 10000") != std::string::npos);
  std::filesystem::remove(dir10 / "data_batch_4.bin");
  CHECK(error_of([&] {
          load_cifar10(tmp.path.string(), Split::train, {.check_counts = false});
        }).find("data_batch_4.bin: no such file") != std::string::npos);
  CHECK(error_of([&] { load_cifar10((tmp.path / "nowhere").string(), Split::train); }).find("holds neither") !=
        std::string::npos);

  const auto dir100 = tmp.path / "cifar-100-binary";
  testdata::write(dir100 / "train.bin", testdata::cifar({{1, 11}, {2, 22}, {3, 33}}));
  testdata::write(dir100 / "test.bin", testdata::cifar({{4, 44}}));
  CHECK(load_cifar100(tmp.path.string(), Split::train, {.check_counts = false}).labels.to_int_vector() ==
        std::vector<int64_t>{11, 22, 33});
  CHECK(
      load_cifar100(tmp.path.string(), Split::train, {.coarse = true, .check_counts = false}).labels.to_int_vector() ==
      std::vector<int64_t>{1, 2, 3});
  CHECK(load_cifar100(dir100.string(), Split::test, {.check_counts = false}).labels.to_int_vector() ==
        std::vector<int64_t>{44});
  CHECK(error_of([&] { load_cifar100(tmp.path.string(), Split::test); }).find("1 records, expected 10000") !=
        std::string::npos);
}

TEST_CASE("mnist layout: plain and gzip files, and the Fashion-MNIST hint") {
  testdata::TempDir tmp("mnist");
  testdata::write(tmp.path / "train-images-idx3-ubyte.gz", testdata::gzip(images_file()));
  testdata::write(tmp.path / "train-labels-idx1-ubyte", labels_file());
  testdata::write(tmp.path / "t10k-images-idx3-ubyte", testdata::idx({1, 2, 3}, Bytes(6, 255)));
  testdata::write(tmp.path / "t10k-labels-idx1-ubyte.gz", testdata::gzip(testdata::idx({1}, {4})));
  const Dataset train = load_mnist_layout(tmp.path.string(), true, "mini");
  CHECK(train.name == "mini-train");
  CHECK(train.labels.to_int_vector() == std::vector<int64_t>{7, 3});
  CHECK(train.images.data<float>()[2] == doctest::Approx(0.4));
  const Dataset test = load_fashion_mnist(false, tmp.path.string());
  CHECK(test.images.shape() == Shape{1, 1, 2, 3});
  CHECK(test.images.data<float>()[5] == 1.0f);
  CHECK(test.labels.to_int_vector() == std::vector<int64_t>{4});
  const std::string msg = error_of([&] { load_fashion_mnist(true, (tmp.path / "none").string()); });
  CHECK(msg.find("apt-get install dataset-fashion-mnist") != std::string::npos);
  CHECK(error_of([&] { read_file((tmp.path / "missing.bin").string()); }).find("missing.bin: no such file") !=
        std::string::npos);
  testdata::write(tmp.path / "t10k-labels-idx1-ubyte.gz", testdata::gzip(testdata::idx({1}, {12})));
  CHECK(error_of([&] {
          load_mnist_layout(tmp.path.string(), false, "mini");
        }).find("t10k-labels-idx1-ubyte.gz: mini-test: label 12 of example 0 is outside [0, 10)") != std::string::npos);
  std::filesystem::remove(tmp.path / "t10k-labels-idx1-ubyte.gz");
  CHECK(error_of([&] { load_mnist_layout(tmp.path.string(), false, "mini"); }).find("no t10k-labels-idx1-ubyte") !=
        std::string::npos);
}

TEST_CASE("mnist layout: the labels are bounded by the images' header before any image data is inflated") {
  testdata::TempDir tmp("mnist_bomb");
  // 16 MiB of zero images behind a consistent header: about 16 KiB of gzip.
  const uint32_t n = 4096;
  Bytes zeros = testdata::idx({n, 64, 64}, Bytes(size_t(n) * 64 * 64, 0));
  testdata::write(tmp.path / "train-images-idx3-ubyte.gz", testdata::gzip(zeros));
  // labels that claim one example more than the images: refused by the header, not after
  // inflating and converting 16 MiB
  testdata::write(tmp.path / "train-labels-idx1-ubyte.gz", testdata::gzip(testdata::idx({n + 1}, Bytes(n + 1, 1))));
  const std::string msg = error_of([&] { load_mnist_layout(tmp.path.string(), true, "bomb"); });
  CHECK(msg.find("claims more than the limit of 4096 bytes") != std::string::npos);
  CHECK(msg.find("(the images file holds 4096 images)") != std::string::npos);
  // a labels file with fewer entries than images
  testdata::write(tmp.path / "train-labels-idx1-ubyte.gz", testdata::gzip(testdata::idx({n - 1}, Bytes(n - 1, 1))));
  CHECK(error_of([&] { load_mnist_layout(tmp.path.string(), true, "bomb"); }).find("4096 images but 4095 labels") !=
        std::string::npos);
  // consistent files load, streamed into the float tensor
  testdata::write(tmp.path / "train-labels-idx1-ubyte.gz", testdata::gzip(testdata::idx({n}, Bytes(n, 1))));
  const Dataset d = load_mnist_layout(tmp.path.string(), true, "bomb");
  CHECK(d.images.shape() == Shape{4096, 1, 64, 64});
  CHECK(d.images.to_vector()[12345] == 0.0);
  // the image data ends early, or goes on past what the header describes
  Bytes short_file = zeros;
  short_file.resize(short_file.size() - 1);
  testdata::write(tmp.path / "train-images-idx3-ubyte.gz", testdata::gzip(short_file));
  CHECK(error_of([&] { load_mnist_layout(tmp.path.string(), true, "bomb"); }).find("truncated IDX data") !=
        std::string::npos);
  Bytes long_file = zeros;
  long_file.push_back(0);
  testdata::write(tmp.path / "train-images-idx3-ubyte.gz", testdata::gzip(long_file));
  CHECK(error_of([&] { load_mnist_layout(tmp.path.string(), true, "bomb"); }).find("unexpected bytes after") !=
        std::string::npos);
}
