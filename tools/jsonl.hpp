// JSON-lines files for metrics, written atomically (nn::write_file_atomic: temp file, fsync,
// rename), so a crash never leaves half a file.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace flatmin::tools {

void write_jsonl_atomic(const std::string& path, const std::vector<nlohmann::json>& rows);

}  // namespace flatmin::tools
