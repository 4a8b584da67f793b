// CUDA against CPU, op by op: forward values and derivatives of orders 1-3 (gradient, H v,
// ∇³f[u,v]) of the same scalar function on both devices, for every case of the shared op
// table (tests/op_cases.cpp) marked parity. float64 to 1e-10 relative, float32 to 1e-4
// (value, gradient) and 1e-3 (H v, third), relative to the largest entry.
#include "tests/gpu/gpu_parity.hpp"
#include "tests/op_cases.hpp"

using namespace flatmin;
using namespace flatmin::gpu_test;
using flatmin::test::OpCase;

namespace {

Params inputs(const OpCase& c, uint64_t seed) {
  Generator g(seed);
  Params xs;
  for (size_t i = 0; i < c.shapes.size(); ++i) {
    if (c.distinct)
      xs.push_back(add_scalar(distinct_values(c.shapes[i], seed + i, 3.0), 0.013 * double(i + 1)));
    else
      xs.push_back(g.uniform(c.shapes[i], {DType::f64}, c.low, c.high));
  }
  return xs;
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("every op case: CUDA matches CPU in value and derivatives of orders 1-3") {
    for (const OpCase& c : test::op_cases()) {
      if (!c.parity) continue;
      const Params x = inputs(c, 11);
      const DeviceFn f = test::harness(c, test::output_shape(c, x));
      check_parity(c.label, f, x, DType::f64);
      check_parity(c.label, f, x, DType::f32);
    }
  }

  TEST_CASE("to_device: gradients flow back across devices at every order") {
    const Params x = {Generator(3).uniform({6}, {DType::f64}, -1, 1)};
    // The same function with its middle computed on the other device.
    DeviceFn f = [](const Params& p, Device d) {
      const Device other = d.kind == DeviceKind::cpu ? kCuda : Device::cpu();
      return sum(pow(to_device(tanh(to_device(p[0], other)), d), 3.0));
    };
    check_parity("to_device", f, x, DType::f64);
  }
}
