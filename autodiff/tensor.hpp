// Tensor: a dense, row-major, contiguous array with a dtype, a device and (optionally) a
// place in the autograd graph. Views exist only where they are free (reshape, detach).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace flatmin {

// Every user-facing failure is thrown as this one type (there are no subclasses to catch
// separately): the message names the op or argument, and the shapes.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class DType : uint8_t { f32, f64, i64 };
size_t dtype_size(DType);
const char* dtype_name(DType);
inline bool is_floating(DType d) { return d != DType::i64; }

enum class DeviceKind : uint8_t { cpu, cuda };
struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;
  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {DeviceKind::cuda, i}; }
  static Device parse(const std::string& s);  // "cpu", "cuda", "cuda:1"
  bool operator==(const Device&) const = default;
  std::string str() const;
};

using Shape = std::vector<int64_t>;
// Element count; Error naming the shape for a negative extent or a product past int64.
int64_t numel(const Shape& s);
// numel(s) · dtype_size(dtype), checked the same way.
size_t storage_bytes_of(const Shape& s, DType dtype);
std::string to_string(const Shape& s);

// Raw memory owned by one device's allocator. `version` counts in-place writes so that a
// tensor saved for backward and modified afterwards is detected instead of silently used.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  uint64_t version = 0;
  Storage(size_t bytes, Device device);
  static int64_t live_bytes();  // all devices together: for tests of constant memory
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Node;     // graph.hpp
struct Series;  // graph.hpp: a truncated Taylor series carried by forward mode

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  DType dtype = DType::f32;
  std::shared_ptr<Node> node;      // leaf node (requires_grad leaf) or the op that made it
  std::shared_ptr<Series> series;  // forward/Taylor mode only (graph.hpp); null otherwise
};

struct TensorOptions {
  DType dtype = DType::f32;
  Device device = Device::cpu();
  bool requires_grad = false;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return checked("shape")->shape; }
  int64_t dim() const { return int64_t(shape().size()); }
  int64_t size(int64_t axis) const;  // negative axes count from the end
  int64_t numel() const;
  DType dtype() const { return checked("dtype")->dtype; }
  Device device() const { return checked("device")->storage->device; }
  TensorOptions options() const { return {dtype(), device(), false}; }

  // Host access (CPU tensors only; checked).
  template <class T> T* data();
  template <class T> const T* data() const;
  void* raw();
  const void* raw() const;
  double item() const;                    // one element, any device
  std::vector<double> to_vector() const;  // copies to host as double
  std::vector<int64_t> to_int_vector() const;

  // Autograd.
  bool requires_grad() const;
  Tensor& requires_grad_(bool on = true);  // leaves only
  bool is_leaf() const;
  Tensor grad() const;  // accumulated by backward(); undefined before
  void set_grad(const Tensor& g);
  void zero_grad();       // drops the accumulated gradient
  Tensor detach() const;  // same storage, no graph (and no Taylor series)
  void backward() const;  // scalar only: accumulates d(this)/d(leaf) into leaves' grad()
  const std::shared_ptr<Node>& node() const;

  Tensor to(Device d) const;
  Tensor to(DType t) const;
  Tensor clone() const;  // a copy with its own storage, recorded (differentiable)

  // In-place updates for optimizers; refused while they would corrupt a recording graph.
  Tensor& copy_(const Tensor& src);
  Tensor& add_(const Tensor& other, double alpha = 1.0);
  Tensor& mul_(double s);
  Tensor& fill_(double v);

  std::string str() const;  // short description: dtype, shape, device (and values if small)
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
  void check_defined(const char* what) const {
    if (!impl_) throw_undefined(what);
  }
  const TensorImpl* checked(const char* what) const {
    check_defined(what);
    return impl_.get();
  }
  [[noreturn]] static void throw_undefined(const char* what);
};

// ---- creation ----
Tensor empty(Shape shape, TensorOptions opt = {});
Tensor zeros(const Shape& shape, TensorOptions opt = {});
Tensor ones(const Shape& shape, TensorOptions opt = {});
Tensor full(const Shape& shape, double value, TensorOptions opt = {});
Tensor scalar(double value, TensorOptions opt = {});
Tensor arange(int64_t n, TensorOptions opt = {});
Tensor from_vector(const std::vector<double>& values, const Shape& shape, TensorOptions opt = {});
Tensor from_vector(const std::vector<float>& values, const Shape& shape, TensorOptions opt = {});
Tensor from_ints(const std::vector<int64_t>& values, const Shape& shape, Device device = Device::cpu());
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor empty_like(const Tensor& t);

// Host data view of a tensor's storage for kernels; allocation-free.
template <class T> T* data_ptr(const Tensor& t) { return static_cast<T*>(t.impl()->storage->data) + t.impl()->offset; }

}  // namespace flatmin
