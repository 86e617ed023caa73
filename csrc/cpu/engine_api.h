// Internal interface between the ATen-facing CPU ops (cpu_ops.cpp: checks, centering, packing) and the
// tiled pair engine (engine_impl.h, instantiated once per compute type in engine_f32.cpp / engine_f64.cpp).
//
// Data layout the engine reads (all in the compute type T, zero padded to a multiple of NR rows):
//   row panels  [n_pad / MR][q][MR]   for the points broadcast in the micro-kernel (x, a)
//   col panels  [n_pad / NR][q][NR]   for the points loaded as vectors (y, v)
//   rows        [n_pad][q_pad]        row-major with q padded to the vector width (v, y, w rows for
//                                     the matmul-shaped second stage)
// Everything is torch-free except at::parallel_for.
#pragma once

#include <cstdint>

#include "infovae/pair_math.h"

#if defined(__AVX512F__)
#define INFOVAE_VBYTES 64
#elif defined(__AVX__)
#define INFOVAE_VBYTES 32
#else
#define INFOVAE_VBYTES 16
#endif

namespace infovae {
namespace cpu {
namespace engine {

// Register blocking. L: lanes per vector; MR x NR: the pair micro-tile (MR broadcast rows, NRV vectors of
// columns); RI: rows per block of the matmul-shaped second stage.
template <typename T>
struct Dims {
  static constexpr int L = INFOVAE_VBYTES / static_cast<int>(sizeof(T));
  static constexpr int MR = INFOVAE_VBYTES == 64 ? 8 : 4;
  static constexpr int NRV = 2;
  static constexpr int NR = L * NRV;
  static constexpr int RI = INFOVAE_VBYTES == 64 ? 8 : 4;
};

inline int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t roundup(int64_t a, int64_t b) { return divup(a, b) * b; }

template <typename T>
struct PairProblem {
  int64_t N = 0, M = 0, d = 0, p = 0;
  int64_t d_pad = 0, p_pad = 0;  // row lengths of yr / vr
  const T* xp = nullptr;         // x row panels (MR), centered
  const T* xn = nullptr;         // |x_i|^2, [N_pad]
  const T* yp = nullptr;         // y col panels (NR), centered
  const T* yn = nullptr;         // |y_j|^2, [M_pad]
  const T* vcol = nullptr;       // p == 1: v as [M_pad]
  const T* vr = nullptr;         // p > 1: v rows [M_pad][p_pad]
  const T* vp = nullptr;         // grad and p > 1: v col panels (NR) with q = p
  const T* acol = nullptr;       // grad and p == 1: a as [N_pad]
  const T* ap = nullptr;         // grad and p > 1: a row panels (MR) with q = p
  const T* yr = nullptr;         // grad: centered y rows [M_pad][d_pad]
  const T* xr = nullptr;         // grad: centered x rows [N_pad][d]
  KernelSpec spec{};
  bool exclude_diagonal = false;
  double* S = nullptr;  // (N, p), zero on entry
  double* G = nullptr;  // (N, d) or nullptr
};

template <typename T>
struct QuadProblem {
  int64_t N = 0, d = 0, P = 0, P_pad = 0;
  const T* zp = nullptr;    // row panels (MR), centered
  const T* zq = nullptr;    // col panels (NR), centered
  const T* zn = nullptr;    // norms [N_pad]
  const T* wcol = nullptr;  // P == 1: w as [N_pad]
  const T* wr = nullptr;    // P > 1: w rows [N_pad][P_pad]
  KernelSpec spec{};
  bool exclude_diagonal = false;
  double* q = nullptr;  // (P,)
};

template <typename T>
struct GramProblem {
  int64_t N = 0, M = 0, d = 0;
  const T* xp = nullptr;
  const T* xn = nullptr;
  const T* yp = nullptr;
  const T* yn = nullptr;
  KernelSpec spec{};
  T* K = nullptr;  // (N, M) row-major
};

template <typename T>
void run_pair_reduce(const PairProblem<T>& pb);
template <typename T>
void run_quad_form(const QuadProblem<T>& pb);
template <typename T>
void run_gram(const GramProblem<T>& pb);

}  // namespace engine
}  // namespace cpu
}  // namespace infovae
