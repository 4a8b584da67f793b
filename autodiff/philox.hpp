// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
// counter-based generator. Element i of a draw depends only on (seed, counter i), so the
// CPU (any thread count) and CUDA produce identical numbers. Header-only, host+device.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FM_HD __host__ __device__ __forceinline__
#else
#define FM_HD inline
#endif

namespace flatmin::philox {

struct U4 {
  uint32_t x, y, z, w;
};

FM_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  return uint32_t(p);
}

// Four 32-bit words for counter `ctr` under key `key`.
FM_HD U4 block(uint64_t ctr, uint64_t key) {
  U4 c{uint32_t(ctr), uint32_t(ctr >> 32), 0u, 0u};
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(0xD2511F53u, c.x, &hi0);
    const uint32_t lo1 = mulhilo(0xCD9E8D57u, c.z, &hi1);
    c = U4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// uniform in (0, 1): never exactly 0, so log() below is finite
FM_HD double to_unit(uint32_t a, uint32_t b) {
  const uint64_t bits = (uint64_t(a) << 21) ^ uint64_t(b >> 11);  // 53 random bits
  return (double(bits & ((uint64_t(1) << 53) - 1)) + 0.5) * (1.0 / 9007199254740992.0);
}

// Element i of each distribution (one Philox block per element: simple and exact to share).
FM_HD double uniform(uint64_t seed, uint64_t i) {
  const U4 r = block(i, seed);
  return to_unit(r.x, r.y);
}
FM_HD double normal(uint64_t seed, uint64_t i) {  // Box-Muller
  const U4 r = block(i, seed);
  const double u1 = to_unit(r.x, r.y), u2 = to_unit(r.z, r.w);
  return ::sqrt(-2.0 * ::log(u1)) * ::cos(6.283185307179586476925 * u2);
}
FM_HD double rademacher(uint64_t seed, uint64_t i) { return (block(i, seed).x & 1u) ? 1.0 : -1.0; }

}  // namespace flatmin::philox
