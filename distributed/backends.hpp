// The worlds behind world.hpp, each compiled only where its library was found (meson
// options mpi and nccl); without it, the stubs in no_mpi.cpp / no_nccl.cpp say so.
#pragma once
#include <memory>

#include "distributed/world.hpp"

namespace flatmin::distributed {

// MPI_COMM_WORLD (MPI_Init on first call; errors are fatal to the whole job, MPI's default).
std::unique_ptr<World> make_mpi_world(int* argc, char*** argv);
void finalize_mpi();
// One NCCL communicator over the ranks of `mpi` for CUDA device d (bootstrapped by an MPI
// broadcast of the NCCL id); kept until the process ends.
const World& nccl_world(const World& mpi, const Device& d);

}  // namespace flatmin::distributed
