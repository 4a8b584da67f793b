// The seam between the device-independent core and the CUDA backend. Implemented by
// cuda_backend.cu when the toolkit is found at build time, by cuda_stub.cpp otherwise.
#pragma once
#include <string>

#include "autodiff/backend.hpp"

namespace flatmin::cuda {
bool compiled();
int device_count(std::string* why);         // 0 without a usable GPU; never throws
Backend* get(int index, std::string* why);  // nullptr (and a reason) when unusable
}  // namespace flatmin::cuda
