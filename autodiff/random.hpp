// Seeded random tensors from a counter-based generator (philox.hpp): the numbers depend on
// the seed and on how many numbers were drawn before, never on the thread count or the
// device, so CPU and CUDA draw identical perturbations for the same seed.
#pragma once
#include <cstdint>
#include <vector>

#include "autodiff/tensor.hpp"

namespace flatmin {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }  // numbers drawn so far
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }

  Tensor uniform(const Shape& shape, TensorOptions opt = {}, double low = 0.0, double high = 1.0);
  Tensor normal(const Shape& shape, TensorOptions opt = {}, double mean = 0.0, double stddev = 1.0);
  Tensor rademacher(const Shape& shape, TensorOptions opt = {});  // ±1 with probability 1/2
  Tensor sphere(const Shape& shape, TensorOptions opt = {});      // uniform on the unit sphere of R^numel
  // One direction uniform on the unit sphere of the concatenation of `like` (for parameter
  // lists: ‖u‖ = 1 over all parameters together), split back into like's shapes.
  std::vector<Tensor> sphere_like(const std::vector<Tensor>& like);
  std::vector<Tensor> rademacher_like(const std::vector<Tensor>& like);
  std::vector<Tensor> normal_like(const std::vector<Tensor>& like);

  // Host draws (consume the same stream).
  double uniform01();
  int64_t randint(int64_t n);                   // uniform on {0, ..., n-1}
  std::vector<int64_t> permutation(int64_t n);  // Fisher-Yates on the stream

 private:
  Tensor draw(int kind, const Shape& shape, TensorOptions opt);
  uint64_t seed_ = 0, offset_ = 0;
};

}  // namespace flatmin
