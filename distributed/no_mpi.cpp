// Built without MPI (meson -Dmpi=disabled, or libopenmpi-dev not found).
#include "distributed/backends.hpp"

namespace flatmin::distributed {

bool built_with_mpi() { return false; }
std::unique_ptr<World> make_mpi_world(int*, char***) {
  throw Error("flatmin was built without MPI (install libopenmpi-dev and rebuild with -Dmpi=enabled)");
}
void finalize_mpi() {}

}  // namespace flatmin::distributed
