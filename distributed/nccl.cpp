// The NCCL world: collectives on CUDA memory of one GPU per process (cuda:<local rank> by
// default), bootstrapped over MPI (rank 0 creates the NCCL id and broadcasts it). Host
// metadata stays on the MPI world. Every call first waits for flatmin's own stream on the
// device (backend(d).synchronize()), runs on NCCL's stream and waits for it, so a tensor is
// complete before and after: simple and correct, not overlapped with computation.
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <map>

#include "autodiff/backend.hpp"
#include "distributed/backends.hpp"

namespace flatmin::distributed {
namespace {

void check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) throw Error(std::string("NCCL ") + what + ": " + ncclGetErrorString(r));
}
void check(cudaError_t r, const char* what) {
  if (r != cudaSuccess) throw Error(std::string("CUDA (NCCL world) ") + what + ": " + cudaGetErrorString(r));
}

class NcclWorld final : public World {
 public:
  NcclWorld(const World& mpi, const Device& d) : mpi_(mpi), device_(d) {
    ncclUniqueId id;
    if (mpi.rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    mpi.broadcast(&id, sizeof id, 0);
    check(cudaSetDevice(d.index), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(ncclCommInitRank(&comm_, mpi.size(), id, mpi.rank()), "ncclCommInitRank");
  }
  ~NcclWorld() override {
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }
  int rank() const override { return mpi_.rank(); }
  int size() const override { return mpi_.size(); }
  int local_rank() const override { return mpi_.local_rank(); }
  int local_size() const override { return mpi_.local_size(); }
  std::string backend() const override { return "nccl"; }
  bool handles(const Device& d) const override { return d == device_; }
  const World& host() const override { return mpi_; }

  void barrier() const override {
    before();
    mpi_.barrier();
  }
  void broadcast(void* data, size_t bytes, int root) const override {
    before();
    check(ncclBroadcast(data, data, bytes, ncclChar, root, comm_, stream_), "ncclBroadcast");
    after();
    if (rank() == root) bytes_sent_ += bytes * size_t(size() - 1);
  }
  // NCCL has no all-gather-v: one broadcast per rank, grouped into one launch.
  void all_gather_v(const void* send, void* recv, const std::vector<size_t>& counts) const override {
    before();
    check(ncclGroupStart(), "ncclGroupStart");
    size_t at = 0;
    for (int r = 0; r < size(); ++r) {
      char* dst = static_cast<char*>(recv) + at;
      if (counts[size_t(r)] > 0)
        check(ncclBroadcast(r == rank() ? send : dst, dst, counts[size_t(r)], ncclChar, r, comm_, stream_),
              "ncclBroadcast");
      at += counts[size_t(r)];
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
    after();
    bytes_sent_ += counts[size_t(rank())] * size_t(size() - 1);
  }
  void all_to_all_v(const void* send, const std::vector<size_t>& send_counts, void* recv,
                    const std::vector<size_t>& recv_counts) const override {
    before();
    check(ncclGroupStart(), "ncclGroupStart");
    size_t s_at = 0, r_at = 0;
    for (int r = 0; r < size(); ++r) {
      if (send_counts[size_t(r)] > 0)
        check(ncclSend(static_cast<const char*>(send) + s_at, send_counts[size_t(r)], ncclChar, r, comm_, stream_),
              "ncclSend");
      if (recv_counts[size_t(r)] > 0)
        check(ncclRecv(static_cast<char*>(recv) + r_at, recv_counts[size_t(r)], ncclChar, r, comm_, stream_),
              "ncclRecv");
      s_at += send_counts[size_t(r)];
      if (r != rank()) bytes_sent_ += send_counts[size_t(r)];
      r_at += recv_counts[size_t(r)];
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
    after();
  }
  void all_reduce_sum(void* data, int64_t count, DType dtype) const override {
    before();
    const ncclDataType_t t = dtype == DType::f32 ? ncclFloat32 : dtype == DType::f64 ? ncclFloat64 : ncclInt64;
    check(ncclAllReduce(data, data, size_t(count), t, ncclSum, comm_, stream_), "ncclAllReduce");
    after();
    bytes_sent_ += 2 * size_t(count) * dtype_size(dtype) * size_t(size() - 1) / size_t(size());  // a ring's share
  }
  [[noreturn]] void abort(int code) const override {
    mpi_.abort(code);
    std::_Exit(code);  // not reached
  }

 private:
  const World& mpi_;
  Device device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void before() const {
    flatmin::backend(device_).synchronize();
    check(cudaSetDevice(device_.index), "cudaSetDevice");
  }
  void after() const { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
};

}  // namespace

bool built_with_nccl() { return true; }

const World& nccl_world(const World& mpi, const Device& d) {
  static std::map<int, std::unique_ptr<NcclWorld>> worlds;  // one communicator per device
  auto& w = worlds[d.index];
  if (!w) w = std::make_unique<NcclWorld>(mpi, d);
  return *w;
}

}  // namespace flatmin::distributed
