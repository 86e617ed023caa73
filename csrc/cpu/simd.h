// The CPU code's SIMD vocabulary on GCC/Clang vector types (the width is the -march width, engine_api.h's
// INFOVAE_VBYTES): the engine (engine_impl.h) and the dot kernel's GEMM path (dot_gemm.cpp) both use it.
#pragma once

#include <cstdint>
#include <cstring>
#include <utility>

#include "engine_api.h"

#define INFOVAE_AI inline __attribute__((always_inline))

namespace infovae {
namespace cpu {
inline namespace INFOVAE_CPU_CAPABILITY {
namespace engine {

typedef float vf32 __attribute__((vector_size(INFOVAE_VBYTES)));
typedef double vf64 __attribute__((vector_size(INFOVAE_VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(INFOVAE_VBYTES)));
typedef int64_t vi64 __attribute__((vector_size(INFOVAE_VBYTES)));

template <typename T>
struct VecT;

template <>
struct VecT<float> {
  using V = vf32;
  using VI = vi32;
  using I = int32_t;
};
template <>
struct VecT<double> {
  using V = vf64;
  using VI = vi64;
  using I = int64_t;
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

// D horizontal sums at once (a transposing tree: about 3 operations per vector where hsum needs
// 2 log2 L): out[q] = sum of the lanes of v[q], q < D <= L, each in a fixed pairwise order. A step takes
// two vectors whose lanes form groups of width G (one group per sum) and returns one whose groups have
// width G / 2, each the sum of a group's two halves: the first vector's groups, then the second's.
constexpr int halving_index(int N, int G, int o) {
  return ((o / (G / 2)) / (N / G)) * N + ((o / (G / 2)) % (N / G)) * G + o % (G / 2);
}
template <int N, int G, typename V, size_t... Is>
INFOVAE_AI V halve_groups(V x, V y, std::index_sequence<Is...>) {
  return __builtin_shufflevector(x, y, halving_index(N, G, Is)...) +
         __builtin_shufflevector(x, y, (halving_index(N, G, Is) + G / 2)...);
}
template <typename T, int G, int C>
INFOVAE_AI void reduce_groups(typename VecT<T>::V* v) {
  constexpr int L = Dims<T>::L;
  if constexpr (G > 1) {
    const typename VecT<T>::V zero = {};
#pragma GCC unroll 16
    for (int k = 0; k < (C + 1) / 2; ++k)
      v[k] = halve_groups<L, G>(v[2 * k], 2 * k + 1 < C ? v[2 * k + 1] : zero, std::make_index_sequence<L>{});
    reduce_groups<T, G / 2, (C + 1) / 2>(v);
  }
}
template <typename T, int D>
INFOVAE_AI void hsums(const typename VecT<T>::V (&v)[D], T (&out)[D]) {
  static_assert(D <= Dims<T>::L, "one vector holds the D sums");
  typename VecT<T>::V w[D];
#pragma GCC unroll 16
  for (int q = 0; q < D; ++q) w[q] = v[q];
  reduce_groups<T, Dims<T>::L, D>(w);
#pragma GCC unroll 16
  for (int q = 0; q < D; ++q) out[q] = w[0][q];
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
}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae
