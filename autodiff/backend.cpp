#include "autodiff/backend.hpp"

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cuda/cuda_entry.hpp"
#include "autodiff/profile.hpp"

namespace flatmin {

#define FLATMIN_KERNEL_NAME(name) #name,
const char* kernel_name(UnaryOp op) {
  static constexpr const char* names[] = {FLATMIN_UNARY_KERNELS(FLATMIN_KERNEL_NAME)};
  return names[size_t(op)];
}
const char* kernel_name(BinaryOp op) {
  static constexpr const char* names[] = {FLATMIN_BINARY_KERNELS(FLATMIN_KERNEL_NAME)};
  return names[size_t(op)];
}
const char* kernel_name(ReduceOp op) {
  static constexpr const char* names[] = {FLATMIN_REDUCE_KERNELS(FLATMIN_KERNEL_NAME)};
  return names[size_t(op)];
}
#undef FLATMIN_KERNEL_NAME

Backend& backend(Device d) {
  if (d.kind == DeviceKind::cpu) return profile::enabled() ? profile::timed(cpu::instance()) : cpu::instance();
  std::string why;
  if (Backend* b = cuda::get(d.index, &why)) return profile::enabled() ? profile::timed(*b) : *b;
  throw Error("device " + d.str() + " is not usable: " + why);
}

bool cuda_compiled() { return cuda::compiled(); }
int cuda_device_count(std::string* why) { return cuda::device_count(why); }

}  // namespace flatmin
