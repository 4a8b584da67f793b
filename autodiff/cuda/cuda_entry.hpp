// The seam between the device-independent core and the CUDA backend. Implemented by
// cuda_backend.cu when the toolkit is found at build time, by cuda_stub.cpp otherwise.
#pragma once
#include <string>

#include "autodiff/backend.hpp"

namespace flatmin::cuda {
bool compiled();
int device_count(std::string* why);         // 0 without a usable GPU; never throws
Backend* get(int index, std::string* why);  // nullptr (and a reason) when unusable

// Which library runs CUDA convolutions (conv_engine.cpp): cuDNN where flatmin was built with
// it (FLATMIN_CUDA_CONV=cudnn, the default there; cudnn-benchmark times the candidates on
// each shape's first call), else flatmin's own kernels (native, the only choice without
// cuDNN). A cuDNN choice in a build without cuDNN is a named error.
enum class ConvEngine { native, cudnn, cudnn_benchmark };
bool cudnn_compiled();
ConvEngine conv_engine();          // the current choice (from FLATMIN_CUDA_CONV at first use)
void set_conv_engine(ConvEngine);  // for tests and benchmarks; process-wide
}  // namespace flatmin::cuda
