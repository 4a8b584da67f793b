#include "nn/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace flatmin::nn {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {
using Json = nlohmann::ordered_json;
constexpr uint64_t max_header_bytes = 100'000'000;  // the reference implementation's limit

enum class FileDType { f32, f64, i64, f16, bf16 };
struct DTypeInfo {
  const char* name;
  FileDType file;
  size_t bytes;
};
constexpr DTypeInfo file_dtypes[] = {{"F32", FileDType::f32, 4},
                                     {"F64", FileDType::f64, 8},
                                     {"I64", FileDType::i64, 8},
                                     {"F16", FileDType::f16, 2},
                                     {"BF16", FileDType::bf16, 2}};

const char* file_dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::i64: return "I64";
  }
  return "?";
}

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  int exponent = (h >> 10) & 0x1f;
  uint32_t mantissa = h & 0x3ff;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf / nan
  } else if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;  // ±0
    } else {        // subnormal: normalise
      exponent = 1;
      while (!(mantissa & 0x400)) {
        mantissa <<= 1;
        --exponent;
      }
      mantissa &= 0x3ff;
      bits = sign | uint32_t(exponent + 127 - 15) << 23 | (mantissa << 13);
    }
  } else {
    bits = sign | uint32_t(exponent + 127 - 15) << 23 | (mantissa << 13);
  }
  return std::bit_cast<float>(bits);
}

struct Entry {
  std::string name;
  DTypeInfo dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

[[noreturn]] void fail(const std::string& source, const std::string& what) {
  throw Error("safetensors " + source + ": " + what);
}

uint64_t as_u64(const Json& j, const std::string& source, const std::string& what) {
  if (!j.is_number_unsigned()) fail(source, what + " is not a non-negative integer: " + j.dump());
  return j.get<uint64_t>();
}

Entry parse_entry(const std::string& name, const Json& j, uint64_t data_bytes, const std::string& source) {
  const std::string where = "tensor '" + name + "'";
  if (!j.is_object()) fail(source, where + ": entry is not an object");
  Entry e{name, {}, {}, 0, 0};
  auto dt = j.find("dtype");
  if (dt == j.end() || !dt->is_string()) fail(source, where + ": missing or non-string dtype");
  const std::string dname = dt->get<std::string>();
  auto info = std::find_if(std::begin(file_dtypes), std::end(file_dtypes), [&](auto& d) { return dname == d.name; });
  if (info == std::end(file_dtypes))
    fail(source, where + ": unsupported dtype '" + dname + "' (F32, F64, I64, F16, BF16)");
  e.dtype = *info;
  auto sh = j.find("shape");
  if (sh == j.end() || !sh->is_array()) fail(source, where + ": missing or non-array shape");
  if (sh->size() > 16) fail(source, where + ": shape has " + std::to_string(sh->size()) + " dimensions");
  // numel·bytes must fit the data: compute with overflow checks before trusting it.
  uint64_t bytes = e.dtype.bytes;
  for (const Json& d : *sh) {
    const uint64_t n = as_u64(d, source, where + " shape entry");
    if (n > uint64_t(INT64_MAX) || __builtin_mul_overflow(bytes, n, &bytes))
      fail(source, where + ": shape " + sh->dump() + " overflows");
    e.shape.push_back(int64_t(n));
  }
  auto off = j.find("data_offsets");
  if (off == j.end() || !off->is_array() || off->size() != 2)
    fail(source, where + ": data_offsets must be [begin, end]");
  e.begin = as_u64((*off)[0], source, where + " data_offsets[0]");
  e.end = as_u64((*off)[1], source, where + " data_offsets[1]");
  if (e.begin > e.end || e.end > data_bytes)
    fail(source, where + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                     "] outside the data buffer of " + std::to_string(data_bytes) + " bytes");
  if (e.end - e.begin != bytes)
    fail(source, where + ": shape " + sh->dump() + " of " + dname + " needs " + std::to_string(bytes) +
                     " bytes, data_offsets give " + std::to_string(e.end - e.begin));
  return e;
}

Tensor decode(const Entry& e, const char* data) {
  const char* src = data + e.begin;
  const int64_t n = numel(e.shape);
  switch (e.dtype.file) {
    case FileDType::f32:
    case FileDType::f64:
    case FileDType::i64: {
      const DType t = e.dtype.file == FileDType::f32   ? DType::f32
                      : e.dtype.file == FileDType::f64 ? DType::f64
                                                       : DType::i64;
      Tensor out = empty(e.shape, {t});
      if (n > 0) std::memcpy(out.raw(), src, e.end - e.begin);
      return out;
    }
    case FileDType::f16:
    case FileDType::bf16: {
      Tensor out = empty(e.shape, {DType::f32});
      float* dst = out.data<float>();
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = e.dtype.file == FileDType::bf16 ? std::bit_cast<float>(uint32_t(h) << 16) : half_to_float(h);
      }
      return out;
    }
  }
  throw Error("safetensors: bad dtype");
}
}  // namespace

const Tensor& SafeTensors::at(const std::string& name) const {
  for (auto& [n, t] : tensors)
    if (n == name) return t;
  throw Error("safetensors: no tensor '" + name + "'");
}
bool SafeTensors::contains(const std::string& name) const {
  return std::any_of(tensors.begin(), tensors.end(), [&](auto& e) { return e.first == name; });
}

SafeTensors parse_safetensors(std::string_view bytes, const std::string& source) {
  if (bytes.size() < 8) fail(source, "truncated: " + std::to_string(bytes.size()) + " bytes, no header length");
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > max_header_bytes) fail(source, "header length " + std::to_string(header_len) + " exceeds 100 MB");
  if (header_len > bytes.size() - 8)
    fail(source, "header length " + std::to_string(header_len) + " exceeds the " + std::to_string(bytes.size() - 8) +
                     " bytes after it (truncated file?)");
  const std::string_view header = bytes.substr(8, header_len);
  const uint64_t data_bytes = bytes.size() - 8 - header_len;
  const char* data = bytes.data() + 8 + header_len;

  Json j = Json::parse(header.begin(), header.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(source, "header is not valid JSON");
  if (!j.is_object()) fail(source, "header is not a JSON object");

  SafeTensors out;
  std::vector<Entry> entries;
  for (auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail(source, "__metadata__ is not an object");
      for (auto& [k, v] : value.items()) {
        if (!v.is_string()) fail(source, "__metadata__ value of '" + k + "' is not a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(key, value, data_bytes, source));
  }
  // Every data byte belongs to exactly one tensor: sorted by offset, the ranges tile the buffer.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
  });
  uint64_t covered = 0;
  for (const Entry& e : entries) {
    if (e.begin != covered)
      fail(source, "tensor '" + e.name + "' starts at byte " + std::to_string(e.begin) + ", expected " +
                       std::to_string(covered) + (e.begin < covered ? " (overlapping tensors)" : " (gap in the data)"));
    covered = e.end;
  }
  if (covered != data_bytes)
    fail(source, "tensors cover " + std::to_string(covered) + " of the " + std::to_string(data_bytes) + " data bytes");
  for (const Entry& e : entries) out.tensors.emplace_back(e.name, decode(e, data));
  return out;
}

std::string serialize_safetensors(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> host;
  uint64_t offset = 0;
  for (auto& [name, t] : tensors) {
    if (!t.defined()) throw Error("safetensors: tensor '" + name + "' is undefined");
    if (name == "__metadata__" || header.contains(name))
      throw Error("safetensors: duplicate or reserved name '" + name + "'");
    Tensor h = t.detach().to(Device::cpu());
    const uint64_t bytes = uint64_t(h.numel()) * dtype_size(h.dtype());
    header[name] = {
        {"dtype", file_dtype_name(h.dtype())}, {"shape", h.shape()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    host.push_back(h);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned, as the reference writer does
  std::string out(8, '\0');
  const uint64_t len = text.size();
  std::memcpy(out.data(), &len, 8);
  out += text;
  out.reserve(out.size() + offset);
  for (const Tensor& h : host) out.append(static_cast<const char*>(h.raw()), size_t(h.numel()) * dtype_size(h.dtype()));
  return out;
}

SafeTensors load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("safetensors " + path + ": cannot open (" + std::strerror(errno) + ")");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error("safetensors " + path + ": read error");
  return parse_safetensors(ss.view(), path);
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw Error("cannot write " + tmp + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Error("cannot write " + tmp + ": " + why);
    }
    done += size_t(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const std::string sync_error = synced ? "" : std::strerror(errno);
  if (::close(fd) != 0 || !synced) {
    const std::string why = synced ? std::strerror(errno) : sync_error;
    ::unlink(tmp.c_str());
    throw Error("cannot flush " + tmp + ": " + why);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw Error("cannot rename " + tmp + " to " + path + ": " + why);
  }
}

void check_output_path(const std::string& flag, const std::string& path) {
  if (path.empty()) return;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) throw Error(flag + " " + path + ": is a folder, not a file");
    if (::access(path.c_str(), W_OK) != 0) throw Error(flag + " " + path + ": not writable: " + std::strerror(errno));
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw Error(flag + " " + path + ": the folder " + dir + " does not exist");
  // The writers create a temp file next to `path` and rename it: try exactly that.
  std::string probe = path + ".probe.XXXXXX";
  const int fd = ::mkstemp(probe.data());
  if (fd < 0) throw Error(flag + " " + path + ": cannot create a file in " + dir + ": " + std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, serialize_safetensors(tensors, metadata));
}

void save_safetensors(const Module& m, const std::string& path) {
  save_safetensors(path, m.state_dict(), {{"format", "pt"}});
}
void load_safetensors(Module& m, const std::string& path) { load_state_dict(m, load_safetensors(path).tensors, path); }

}  // namespace flatmin::nn
