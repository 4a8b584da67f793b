#include "autodiff/tensor.hpp"

#include <atomic>
#include <cmath>
#include <cstring>
#include <sstream>

#include "autodiff/backend.hpp"
#include "autodiff/graph.hpp"
#include "autodiff/ops.hpp"
#include "autodiff/small_alloc.hpp"

namespace flatmin {

size_t dtype_size(DType d) { return d == DType::f32 ? 4 : 8; }
const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::i64: return "int64";
  }
  return "?";
}

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    const std::string n = s.substr(5);
    if (!n.empty() && n.find_first_not_of("0123456789") == std::string::npos && n.size() < 4) return cuda(std::stoi(n));
  }
  throw Error("device: '" + s + "' is not a device (expected cpu, cuda or cuda:N)");
}

std::string Device::str() const { return kind == DeviceKind::cpu ? "cpu" : "cuda:" + std::to_string(index); }

int64_t numel(const Shape& s) {
  bool zero = false;
  for (int64_t d : s) {
    if (d < 0) throw Error("shape " + to_string(s) + ": negative extent " + std::to_string(d));
    zero |= d == 0;
  }
  if (zero) return 0;  // [2^62, 2^62, 0] is empty, not an overflow
  int64_t n = 1;
  for (int64_t d : s)
    if (__builtin_mul_overflow(n, d, &n)) throw Error("shape " + to_string(s) + ": the element count overflows int64");
  return n;
}

size_t storage_bytes_of(const Shape& s, DType dtype) {
  // Storage::live_bytes() is an int64_t sum, so a storage stays below 2^63 bytes.
  int64_t bytes = 0;
  if (__builtin_mul_overflow(numel(s), int64_t(dtype_size(dtype)), &bytes))
    throw Error("shape " + to_string(s) + ": " + dtype_name(dtype) + " storage overflows int64 bytes");
  return size_t(bytes);
}

std::string to_string(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

static std::atomic<int64_t> storage_bytes{0};
Storage::Storage(size_t b, Device d) : bytes(b), device(d) {
  data = backend(d).allocate(b);
  storage_bytes.fetch_add(int64_t(b), std::memory_order_relaxed);
}
Storage::~Storage() {
  storage_bytes.fetch_sub(int64_t(bytes), std::memory_order_relaxed);
  if (data) backend(device).deallocate(data, bytes);
}
int64_t Storage::live_bytes() { return storage_bytes.load(); }

static std::shared_ptr<TensorImpl> new_impl() {
  return std::allocate_shared<TensorImpl>(detail::SmallAllocator<TensorImpl>());
}

// ---- Tensor ----
void Tensor::throw_undefined(const char* what) { throw Error(std::string(what) + ": the tensor is undefined"); }
int64_t Tensor::size(int64_t axis) const { return shape()[normalize_axis(axis, dim(), "size")]; }
int64_t Tensor::numel() const { return flatmin::numel(shape()); }

template <class T> static DType dtype_of();
template <> DType dtype_of<float>() { return DType::f32; }
template <> DType dtype_of<double>() { return DType::f64; }
template <> DType dtype_of<int64_t>() { return DType::i64; }

template <class T> T* Tensor::data() {
  check_defined("data");
  if (dtype() != dtype_of<T>())
    throw Error(std::string("data<") + dtype_name(dtype_of<T>()) + ">: the tensor is " + dtype_name(dtype()));
  if (device().kind != DeviceKind::cpu) throw Error("data: the tensor is on " + device().str() + ", not the cpu");
  return data_ptr<T>(*this);
}
template <class T> const T* Tensor::data() const { return const_cast<Tensor*>(this)->data<T>(); }
template float* Tensor::data<float>();
template double* Tensor::data<double>();
template int64_t* Tensor::data<int64_t>();
template const float* Tensor::data<float>() const;
template const double* Tensor::data<double>() const;
template const int64_t* Tensor::data<int64_t>() const;

void* Tensor::raw() {
  check_defined("raw");
  return static_cast<char*>(impl_->storage->data) + impl_->offset * dtype_size(impl_->dtype);
}
const void* Tensor::raw() const { return const_cast<Tensor*>(this)->raw(); }

std::vector<double> Tensor::to_vector() const {
  check_defined("to_vector");
  Tensor h = device().kind == DeviceKind::cpu ? *this : to(Device::cpu());
  std::vector<double> r(size_t(h.numel()));
  switch (h.dtype()) {
    case DType::f32: {
      auto p = data_ptr<float>(h);
      for (size_t i = 0; i < r.size(); ++i) r[i] = p[i];
      break;
    }
    case DType::f64:
      if (!r.empty()) std::memcpy(r.data(), data_ptr<double>(h), r.size() * 8);
      break;
    case DType::i64: {
      auto p = data_ptr<int64_t>(h);
      for (size_t i = 0; i < r.size(); ++i) r[i] = double(p[i]);
      break;
    }
  }
  return r;
}
std::vector<int64_t> Tensor::to_int_vector() const {
  check_defined("to_int_vector");
  if (dtype() != DType::i64) throw Error("to_int_vector: the tensor is " + std::string(dtype_name(dtype())));
  Tensor h = device().kind == DeviceKind::cpu ? *this : to(Device::cpu());
  auto p = data_ptr<int64_t>(h);
  return std::vector<int64_t>(p, p + h.numel());
}
double Tensor::item() const {
  if (numel() != 1) throw Error("item: the tensor has shape " + to_string(shape()) + ", not one element");
  return to_vector()[0];
}

bool Tensor::requires_grad() const { return impl_ && impl_->node; }
Tensor& Tensor::requires_grad_(bool on) {
  check_defined("requires_grad_");
  if (impl_->node && !impl_->node->is_leaf())
    throw Error("requires_grad_: only leaf tensors can change requires_grad (this one was made by '" +
                std::string(impl_->node->op) + "'); use detach() first");
  if (on && !is_floating(dtype())) throw Error("requires_grad_: an int64 tensor cannot require grad");
  if (on && !impl_->node) impl_->node = std::allocate_shared<Node>(detail::SmallAllocator<Node>());
  if (!on) impl_->node.reset();
  return *this;
}
bool Tensor::is_leaf() const { return !impl_ || !impl_->node || impl_->node->is_leaf(); }
Tensor Tensor::grad() const {
  check_defined("grad");
  return impl_->node ? impl_->node->grad : Tensor();
}
void Tensor::set_grad(const Tensor& g) {
  check_defined("set_grad");
  if (!impl_->node || !impl_->node->is_leaf()) throw Error("set_grad: the tensor is not a leaf that requires grad");
  if (g.defined() && g.shape() != shape())
    throw Error("set_grad: gradient shape " + to_string(g.shape()) + " differs from tensor shape " +
                to_string(shape()));
  impl_->node->grad = g;
}
void Tensor::zero_grad() {
  if (impl_ && impl_->node) impl_->node->grad = Tensor();
}
const std::shared_ptr<Node>& Tensor::node() const {
  static const std::shared_ptr<Node> none;
  return impl_ ? impl_->node : none;
}
Tensor Tensor::detach() const {
  check_defined("detach");
  auto t = new_impl();
  t->storage = impl_->storage;
  t->offset = impl_->offset;
  t->shape = impl_->shape;
  t->dtype = impl_->dtype;
  return Tensor(std::move(t));
}
void Tensor::backward() const {
  check_defined("backward");
  accumulate_into_leaves(*this);
}

Tensor Tensor::to(Device d) const { return to_device(*this, d); }
Tensor Tensor::to(DType t) const { return to_dtype(*this, t); }

static void check_inplace(const Tensor& t, const char* op) {
  if (t.requires_grad() && grad_enabled())
    throw Error(std::string(op) +
                ": in-place update of a tensor that requires grad while recording; "
                "wrap the update in flatmin::NoGrad");
}
Tensor& Tensor::copy_(const Tensor& src) {
  check_defined("copy_");
  check_inplace(*this, "copy_");
  if (src.shape() != shape())
    throw Error("copy_: source shape " + to_string(src.shape()) + " differs from " + to_string(shape()));
  Tensor s = src;
  if (s.device() != device()) s = s.detach().to(device());
  if (s.dtype() != dtype()) s = s.detach().to(dtype());
  backend(device()).copy(raw(), s.raw(), size_t(numel()) * dtype_size(dtype()));
  ++impl_->storage->version;
  return *this;
}
Tensor& Tensor::add_(const Tensor& other, double alpha) {
  check_inplace(*this, "add_");
  NoGrad ng;
  Tensor o = alpha == 1.0 ? other.detach() : mul_scalar(other.detach(), alpha);
  if (o.shape() != shape()) throw Error("add_: shape " + to_string(o.shape()) + " differs from " + to_string(shape()));
  if (o.dtype() != dtype()) o = o.to(dtype());
  Tensor self = detach();
  backend(device()).binary(BinaryOp::add, self, o, self);
  ++impl_->storage->version;
  return *this;
}
Tensor& Tensor::mul_(double s) {
  check_defined("mul_");
  check_inplace(*this, "mul_");
  Tensor self = detach();
  backend(device()).unary(UnaryOp::mul_scalar, self, self, s);
  ++impl_->storage->version;
  return *this;
}
Tensor& Tensor::fill_(double v) {
  check_defined("fill_");
  check_inplace(*this, "fill_");
  backend(device()).fill(*this, v);
  ++impl_->storage->version;
  return *this;
}

Tensor Tensor::clone() const { return add_scalar(*this, 0.0); }

std::string Tensor::str() const {
  if (!impl_) return "Tensor(undefined)";
  std::ostringstream o;
  o << "Tensor(" << dtype_name(dtype()) << ", " << to_string(shape()) << ", " << device().str();
  if (numel() <= 16) {
    o << ", [";
    auto v = to_vector();
    for (size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << v[i];
    o << "]";
  }
  if (requires_grad()) o << ", requires_grad";
  return o.str() + ")";
}

// ---- creation ----
Tensor empty(Shape shape, TensorOptions opt) {
  auto t = new_impl();
  t->storage =
      std::allocate_shared<Storage>(detail::SmallAllocator<Storage>(), storage_bytes_of(shape, opt.dtype), opt.device);
  t->shape = std::move(shape);
  t->dtype = opt.dtype;
  Tensor r(std::move(t));
  if (opt.requires_grad) r.requires_grad_();
  return r;
}
Tensor full(const Shape& shape, double value, TensorOptions opt) {
  const bool rg = opt.requires_grad;
  opt.requires_grad = false;
  Tensor t = empty(shape, opt);
  backend(opt.device).fill(t, value);
  if (rg) t.requires_grad_();
  return t;
}
Tensor zeros(const Shape& shape, TensorOptions opt) { return full(shape, 0.0, opt); }
Tensor ones(const Shape& shape, TensorOptions opt) { return full(shape, 1.0, opt); }
Tensor scalar(double value, TensorOptions opt) { return full({}, value, opt); }
Tensor arange(int64_t n, TensorOptions opt) {
  Tensor t = empty({n}, opt);
  backend(opt.device).arange(t);
  return t;
}
template <class T> static Tensor from_host(const T* values, size_t count, const Shape& shape, TensorOptions opt) {
  if (int64_t(count) != numel(shape))
    throw Error("from_vector: " + std::to_string(count) + " values do not fill shape " + to_string(shape));
  const bool rg = opt.requires_grad;
  TensorOptions host = opt;
  host.device = Device::cpu();
  host.requires_grad = false;
  Tensor t = empty(shape, host);
  switch (opt.dtype) {
    case DType::f32:
      for (size_t i = 0; i < count; ++i) data_ptr<float>(t)[i] = float(values[i]);
      break;
    case DType::f64:
      for (size_t i = 0; i < count; ++i) data_ptr<double>(t)[i] = double(values[i]);
      break;
    case DType::i64:
      for (size_t i = 0; i < count; ++i) data_ptr<int64_t>(t)[i] = int64_t(values[i]);
      break;
  }
  if (opt.device != Device::cpu()) t = t.to(opt.device);
  if (rg) t.requires_grad_();
  return t;
}
Tensor from_vector(const std::vector<double>& v, const Shape& shape, TensorOptions opt) {
  return from_host(v.data(), v.size(), shape, opt);
}
Tensor from_vector(const std::vector<float>& v, const Shape& shape, TensorOptions opt) {
  return from_host(v.data(), v.size(), shape, opt);
}
Tensor from_ints(const std::vector<int64_t>& v, const Shape& shape, Device device) {
  return from_host(v.data(), v.size(), shape, {DType::i64, device, false});
}
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.options()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.options()); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.options()); }

}  // namespace flatmin
