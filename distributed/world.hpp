// The processes of one job and what they exchange (docs/distributed.md): rank, size, local
// rank; barrier, broadcast, all-gather and all-reduce of tensors and of parameter lists; and
// the one reduction data-parallel training relies on, fixed_order_sum, whose result depends
// on the number of summed items only, never on how many processes share them.
//
// The engine below knows nothing of this layer. The single-process world is the default;
// tools/main.cpp replaces it by an MPI world (Open MPI, -Dmpi=auto) when the program was
// started by mpirun or srun, and CUDA tensors go through NCCL where it was built
// (-Dnccl=auto), through host memory otherwise.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autodiff/functional.hpp"

namespace flatmin::distributed {

class World {
 public:
  virtual ~World() = default;
  virtual int rank() const { return 0; }
  virtual int size() const { return 1; }
  virtual int local_rank() const { return 0; }  // among the processes of this machine
  virtual int local_size() const { return 1; }
  virtual std::string backend() const { return "single"; }
  // Whether the collectives below can read and write memory of this device directly; the
  // tensor functions stage other memory through the host.
  virtual bool handles(const Device& d) const { return d.kind == DeviceKind::cpu; }

  // Byte-level collectives on memory this world handles (all ranks call them in the same
  // order with consistent sizes). The single-process world copies.
  virtual void barrier() const {}
  virtual void broadcast(void* data, size_t bytes, int root) const;
  // Rank r contributes counts[r] bytes; recv receives them in rank order.
  virtual void all_gather_v(const void* send, void* recv, const std::vector<size_t>& counts) const;
  // send holds send_counts[j] bytes for each rank j in rank order; recv gets recv_counts[i]
  // bytes from each rank i in rank order.
  virtual void all_to_all_v(const void* send, const std::vector<size_t>& send_counts, void* recv,
                            const std::vector<size_t>& recv_counts) const;
  // Element-wise sum over the ranks, in an order the MPI/NCCL library chooses.
  virtual void all_reduce_sum(void* data, int64_t count, DType dtype) const;
  // Ends every process of the job now (a fatal error on one rank must not leave the others
  // waiting in a collective). The single-process world exits.
  [[noreturn]] virtual void abort(int code) const;
  // The world for host-memory metadata (an NCCL world keeps its MPI world for that).
  virtual const World& host() const { return *this; }
  // Bytes this rank has sent to other ranks so far (for the cost measurements in
  // docs/distributed.md; the MPI and NCCL worlds count their sends).
  uint64_t bytes_sent() const { return bytes_sent_; }

 protected:
  mutable uint64_t bytes_sent_ = 0;
};

// The world of this process: single-process unless set_world() installed another.
const World& world();
void set_world(std::unique_ptr<World> w);
// Creates the MPI world (and, where built, NCCL for CUDA tensors) when this process was
// started by a launcher (mpirun, srun: OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_RANK); leaves
// the single-process world otherwise. Returns the world in use.
const World& init_from_environment(int* argc, char*** argv);
// Orderly end of the MPI world (MPI_Finalize); no-op for the single process.
void finalize();
// What this build can do: "mpi", "nccl" (each present or not).
bool built_with_mpi();
bool built_with_nccl();
// The world for tensors on device d: NCCL for CUDA where built (created on first use, one
// GPU per local rank) unless FLATMIN_NCCL=0, world() otherwise. init_from_environment
// rejects any FLATMIN_NCCL other than 0 or 1.
const World& world_for(const Device& d);

// ---- tensors and parameter lists (any device; contiguous tensors of equal shapes) ----
void broadcast(const World& w, Tensor& t, int root);  // in place
void broadcast(const World& w, Params& ts, int root);
void all_reduce_sum(const World& w, Tensor& t);  // in place; order: the library's
void all_reduce_sum(const World& w, Params& ts);
Tensor all_gather(const World& w, const Tensor& t);                // shape [size, ...t.shape]
std::vector<Params> all_gather(const World& w, const Params& ts);  // [rank][i]
std::vector<std::string> all_gather(const World& w, const std::string& s);
std::vector<double> all_gather_v(const World& w, const std::vector<double>& mine);  // concatenated in rank order

// ---- the deterministic reduction ----
// The items [0, n) are dealt to the ranks in contiguous ranges: rank r owns
// [n·r/size, n·(r+1)/size).
struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
Range owned(int64_t n, int rank, int size);
int owner(int64_t item, int64_t n, int size);  // the first rank whose range holds `item`

// Σ_k leaf(k) over k in [0, n), added in one fixed binary tree over the n leaves (split at
// lo + (hi−lo)/2): every rank calls leaf(k) for its own k only, sums the largest subtrees
// that lie inside its range, and the ranks combine the rest of the tree on one slice of
// the vector each (all-to-all, then all-gather). The additions and their operands are the
// same for any world size, so the result is bit-identical on 1, 2, 3... processes, and
// the same on every rank. leaf(k) returns a 1-d tensor; all leaves have the same length,
// dtype; the result is on `device` on every rank (ranks without leaves learn the length and
// dtype from the others). Bytes moved per rank: about 2·(blocks)·(N−1)/N of the vector, where
// blocks ≤ 2·log2(n) per rank (1 when size divides n and n/size is a power of two).
Tensor fixed_order_sum(const World& w, int64_t n, const Device& device, const std::function<Tensor(int64_t)>& leaf);
// The same tree over scalars: `mine` holds this rank's leaves (owned(n, rank, size) of them).
double fixed_order_sum(const World& w, int64_t n, const std::vector<double>& mine);

// Refuses to go on when the ranks disagree: every rank passes a description of what must
// be the same everywhere (flags, a hash of the data); throws flatmin::Error on every rank,
// naming the ranks that differ from rank 0, when they are not all equal.
void require_same(const World& w, const std::string& what, const std::string& value);
// 64-bit FNV-1a of bytes (for data hashes in require_same).
uint64_t fnv1a(const void* data, size_t bytes, uint64_t h = 0xcbf29ce484222325ull);
uint64_t hash_tensor(const Tensor& t, uint64_t h = 0xcbf29ce484222325ull);

}  // namespace flatmin::distributed
