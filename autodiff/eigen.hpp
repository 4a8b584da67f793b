// Internal to the project (not installed): Eigen, for the files that use it, with GCC 12's
// false AVX-512 warnings silenced at their source. GCC 12's own <avx512fintrin.h>
// initialises `__m512 __Y = __Y;` on purpose (the _mm512_undefined_* idiom); inlined into
// Eigen's packet math, GCC 12 reports it as -Wuninitialized / -Wmaybe-uninitialized (GCC
// bug 105593, fixed in GCC 13). The pragmas cover the lines of the headers first included
// here, so a file includes this before any header that could include <immintrin.h> itself.
#pragma once
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <Eigen/Dense>
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic pop
#endif
