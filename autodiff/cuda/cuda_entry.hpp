// The seam between the device-independent core and the CUDA backend. Implemented by
// cuda_backend.cu when the toolkit is found at build time, by cuda_stub.cpp otherwise.
#pragma once
#include <string>

#include "autodiff/backend.hpp"

namespace flatmin::cuda {
bool compiled();
int device_count(std::string* why);         // 0 without a usable GPU; never throws
Backend* get(int index, std::string* why);  // nullptr (and a reason) when unusable

// Which library runs CUDA convolutions (conv_engine.cpp; FLATMIN_CUDA_CONV). Where flatmin
// was built with cuDNN: auto (the default) runs every forward and the 3x3 stride-1 layers'
// gradients on cuDNN (its Winograd algorithm first) and the other gradients on flatmin's own
// kernels, the split measured fastest on an H200 (docs/cuda.md); cudnn runs everything on cuDNN's
// heuristic choice; cudnn-benchmark times cuDNN's candidates on each shape's first call
// (PyTorch's cudnn.benchmark: the choice may differ between processes). native: flatmin's
// own kernels, the only choice without cuDNN; any other is then a named error.
enum class ConvEngine { native, cudnn, cudnn_benchmark, automatic };
bool cudnn_compiled();
ConvEngine conv_engine();          // the current choice (from FLATMIN_CUDA_CONV at first use)
void set_conv_engine(ConvEngine);  // for tests and benchmarks; process-wide
}  // namespace flatmin::cuda
