#include "autodiff/backend.hpp"

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cuda/cuda_entry.hpp"
#include "autodiff/profile.hpp"

namespace flatmin {

Backend& backend(Device d) {
  if (d.kind == DeviceKind::cpu) return profile::enabled() ? profile::timed(cpu::instance()) : cpu::instance();
  std::string why;
  if (Backend* b = cuda::get(d.index, &why)) return profile::enabled() ? profile::timed(*b) : *b;
  throw Error("device " + d.str() + " is not usable: " + why);
}

bool cuda_compiled() { return cuda::compiled(); }
int cuda_device_count(std::string* why) { return cuda::device_count(why); }

}  // namespace flatmin
