// Writing files the way every long-running command must: to a temporary file beside the
// target, flushed and fsync'ed, then renamed over it, so a crash never leaves half a file.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace flatmin::tools {

void write_file_atomic(const std::string& path, const std::string& bytes);
void write_jsonl_atomic(const std::string& path, const std::vector<nlohmann::json>& rows);

}  // namespace flatmin::tools
