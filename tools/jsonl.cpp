#include "tools/jsonl.hpp"

#include "nn/safetensors.hpp"

namespace flatmin::tools {

void write_jsonl_atomic(const std::string& path, const std::vector<nlohmann::json>& rows) {
  std::string s;
  for (const auto& r : rows) s += r.dump() + "\n";
  nn::write_file_atomic(path, s);
}

}  // namespace flatmin::tools
