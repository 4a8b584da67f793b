// The MPI world: MPI_COMM_WORLD of the job started by mpirun or srun. Errors keep MPI's
// default handler (MPI_ERRORS_ARE_FATAL): a failed call, a rank that dies or a lost
// connection ends every process of the job, and mpirun names the rank
// (docs/distributed.md, "Faults").
// The C API only (Open MPI's C++ bindings are deprecated and warn under -Wextra).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <numeric>

#include "distributed/backends.hpp"

namespace flatmin::distributed {
namespace {

int as_count(size_t bytes, const char* who) {
  if (bytes > size_t(INT_MAX))
    throw Error(std::string(who) + ": " + std::to_string(bytes) + " bytes exceed MPI's int count");
  return int(bytes);
}
std::vector<int> counts_of(const std::vector<size_t>& bytes, const char* who) {
  std::vector<int> c;
  for (size_t b : bytes) c.push_back(as_count(b, who));
  return c;
}
std::vector<int> displacements(const std::vector<int>& counts, const char* who) {
  std::vector<int> d(counts.size());
  size_t at = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    d[i] = as_count(at, who);
    at += size_t(counts[i]);
  }
  return d;
}

class MpiWorld final : public World {
 public:
  MpiWorld() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string backend() const override { return "mpi"; }

  void barrier() const override { MPI_Barrier(MPI_COMM_WORLD); }
  void broadcast(void* data, size_t bytes, int root) const override {
    MPI_Bcast(data, as_count(bytes, "broadcast"), MPI_BYTE, root, MPI_COMM_WORLD);
    if (rank_ == root) bytes_sent_ += bytes * size_t(size_ - 1);  // as if sent directly to each
  }
  void all_gather_v(const void* send, void* recv, const std::vector<size_t>& counts) const override {
    std::vector<int> c = counts_of(counts, "all_gather"), d = displacements(c, "all_gather");
    MPI_Allgatherv(send, c[size_t(rank_)], MPI_BYTE, recv, c.data(), d.data(), MPI_BYTE, MPI_COMM_WORLD);
    bytes_sent_ += counts[size_t(rank_)] * size_t(size_ - 1);
  }
  void all_to_all_v(const void* send, const std::vector<size_t>& send_counts, void* recv,
                    const std::vector<size_t>& recv_counts) const override {
    std::vector<int> sc = counts_of(send_counts, "all_to_all"), sd = displacements(sc, "all_to_all");
    std::vector<int> rc = counts_of(recv_counts, "all_to_all"), rd = displacements(rc, "all_to_all");
    MPI_Alltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(), MPI_BYTE, MPI_COMM_WORLD);
    bytes_sent_ += std::accumulate(send_counts.begin(), send_counts.end(), size_t(0)) - send_counts[size_t(rank_)];
  }
  void all_reduce_sum(void* data, int64_t count, DType dtype) const override {
    MPI_Datatype t = dtype == DType::f32 ? MPI_FLOAT : dtype == DType::f64 ? MPI_DOUBLE : MPI_INT64_T;
    MPI_Allreduce(MPI_IN_PLACE, data, as_count(size_t(count), "all_reduce"), t, MPI_SUM, MPI_COMM_WORLD);
    bytes_sent_ += 2 * size_t(count) * dtype_size(dtype) * size_t(size_ - 1) / size_t(size_);  // a ring's share
  }
  [[noreturn]] void abort(int code) const override {
    std::fflush(nullptr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; this satisfies [[noreturn]]
  }

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace

bool built_with_mpi() { return true; }

std::unique_ptr<World> make_mpi_world(int* argc, char*** argv) {
  int ready = 0;
  MPI_Initialized(&ready);
  if (!ready) MPI_Init(argc, argv);
  return std::make_unique<MpiWorld>();
}

void finalize_mpi() {
  int ready = 0, done = 0;
  MPI_Initialized(&ready);
  MPI_Finalized(&done);
  if (ready && !done) MPI_Finalize();
}

}  // namespace flatmin::distributed
