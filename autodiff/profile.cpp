#include "autodiff/profile.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "autodiff/backend.hpp"

namespace flatmin::profile {
namespace {

struct Entry {
  int64_t calls = 0;
  double seconds = 0;
};
struct Table {
  std::mutex mutex;
  std::map<std::string, Entry> entries;
  ~Table() {  // at exit, whatever was not printed yet
    if (!entries.empty()) print(stderr);
  }
};
Table& table() {
  static Table t;
  return t;
}

// Forwards every call to the real backend inside a Scope named after the kernel.
class TimedBackend final : public Backend {
 public:
  explicit TimedBackend(Backend& b) : b_(b) {}
  const char* name() const override { return b_.name(); }
  std::string bf16_convolutions_unavailable() const override { return b_.bf16_convolutions_unavailable(); }
  bool supports_channels_last_convolutions(DType t) const override { return b_.supports_channels_last_convolutions(t); }
  void* allocate(size_t bytes) override {
    Scope s("allocate");
    return b_.allocate(bytes);
  }
  void deallocate(void* p, size_t bytes) override {
    Scope s("deallocate");
    b_.deallocate(p, bytes);
  }
  void copy_from_host(void* d, const void* s, size_t n) override {
    Scope t("copy_from_host");
    b_.copy_from_host(d, s, n);
  }
  void copy_to_host(void* d, const void* s, size_t n) override {
    Scope t("copy_to_host");
    b_.copy_to_host(d, s, n);
  }
  void copy(void* d, const void* s, size_t n) override {
    Scope t("copy");
    b_.copy(d, s, n);
  }
  void synchronize() override { b_.synchronize(); }
  size_t release_cached_memory() override { return b_.release_cached_memory(); }
  void fill(Tensor& out, double v) override {
    Scope s("fill");
    b_.fill(out, v);
  }
  void cast(const Tensor& in, Tensor& out) override {
    Scope s("cast");
    b_.cast(in, out);
  }
  void arange(Tensor& out) override {
    Scope s("arange");
    b_.arange(out);
  }
  void unary(UnaryOp op, const Tensor& x, Tensor& out, double p) override {
    Scope s("unary", kernel_name(op));
    b_.unary(op, x, out, p);
  }
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) override {
    Scope s("binary", kernel_name(op));
    b_.binary(op, a, b, out);
  }
  void where(const Tensor& c, const Tensor& a, const Tensor& b, Tensor& out) override {
    Scope s("where");
    b_.where(c, a, b, out);
  }
  void reduce(ReduceOp op, const Tensor& x, Tensor& out) override {
    Scope s("reduce", kernel_name(op));
    b_.reduce(op, x, out);
  }
  void expand(const Tensor& x, Tensor& out) override {
    Scope s("expand");
    b_.expand(x, out);
  }
  void permute(const Tensor& x, Tensor& out, const std::vector<int64_t>& perm) override {
    Scope s("permute");
    b_.permute(x, out, perm);
  }
  void slice(const Tensor& x, Tensor& out, int64_t axis, int64_t start, int64_t step) override {
    Scope s("slice");
    b_.slice(x, out, axis, start, step);
  }
  void slice_add(const Tensor& src, Tensor& out, int64_t axis, int64_t start, int64_t step) override {
    Scope s("slice_add");
    b_.slice_add(src, out, axis, start, step);
  }
  void index_select(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) override {
    Scope s("index_select");
    b_.index_select(x, axis, idx, out);
  }
  void index_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) override {
    Scope s("index_add");
    b_.index_add(src, axis, idx, out);
  }
  void gather(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) override {
    Scope s("gather");
    b_.gather(x, axis, idx, out);
  }
  void scatter_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) override {
    Scope s("scatter_add");
    b_.scatter_add(src, axis, idx, out);
  }
  void matmul(const Tensor& a, const Tensor& b, Tensor& out, const MatmulArgs& g) override {
    Scope s("matmul");
    b_.matmul(a, b, out, g);
  }
  void random(RandomKind k, Tensor& out, uint64_t seed, uint64_t offset) override {
    Scope s("random");
    b_.random(k, out, seed, offset);
  }
  void conv2d(const Tensor& x, const Tensor& w, Tensor& out, const Conv2dParams& p) override {
    Scope s("conv2d");
    b_.conv2d(x, w, out, p);
  }
  void conv2d_input_grad(const Tensor& gy, const Tensor& w, Tensor& gx, const Conv2dParams& p) override {
    Scope s("conv2d_input_grad");
    b_.conv2d_input_grad(gy, w, gx, p);
  }
  void conv2d_weight_grad(const Tensor& x, const Tensor& gy, Tensor& gw, const Conv2dParams& p) override {
    Scope s("conv2d_weight_grad");
    b_.conv2d_weight_grad(x, gy, gw, p);
  }
  void max_pool2d(const Tensor& x, Tensor& out, Tensor& idx, const Pool2dParams& p) override {
    Scope s("max_pool2d");
    b_.max_pool2d(x, out, idx, p);
  }
  void avg_pool2d(const Tensor& x, Tensor& out, const Pool2dParams& p) override {
    Scope s("avg_pool2d");
    b_.avg_pool2d(x, out, p);
  }
  void avg_pool2d_adjoint(const Tensor& gy, Tensor& gx, const Pool2dParams& p) override {
    Scope s("avg_pool2d_adjoint");
    b_.avg_pool2d_adjoint(gy, gx, p);
  }
  bool batch_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y, Tensor& mean,
                          Tensor& var) override {
    Scope s("batch_norm_forward");
    return b_.batch_norm_forward(x, w, b, eps, y, mean, var);
  }
  bool batch_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& var,
                           double eps, Tensor& gx, Tensor& gw, Tensor& gb) override {
    Scope s("batch_norm_backward");
    return b_.batch_norm_backward(g, x, w, mean, var, eps, gx, gw, gb);
  }
  bool batch_norm_relu_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y, Tensor& mean,
                               Tensor& var) override {
    Scope s("batch_norm_relu_forward");
    return b_.batch_norm_relu_forward(x, w, b, eps, y, mean, var);
  }
  bool batch_norm_relu_backward(const Tensor& g, const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& mean,
                                const Tensor& var, double eps, Tensor& gx, Tensor& gw, Tensor& gb) override {
    Scope s("batch_norm_relu_backward");
    return b_.batch_norm_relu_backward(g, y, x, w, mean, var, eps, gx, gw, gb);
  }
  bool add_relu(const Tensor& a, const Tensor& b, Tensor& out) override {
    Scope s("add_relu");
    return b_.add_relu(a, b, out);
  }
  bool batch_norm_eval(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu, Tensor& y) override {
    Scope s(relu ? "batch_norm_eval_relu" : "batch_norm_eval");
    return b_.batch_norm_eval(x, scale, shift, relu, y);
  }
  bool batch_norm_input_grad_vjp(const Tensor& a, const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                                 const Tensor& var, double eps, Tensor& dg, Tensor& dx, Tensor& dw) override {
    Scope s("batch_norm_input_grad_vjp");
    return b_.batch_norm_input_grad_vjp(a, g, x, w, mean, var, eps, dg, dx, dw);
  }
  bool batch_norm_weight_grad_vjp(const Tensor& beta, const Tensor& g, const Tensor& x, const Tensor& mean,
                                  const Tensor& var, double eps, Tensor& dg, Tensor& dx) override {
    Scope s("batch_norm_weight_grad_vjp");
    return b_.batch_norm_weight_grad_vjp(beta, g, x, mean, var, eps, dg, dx);
  }
  bool group_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, int64_t groups, double eps,
                          bool channels_last, Tensor& y, Tensor& mean, Tensor& var) override {
    Scope s("group_norm_forward");
    return b_.group_norm_forward(x, w, b, groups, eps, channels_last, y, mean, var);
  }
  bool group_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& var,
                           int64_t groups, double eps, bool channels_last, Tensor& gx, Tensor& gw,
                           Tensor& gb) override {
    Scope s("group_norm_backward");
    return b_.group_norm_backward(g, x, w, mean, var, groups, eps, channels_last, gx, gw, gb);
  }

 private:
  Backend& b_;
};

}  // namespace

bool enabled() {
  static const bool on = [] {
    const char* v = std::getenv("FLATMIN_PROFILE");
    return v && *v && std::string(v) != "0";
  }();
  return on;
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void add(const char* name, const char* detail, double seconds) {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mutex);
  Entry& e = t.entries[detail ? std::string(name) + ":" + detail : std::string(name)];
  ++e.calls;
  e.seconds += seconds;
}

void print(std::FILE* out) {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mutex);
  // Kernels and rules are two views of the same time (rules contain kernels): each table
  // gets its own total.
  for (const bool rules : {false, true}) {
    std::vector<std::pair<std::string, Entry>> rows;
    double total = 0;
    for (const auto& [k, e] : t.entries)
      if ((k.rfind("rule:", 0) == 0) == rules) {
        rows.emplace_back(k, e);
        total += e.seconds;
      }
    if (rows.empty()) continue;
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    std::fprintf(out, "\n| %s | calls | seconds | share |\n|---|---:|---:|---:|\n",
                 rules ? "derivative rule (incl. its kernels)" : "kernel");
    for (const auto& [k, e] : rows)
      std::fprintf(out, "| %s | %lld | %.4f | %.1f%% |\n", k.c_str(), static_cast<long long>(e.calls), e.seconds,
                   total > 0 ? 100.0 * e.seconds / total : 0.0);
    std::fprintf(out, "| total | | %.4f | |\n", total);
  }
  t.entries.clear();
}

Backend& timed(Backend& inner) {
  static std::mutex mutex;
  static std::map<Backend*, std::unique_ptr<TimedBackend>>* wrappers =
      new std::map<Backend*, std::unique_ptr<TimedBackend>>;
  std::lock_guard<std::mutex> lock(mutex);
  auto& w = (*wrappers)[&inner];
  if (!w) w = std::make_unique<TimedBackend>(inner);
  return *w;
}

}  // namespace flatmin::profile
