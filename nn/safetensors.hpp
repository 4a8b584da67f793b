// safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__": {string: string}}, then the raw little-endian data, every byte of it
// owned by exactly one tensor. Reading checks all of that and fails with an Error naming
// the file and the problem; it never reads outside the bytes it was given.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "nn/module.hpp"

namespace flatmin::nn {

struct SafeTensors {
  NamedTensors tensors;  // in the order of their data in the file
  std::map<std::string, std::string> metadata;
  const Tensor& at(const std::string& name) const;  // Error naming the key if absent
  bool contains(const std::string& name) const;
};

// Dtypes: F32, F64 and I64 read and write; F16 and BF16 are read (converted to float32).
SafeTensors parse_safetensors(std::string_view bytes, const std::string& source = "<memory>");
std::string serialize_safetensors(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata = {});

SafeTensors load_safetensors(const std::string& path);
// Atomic: writes path.tmp, fsyncs, renames over path.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A module's state dict (parameters and buffers) to and from a file.
void save_safetensors(const Module& m, const std::string& path);
void load_safetensors(Module& m, const std::string& path);

// Writes bytes to path atomically (temp file in the same folder, fsync, rename).
void write_file_atomic(const std::string& path, std::string_view bytes);
// Called before any work for every output flag of a command: Error naming `flag` and the
// reason unless a file can be created next to `path` (its folder exists and is writable),
// `path` is not a folder, and an existing `path` is writable. An empty path passes.
void check_output_path(const std::string& flag, const std::string& path);

}  // namespace flatmin::nn
