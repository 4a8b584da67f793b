// safetensors: round trips, hand-made files, every kind of malformed header, and a seeded
// mutation fuzz test that must only ever produce flatmin::Error.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "autodiff/autodiff.hpp"
#include "nn/safetensors.hpp"

using namespace flatmin;
using nn::parse_safetensors;

namespace {
// A file made by hand: 8-byte header length, the header text, then the data bytes.
std::string make_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}
std::string doubles(std::initializer_list<double> v) {
  std::string s(v.size() * 8, '\0');
  std::memcpy(s.data(), std::data(v), s.size());
  return s;
}
// parse must fail with an Error whose message names the source and contains `what`.
void expect_error(const std::string& bytes, const std::string& what) {
  try {
    parse_safetensors(bytes, "bad.safetensors");
    FAIL("no error for a file that should fail with '" << what << "'");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("bad.safetensors") != std::string::npos);
    CHECK(msg.find(what) != std::string::npos);
  }
}
}  // namespace

TEST_CASE("safetensors: a hand-made file parses to the values written") {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"I64","shape":[2],"data_offsets":[16,32]},)"
      R"("a":{"dtype":"F64","shape":[2,1],"data_offsets":[0,16]}})";
  std::string data = doubles({1.5, -2.25});
  int64_t ints[2] = {7, -3};
  data.append(reinterpret_cast<const char*>(ints), 16);
  auto st = parse_safetensors(make_file(header, data));
  REQUIRE(st.tensors.size() == 2);
  CHECK(st.tensors[0].first == "a");  // data order
  CHECK(st.at("a").shape() == Shape{2, 1});
  CHECK(st.at("a").dtype() == DType::f64);
  CHECK(st.at("a").to_vector() == std::vector<double>{1.5, -2.25});
  CHECK(st.at("b").to_int_vector() == std::vector<int64_t>{7, -3});
  CHECK(st.metadata.at("format") == "pt");
  CHECK_THROWS_AS(st.at("c"), Error);
}

TEST_CASE("safetensors: F16 and BF16 are read as float32") {
  // f16: 1.0 = 0x3c00, -2.0 = 0xc000, 2^-24 = 0x0001 (subnormal), inf = 0x7c00; bf16: 1.0 = 0x3f80, -0.5 = 0xbf00.
  const uint16_t h[4] = {0x3c00, 0xc000, 0x0001, 0x7c00}, b[2] = {0x3f80, 0xbf00};
  std::string data(reinterpret_cast<const char*>(h), 8);
  data.append(reinterpret_cast<const char*>(b), 4);
  auto st = parse_safetensors(make_file(R"({"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},)"
                                        R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]}})",
                                        data));
  auto hv = st.at("h").to_vector();
  CHECK(st.at("h").dtype() == DType::f32);
  CHECK(hv[0] == 1.0);
  CHECK(hv[1] == -2.0);
  CHECK(hv[2] == std::ldexp(1.0, -24));
  CHECK(std::isinf(hv[3]));
  CHECK(st.at("b").to_vector() == std::vector<double>{1.0, -0.5});
}

TEST_CASE("safetensors: round trip of f32, f64, i64, scalars and empty tensors, through a file") {
  nn::NamedTensors t = {{"w", from_vector(std::vector<float>{1.f, 2.5f, -3.f, 4.f, 5.f, 6.f}, {2, 3})},
                        {"loss", scalar(0.125, {DType::f64})},
                        {"empty", zeros({0, 4}, {DType::f64})},
                        {"labels", from_ints({3, 1, 4}, {3})}};
  const std::string path = (std::filesystem::temp_directory_path() / "flatmin_test_roundtrip.safetensors").string();
  nn::save_safetensors(path, t, {{"note", "x"}});
  CHECK(!std::filesystem::exists(path + ".tmp"));
  auto back = nn::load_safetensors(path);
  std::filesystem::remove(path);
  REQUIRE(back.tensors.size() == t.size());
  for (auto& [name, tensor] : t) {
    const Tensor& b = back.at(name);
    CHECK(b.dtype() == tensor.dtype());
    CHECK(b.shape() == tensor.shape());
    CHECK(b.to_vector() == tensor.to_vector());
  }
  CHECK(back.metadata.at("note") == "x");
  CHECK_THROWS_AS(nn::load_safetensors(path), Error);  // gone
}

TEST_CASE("safetensors: malformed files fail with an Error naming the file and the problem") {
  const std::string ok_header = R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})";
  const std::string data = doubles({1, 2});
  CHECK_NOTHROW(parse_safetensors(make_file(ok_header, data)));

  expect_error("", "truncated");
  expect_error(std::string("\x05\0\0", 3), "truncated");
  {  // header length far beyond the file, and just beyond it
    std::string f = make_file(ok_header, data);
    uint64_t huge = ~uint64_t(0);
    std::memcpy(f.data(), &huge, 8);
    expect_error(f, "header length");
    uint64_t over = f.size() - 7;
    std::memcpy(f.data(), &over, 8);
    expect_error(f, "header length");
  }
  expect_error(make_file(ok_header, data).substr(0, 8 + ok_header.size() + 9),
               "outside the data buffer");  // truncated data
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]})", data), "not valid JSON");
  expect_error(make_file(R"([1,2])", ""), "not a JSON object");
  expect_error(make_file(R"({"a":{"dtype":"Q8","shape":[2],"data_offsets":[0,16]}})", data), "unsupported dtype 'Q8'");
  expect_error(make_file(R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,16]}})", data), "dtype");
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[-2],"data_offsets":[0,16]}})", data), "non-negative integer");
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[2.5],"data_offsets":[0,16]}})", data), "non-negative integer");
  expect_error(make_file(R"({"a":{"dtype":"F64","data_offsets":[0,16]}})", data), "shape");
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[3],"data_offsets":[0,16]}})", data), "needs 24 bytes");
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[4611686018427387904,4],"data_offsets":[0,16]}})", data),
               "overflows");
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[8,24]}})", data),
               "outside the data buffer");
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[16,0]}})", data),
               "outside the data buffer");
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0]}})", data), "data_offsets");
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", data), "cover 8 of the 16");
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}})", data), "gap");
  expect_error(make_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
                         R"("b":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}})",
                         data),
               "overlapping");
  expect_error(make_file(R"({"__metadata__":{"k":3}})", ""), "__metadata__");
  expect_error(make_file(R"({"a":[1,2]})", data), "not an object");
  // deeply nested JSON must not exhaust the stack (parsing or destroying it)
  expect_error(make_file(std::string(200000, '[') + std::string(200000, ']'), ""), "not a JSON object");
  expect_error(make_file(R"({"a":)" + std::string(200000, '['), ""), "not valid JSON");
}

TEST_CASE("safetensors: 100,000 seeded mutations of a valid file never crash") {
  // Mutations: byte flips (mostly in the header, where the parser decides), truncation,
  // random header lengths, inserted and deleted bytes, and digit edits in the JSON numbers.
  nn::NamedTensors t = {{"conv.weight", from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {1, 2, 3})},
                        {"bn.num_batches_tracked", from_ints({5}, {})},
                        {"fc.bias", from_vector(std::vector<float>{0.5f, -1.f}, {2})}};
  const std::string valid = nn::serialize_safetensors(t, {{"format", "pt"}});
  uint64_t header_len;
  std::memcpy(&header_len, valid.data(), 8);
  Generator g(2024);
  int parsed = 0, rejected = 0;
  const int trials = 100000;
  for (int trial = 0; trial < trials; ++trial) {
    std::string f = valid;
    const int edits = 1 + int(g.randint(4));
    for (int e = 0; e < edits; ++e) {
      const size_t limit = std::max<size_t>(f.size(), 1);
      const size_t in_header = 8 + size_t(g.randint(int64_t(std::max<uint64_t>(header_len, 1))));
      const size_t pos = g.randint(4) == 0 ? size_t(g.randint(int64_t(limit))) : std::min(in_header, limit - 1);
      switch (g.randint(7)) {
        case 0:
          if (!f.empty()) f[pos] = char(g.randint(256));
          break;
        case 1:
          if (!f.empty()) f[pos] = "0123456789[]{},:\"-.eE"[g.randint(21)];
          break;
        case 2: f.resize(size_t(g.randint(int64_t(f.size() + 1)))); break;
        case 3:
          if (f.size() >= 8) {
            uint64_t n = g.randint(4) == 0 ? uint64_t(g.randint(1 << 30)) * 4096 : header_len + g.randint(17) - 8;
            std::memcpy(f.data(), &n, 8);
          }
          break;
        case 4: f.insert(std::min(pos, f.size()), 1, char(g.randint(256))); break;
        case 5:
          if (!f.empty()) f.erase(std::min(pos, f.size() - 1), 1);
          break;
        case 6:
          if (!f.empty()) f[pos] ^= char(1 << g.randint(8));
          break;
      }
    }
    try {
      auto st = parse_safetensors(f, "fuzz");
      int64_t bytes = 0;
      for (auto& [name, tensor] : st.tensors) bytes += tensor.numel() * int64_t(dtype_size(tensor.dtype()));
      if (bytes > int64_t(f.size())) FAIL("parsed tensors hold more bytes than the file: trial " << trial);
      ++parsed;
    } catch (const Error&) {
      ++rejected;
    }
  }
  MESSAGE("fuzz: " << parsed << " mutated files parsed, " << rejected << " rejected with flatmin::Error");
  CHECK(parsed > 0);  // some mutations (e.g. of data bytes) leave a valid file
  CHECK(rejected > trials / 2);
}
