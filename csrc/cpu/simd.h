// The CPU code's SIMD vocabulary on GCC/Clang vector types (the width is the -march width, engine_api.h's
// INFOVAE_VBYTES): the engine (engine_impl.h) and the dot kernel's GEMM path (dot_gemm.cpp) both use it.
#pragma once

#include <cstdint>
#include <cstring>

#include "engine_api.h"

#define INFOVAE_AI inline __attribute__((always_inline))

namespace infovae {
namespace cpu {
namespace engine {

typedef float vf32 __attribute__((vector_size(INFOVAE_VBYTES)));
typedef double vf64 __attribute__((vector_size(INFOVAE_VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(INFOVAE_VBYTES)));
typedef int64_t vi64 __attribute__((vector_size(INFOVAE_VBYTES)));

template <typename T>
struct VecT;
typedef float vf32h __attribute__((vector_size(INFOVAE_VBYTES / 2)));
typedef double vf64h __attribute__((vector_size(INFOVAE_VBYTES / 2)));

template <>
struct VecT<float> {
  using V = vf32;
  using VI = vi32;
  using I = int32_t;
  using VH = vf32h;  // half width
};
template <>
struct VecT<double> {
  using V = vf64;
  using VI = vi64;
  using I = int64_t;
  using VH = vf64h;
};

template <typename T>
INFOVAE_AI typename VecT<T>::V vload(const T* p) {
  typename VecT<T>::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T, typename V>
INFOVAE_AI void vstore(T* p, V v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
INFOVAE_AI typename VecT<T>::V vset(T x) {
  // x - 0 is x exactly (also for -0), so this folds to a plain broadcast; 0 + x would not fold.
  const typename VecT<T>::V zero = {};
  return x - zero;
}
// Horizontal sum in a fixed (pairwise) order: lanes i and i + N/2 added, halving down to one lane. Kept
// in registers (halves of the vector, not a stack array: a vector stored and read back lane by lane
// stalls on store forwarding, which dominated the difference-form gradient stage's per-(i, k) sums).
template <typename T, int N>
struct VecN {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <typename T, int N>
INFOVAE_AI T hsum_tree(typename VecN<T, N>::type v) {
  if constexpr (N == 2) {
    return v[0] + v[1];
  } else {
    using H = typename VecN<T, N / 2>::type;
    H lo, hi;
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
    return hsum_tree<T, N / 2>(lo + hi);
  }
}
template <typename T>
INFOVAE_AI T hsum(typename VecT<T>::V v) {
  return hsum_tree<T, Dims<T>::L>(v);
}

// The lane indices 0, 1, ..., L - 1 (masks of a tile's diagonal and padding lanes).
template <typename T>
struct Iota {
  typename VecT<T>::VI v;
  Iota() {
    using I = typename VecT<T>::I;
    I a[Dims<T>::L];
    for (int i = 0; i < Dims<T>::L; ++i) a[i] = i;
    std::memcpy(&v, a, sizeof(v));
  }
};

}  // namespace engine
}  // namespace cpu
}  // namespace infovae
