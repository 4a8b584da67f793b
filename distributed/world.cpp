#include "distributed/world.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>

#include "autodiff/backend.hpp"
#include "autodiff/ops.hpp"
#include "distributed/backends.hpp"

namespace flatmin::distributed {

// ---- the single process: every collective is a copy or nothing ----
void World::broadcast(void*, size_t, int) const {}
void World::all_gather_v(const void* send, void* recv, const std::vector<size_t>& counts) const {
  if (counts.size() == 1 && counts[0] > 0) std::memcpy(recv, send, counts[0]);
}
void World::all_to_all_v(const void* send, const std::vector<size_t>& send_counts, void* recv,
                         const std::vector<size_t>&) const {
  if (send_counts.size() == 1 && send_counts[0] > 0) std::memcpy(recv, send, send_counts[0]);
}
void World::all_reduce_sum(void*, int64_t, DType) const {}
void World::abort(int code) const {
  std::fflush(nullptr);
  std::_Exit(code);
}

namespace {
std::unique_ptr<World>& current() {
  static std::unique_ptr<World> w = std::make_unique<World>();
  return w;
}
}  // namespace

const World& world() { return *current(); }
void set_world(std::unique_ptr<World> w) {
  if (!w) throw Error("set_world: no world");
  current() = std::move(w);
}

namespace {
// FLATMIN_NCCL=0: CUDA tensors travel through the MPI world (staged in host memory) even
// where NCCL is built — for a machine where NCCL cannot run the job (two processes on one GPU)
// and to compare the two paths. Unset or 1: NCCL where built. Read once.
bool nccl_allowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("FLATMIN_NCCL");
    const std::string s = v ? v : "";
    if (s.empty() || s == "1") return true;
    if (s == "0") return false;
    throw Error("FLATMIN_NCCL='" + s + "': expected 0 (CUDA tensors through MPI) or 1 (NCCL where built)");
  }();
  return allowed;
}
}  // namespace

const World& init_from_environment(int* argc, char*** argv) {
  nccl_allowed();  // a bad FLATMIN_NCCL is an error at start, not at the first collective
  auto set = [](const char* v) { return v && *v; };
  const bool launched = set(std::getenv("OMPI_COMM_WORLD_SIZE")) || set(std::getenv("PMIX_RANK")) ||
                        set(std::getenv("PMI_RANK")) || set(std::getenv("PMI_SIZE"));
  if (launched) {
    if (!built_with_mpi())
      throw Error(
          "this process was started by an MPI launcher (mpirun/srun) but flatmin was built without MPI "
          "(install libopenmpi-dev and rebuild with -Dmpi=enabled)");
    set_world(make_mpi_world(argc, argv));
  }
  return world();
}

void finalize() { finalize_mpi(); }

const World& world_for(const Device& d) {
  if (d.kind == DeviceKind::cuda && world().size() > 1 && built_with_nccl() && nccl_allowed())
    return nccl_world(world(), d);
  return world();
}

// ---- tensors ----
namespace {
void require_defined(const char* who, const Tensor& t) {
  if (!t.defined()) throw Error(std::string(who) + ": undefined tensor");
}
// Runs op on a tensor the world can address: t itself, or a host copy written back after
// (byte copies only: integer buffers such as BatchNorm's step count travel too).
template <class Op> void on_handled(const World& w, Tensor& t, Op op) {
  if (w.handles(t.device())) {
    op(t);
    return;
  }
  Tensor h = t.detach().to(Device::cpu());  // a copy: t is not in host memory
  op(h);
  t.copy_(h);
}
size_t bytes_of(const Tensor& t) { return size_t(t.numel()) * dtype_size(t.dtype()); }
void touched(Tensor& t) { ++t.impl()->storage->version; }
}  // namespace

void broadcast(const World& w, Tensor& t, int root) {
  require_defined("broadcast", t);
  if (w.size() == 1) return;
  NoGrad ng;
  on_handled(w, t, [&](Tensor& x) {
    w.broadcast(data_ptr<char>(x), bytes_of(x), root);
    touched(x);
  });
}
void broadcast(const World& w, Params& ts, int root) {
  for (Tensor& t : ts) broadcast(w, t, root);
}

void all_reduce_sum(const World& w, Tensor& t) {
  require_defined("all_reduce_sum", t);
  if (w.size() == 1) return;
  NoGrad ng;
  on_handled(w, t, [&](Tensor& x) {
    w.all_reduce_sum(data_ptr<char>(x), x.numel(), x.dtype());
    touched(x);
  });
}
void all_reduce_sum(const World& w, Params& ts) {
  for (Tensor& t : ts) all_reduce_sum(w, t);
}

Tensor all_gather(const World& w, const Tensor& t) {
  require_defined("all_gather", t);
  NoGrad ng;
  Shape s = t.shape();
  s.insert(s.begin(), int64_t(w.size()));
  Tensor src = w.handles(t.device()) ? t.detach() : t.detach().to(Device::cpu());
  Tensor out = empty(s, {.dtype = t.dtype(), .device = src.device()});
  w.all_gather_v(data_ptr<char>(src), data_ptr<char>(out), std::vector<size_t>(size_t(w.size()), bytes_of(t)));
  return out.to(t.device());
}
std::vector<Params> all_gather(const World& w, const Params& ts) {
  std::vector<Params> r(size_t(w.size()));
  for (const Tensor& t : ts) {
    Tensor all = all_gather(w, t);
    for (int k = 0; k < w.size(); ++k) r[size_t(k)].push_back(reshape(slice(all, 0, k, k + 1), t.shape()));
  }
  return r;
}

std::vector<std::string> all_gather(const World& w, const std::string& s) {
  const World& h = w.host();
  std::vector<uint64_t> lens(size_t(h.size()));
  uint64_t mine = s.size();
  h.all_gather_v(&mine, lens.data(), std::vector<size_t>(size_t(h.size()), sizeof(uint64_t)));
  std::vector<size_t> counts(lens.begin(), lens.end());
  std::string all(std::accumulate(counts.begin(), counts.end(), size_t(0)), '\0');
  h.all_gather_v(s.data(), all.data(), counts);
  std::vector<std::string> r;
  size_t at = 0;
  for (size_t c : counts) {
    r.push_back(all.substr(at, c));
    at += c;
  }
  return r;
}

std::vector<double> all_gather_v(const World& w, const std::vector<double>& mine) {
  const World& h = w.host();
  std::vector<uint64_t> lens(size_t(h.size()));
  uint64_t n = mine.size();
  h.all_gather_v(&n, lens.data(), std::vector<size_t>(size_t(h.size()), sizeof(uint64_t)));
  std::vector<size_t> counts;
  size_t total = 0;
  for (uint64_t l : lens) {
    counts.push_back(size_t(l) * sizeof(double));
    total += size_t(l);
  }
  std::vector<double> all(total);
  h.all_gather_v(mine.data(), all.data(), counts);
  return all;
}

// ---- the deterministic reduction ----
Range owned(int64_t n, int rank, int size) { return {n * rank / size, n * (rank + 1) / size}; }
int owner(int64_t item, int64_t n, int size) {
  for (int r = 0; r < size; ++r)
    if (owned(n, r, size).begin <= item && item < owned(n, r, size).end) return r;
  throw Error("owner: item " + std::to_string(item) + " outside [0, " + std::to_string(n) + ")");
}

namespace {
struct Node {
  int64_t lo, hi;
};
int64_t middle(int64_t lo, int64_t hi) { return lo + (hi - lo) / 2; }
// The largest subtrees of the fixed tree over [0, n) that lie inside r, left to right.
void blocks_of(int64_t lo, int64_t hi, Range r, std::vector<Node>& out) {
  if (r.begin >= hi || r.end <= lo || r.begin >= r.end) return;
  if (r.begin <= lo && hi <= r.end) {
    out.push_back({lo, hi});
    return;
  }
  blocks_of(lo, middle(lo, hi), r, out);
  blocks_of(middle(lo, hi), hi, r, out);
}
std::vector<Node> blocks_of(int64_t n, Range r) {
  std::vector<Node> out;
  blocks_of(0, n, r, out);
  return out;
}
// Σ of the leaves under a node, in the tree's order (the same recursion as the combine).
template <class V, class Leaf, class Add> V subtree_sum(int64_t lo, int64_t hi, const Leaf& leaf, const Add& add) {
  if (hi - lo == 1) return leaf(lo);
  V a = subtree_sum<V>(lo, middle(lo, hi), leaf, add);
  V b = subtree_sum<V>(middle(lo, hi), hi, leaf, add);
  return add(a, b);
}
// The tree above the blocks: `block(i)` is the value of blocks[i] (in global order).
template <class V, class Block, class Add>
V combine(int64_t lo, int64_t hi, const std::vector<Node>& blocks, size_t& next, const Block& block, const Add& add) {
  if (next < blocks.size() && blocks[next].lo == lo && blocks[next].hi == hi) return block(next++);
  if (hi - lo <= 1) throw Error("fixed_order_sum: inconsistent blocks (internal)");
  V a = combine<V>(lo, middle(lo, hi), blocks, next, block, add);
  V b = combine<V>(middle(lo, hi), hi, blocks, next, block, add);
  return add(a, b);
}
}  // namespace

double fixed_order_sum(const World& w, int64_t n, const std::vector<double>& mine) {
  if (n < 1) throw Error("fixed_order_sum: no items");
  const Range r = owned(n, w.rank(), w.size());
  if (int64_t(mine.size()) != r.size())
    throw Error("fixed_order_sum: " + std::to_string(mine.size()) + " values for " + std::to_string(r.size()) +
                " owned items");
  const std::vector<double> all = w.size() == 1 ? mine : all_gather_v(w, mine);
  return subtree_sum<double>(
      0, n, [&](int64_t k) { return all[size_t(k)]; }, [](double a, double b) { return a + b; });
}

Tensor fixed_order_sum(const World& w, int64_t n, const Device& device, const std::function<Tensor(int64_t)>& leaf) {
  if (n < 1) throw Error("fixed_order_sum: no items");
  NoGrad ng;
  auto add_ = [](const Tensor& a, const Tensor& b) { return add(a, b); };
  const int N = w.size(), me = w.rank();
  Tensor first;  // the first leaf's length, dtype and device, checked on every leaf
  auto checked_leaf = [&](int64_t k) {
    Tensor t = leaf(k).detach();
    if (t.dim() != 1) throw Error("fixed_order_sum: leaf " + std::to_string(k) + " is not 1-d");
    if (!first.defined())
      first = t;
    else if (t.numel() != first.numel() || t.dtype() != first.dtype() || !(t.device() == first.device()))
      throw Error("fixed_order_sum: leaf " + std::to_string(k) + " differs in length, dtype or device from the first");
    return t;
  };
  if (N == 1) return subtree_sum<Tensor>(0, n, checked_leaf, add_).to(device);

  // 1. This rank's blocks, each summed locally in the tree's order.
  const std::vector<Node> mine = blocks_of(n, owned(n, me, N));
  std::vector<Tensor> sums;
  for (const Node& b : mine) sums.push_back(subtree_sum<Tensor>(b.lo, b.hi, checked_leaf, add_));
  // Every rank must learn the vector's length, dtype and device; ranks without items
  // learn them from the others.
  std::vector<double> meta =
      sums.empty() ? std::vector<double>{} : std::vector<double>{double(sums[0].numel()), double(int(sums[0].dtype()))};
  const std::vector<double> metas = all_gather_v(w, meta);
  if (metas.empty()) throw Error("fixed_order_sum: no rank has items (internal)");
  for (size_t i = 2; i < metas.size(); i += 2)
    if (metas[i] != metas[0] || metas[i + 1] != metas[1])
      throw Error("fixed_order_sum: the ranks' vectors differ in length or dtype");
  const int64_t len = int64_t(metas[0]);
  const DType dt = DType(int(metas[1]));
  const size_t es = dtype_size(dt);
  const Device dev = device;
  const bool stage = !w.handles(dev);
  const Device buf_dev = stage ? Device::cpu() : dev;

  // 2. All-to-all: rank j receives slice j of every block (global order = rank order).
  std::vector<size_t> nblocks(static_cast<size_t>(N));
  std::vector<Node> all_blocks;
  for (int r = 0; r < N; ++r) {
    std::vector<Node> b = blocks_of(n, owned(n, r, N));
    nblocks[size_t(r)] = b.size();
    all_blocks.insert(all_blocks.end(), b.begin(), b.end());
  }
  auto slice_range = [&](int j) { return owned(len, j, N); };
  std::vector<size_t> send_counts(static_cast<size_t>(N)), recv_counts(static_cast<size_t>(N));
  for (int j = 0; j < N; ++j) send_counts[size_t(j)] = sums.size() * size_t(slice_range(j).size()) * es;
  const Range my_slice = slice_range(me);
  for (int i = 0; i < N; ++i) recv_counts[size_t(i)] = nblocks[size_t(i)] * size_t(my_slice.size()) * es;
  // The send buffer, slice-major: slice j of every block, for j = 0..N−1 (one copy each).
  Tensor send = empty({int64_t(sums.size()) * len}, {.dtype = dt, .device = dev});
  {
    Backend& be = backend(dev);
    char* at = send.numel() ? data_ptr<char>(send) : nullptr;
    for (int j = 0; j < N; ++j)
      for (const Tensor& b : sums) {
        const Range sr = slice_range(j);
        const Tensor bd = b.to(dev);
        if (sr.size() > 0) be.copy(at, data_ptr<char>(bd) + size_t(sr.begin) * es, size_t(sr.size()) * es);
        at += size_t(sr.size()) * es;
      }
  }
  if (stage) send = send.to(buf_dev);
  Tensor recv = empty({int64_t(all_blocks.size()), my_slice.size()}, {.dtype = dt, .device = buf_dev});
  w.all_to_all_v(send.numel() ? data_ptr<char>(send) : nullptr, send_counts,
                 recv.numel() ? data_ptr<char>(recv) : nullptr, recv_counts);
  if (stage) recv = recv.to(dev);

  // 3. Combine the blocks of this slice in the tree's order.
  size_t next = 0;
  Tensor mine_reduced = combine<Tensor>(
      0, n, all_blocks, next,
      [&](size_t i) { return reshape(slice(recv, 0, int64_t(i), int64_t(i) + 1), {my_slice.size()}); }, add_);
  if (next != all_blocks.size()) throw Error("fixed_order_sum: unused blocks (internal)");

  // 4. All-gather the reduced slices.
  std::vector<size_t> counts(static_cast<size_t>(N));
  for (int j = 0; j < N; ++j) counts[size_t(j)] = size_t(slice_range(j).size()) * es;
  const Tensor mine_buf = mine_reduced.detach().to(buf_dev);  // a fresh tensor (a sum), or the staged copy
  Tensor out = empty({len}, {.dtype = dt, .device = buf_dev});
  w.all_gather_v(len ? data_ptr<char>(mine_buf) : nullptr, len ? data_ptr<char>(out) : nullptr, counts);
  return out.to(dev);
}

// ---- agreement at start-up ----
uint64_t fnv1a(const void* data, size_t bytes, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}
uint64_t hash_tensor(const Tensor& t, uint64_t h) {
  const Tensor c = t.detach().to(Device::cpu());  // contiguous (tensors always are)
  const int64_t dims[2] = {int64_t(c.dtype()), c.numel()};
  h = fnv1a(dims, sizeof dims, h);
  for (int64_t d : c.shape()) h = fnv1a(&d, sizeof d, h);
  return fnv1a(c.numel() ? c.raw() : nullptr, bytes_of(c), h);
}

void require_same(const World& w, const std::string& what, const std::string& value) {
  if (w.size() == 1) return;
  char mine[32];
  std::snprintf(mine, sizeof mine, "%016llx", (unsigned long long)fnv1a(value.data(), value.size()));
  const std::vector<std::string> all = all_gather(w, std::string(mine));
  std::string differ;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  if (!differ.empty())
    throw Error("the processes disagree on " + what + ": rank(s) " + differ +
                " differ from rank 0 (every process must get the "
                "same flags and the same data)");
}

}  // namespace flatmin::distributed
