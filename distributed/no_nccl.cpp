// Built without NCCL (meson -Dnccl=disabled, no CUDA, or nccl.h / libnccl not found): CUDA
// tensors are exchanged through host memory by the MPI world.
#include "distributed/backends.hpp"

namespace flatmin::distributed {

bool built_with_nccl() { return false; }
const World& nccl_world(const World&, const Device&) {
  throw Error("flatmin was built without NCCL (rebuild with CUDA and -Dnccl=enabled)");
}

}  // namespace flatmin::distributed
