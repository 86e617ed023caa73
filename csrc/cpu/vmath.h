// exp and sqrt on the engine's SIMD vectors (simd.h), and their policies for infovae/pair_math.h: used by
// the pair engine (engine_impl.h) and the Stein kernel (stein.cpp).
#pragma once

#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "simd.h"

namespace infovae {
namespace cpu {
inline namespace INFOVAE_CPU_CAPABILITY {
namespace engine {

// ---------------------------------------------------------------------------------------------------
// exp for arguments x <= 0 (larger x would overflow the exponent field). float: Cephes expf (range reduction by ln 2 in two parts, degree-6 polynomial), max error about
// 1 ulp on [-87, 0] (tests/test_cpu_kernels.py measures it); arguments below -87 give 0 (exp(-87) is
// 1.6e-38). double: the same reduction with fdlibm's split ln 2 and the Taylor series to degree 13
// (truncation error < 5e-18 on |r| <= ln2/2); arguments below -708 give 0.
INFOVAE_AI vf32 vexp(vf32 x) {
  // Kernel arguments are <= 0 (-c r2 with r2 >= 0), so only the lower end is clamped.
  const vf32 lo = vset(-87.0f), magic = vset(12582912.0f);  // 1.5 * 2^23
  const vf32 xc = x < lo ? lo : x;
  const vf32 t = xc * 1.44269504088896341f + magic;  // round(x / ln2) in the low mantissa bits
  const vf32 n = t - magic;
  vf32 r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const vf32 z = r * r;
  vf32 y = vset(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const vi32 e = (((vi32)t - 0x4B400000) + 127) << 23;
  y = y * (vf32)e;
  const vf32 zero = {};
  return x < lo ? zero : y;
}

INFOVAE_AI vf64 vexp(vf64 x) {
  const vf64 lo = vset(-708.0), magic = vset(6755399441055744.0);  // 1.5 * 2^52
  const vf64 xc = x < lo ? lo : x;
  const vf64 t = xc * 1.4426950408889634074 + magic;
  const vf64 n = t - magic;
  vf64 r = xc - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  vf64 y = vset(1.0 / 6227020800.0);  // 1/13!
  y = y * r + 1.0 / 479001600.0;
  y = y * r + 1.0 / 39916800.0;
  y = y * r + 1.0 / 3628800.0;
  y = y * r + 1.0 / 362880.0;
  y = y * r + 1.0 / 40320.0;
  y = y * r + 1.0 / 5040.0;
  y = y * r + 1.0 / 720.0;
  y = y * r + 1.0 / 120.0;
  y = y * r + 1.0 / 24.0;
  y = y * r + 1.0 / 6.0;
  y = y * r + 0.5;
  y = y * r + 1.0;
  y = y * r + 1.0;
  const vi64 e = (((vi64)t - (int64_t)0x4338000000000000LL) + 1023) << 52;
  y = y * (vf64)e;
  const vf64 zero = {};
  return x < lo ? zero : y;
}

// The exp policy of infovae/pair_math.h on SIMD vectors.
struct VExp {
  template <class V>
  INFOVAE_AI V operator()(V x) const {
    return vexp(x);
  }
};

// Correctly rounded square root on SIMD vectors (laplacian and energy: r = sqrt(r2)), the same value as
// std::sqrt lane by lane.
template <typename V, typename T>
INFOVAE_AI V vsqrt_lanes(V x) {
  constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
  T a[L];
  std::memcpy(a, &x, sizeof(x));
  for (int i = 0; i < L; ++i) a[i] = std::sqrt(a[i]);
  std::memcpy(&x, a, sizeof(x));
  return x;
}
INFOVAE_AI vf32 vsqrt(vf32 x) {
#if INFOVAE_VBYTES == 64 && defined(__AVX512F__)
  return (vf32)_mm512_sqrt_ps((__m512)x);
#elif INFOVAE_VBYTES == 32 && defined(__AVX__)
  return (vf32)_mm256_sqrt_ps((__m256)x);
#elif INFOVAE_VBYTES == 16 && defined(__SSE2__)
  return (vf32)_mm_sqrt_ps((__m128)x);
#else
  return vsqrt_lanes<vf32, float>(x);
#endif
}
INFOVAE_AI vf64 vsqrt(vf64 x) {
#if INFOVAE_VBYTES == 64 && defined(__AVX512F__)
  return (vf64)_mm512_sqrt_pd((__m512d)x);
#elif INFOVAE_VBYTES == 32 && defined(__AVX__)
  return (vf64)_mm256_sqrt_pd((__m256d)x);
#elif INFOVAE_VBYTES == 16 && defined(__SSE2__)
  return (vf64)_mm_sqrt_pd((__m128d)x);
#else
  return vsqrt_lanes<vf64, double>(x);
#endif
}

// The sqrt policy of infovae/pair_math.h on SIMD vectors (read by laplacian and energy only).
struct VSqrt {
  template <class V>
  INFOVAE_AI V operator()(V x) const {
    return vsqrt(x);
  }
};

// The rsqrt and pow policies of pair_math.h's Stein radial math (imq: beta = -1/2 by 1 / sqrt, another
// beta by std::pow lane by lane).
struct VRsqrt {
  template <class V>
  INFOVAE_AI V operator()(V x) const {
    using T = std::remove_reference_t<decltype(x[0])>;
    return T(1) / vsqrt(x);
  }
};
struct VPow {
  template <class V, typename T>
  INFOVAE_AI V operator()(V x, T e) const {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    T a[L];
    std::memcpy(a, &x, sizeof(x));
    for (int i = 0; i < L; ++i) a[i] = std::pow(a[i], e);
    std::memcpy(&x, a, sizeof(x));
    return x;
  }
};

}  // namespace engine
}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae
