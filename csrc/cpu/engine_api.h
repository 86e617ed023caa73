// Internal interface between the ATen-facing CPU ops (cpu_ops.cpp: checks, packing) and the tiled pair
// engine (engine_impl.h, instantiated per compute type in engine_f32.cpp / engine_f64.cpp and, for the
// kernels beyond rbf / imq, engine_ext_f32.cpp / engine_ext_f64.cpp).
//
// Data layout the engine reads (all in the compute type T, zero padded to a multiple of NR rows):
//   row panels  [n_pad / MR][q][MR]   for the points broadcast in the micro-kernel (x, a, w)
//   col panels  [n_pad / NR][q][NR]   for the points loaded as vectors (y, v, w, a)
//   rows        [n_pad][q_pad]        row-major with q padded to the vector width (the B operand of the
//                                     matmul-shaped second stage)
// Per-pair math: infovae/pair_math.h. Everything is torch-free except at::parallel_for.
#pragma once

// csrc/cpu is compiled once per CPU capability (setup.py: baseline, avx2, avx512, or one native build), each
// build its own module _cpu_<capability> with its own -march. Everything in it lives in the inline
// namespace infovae::cpu::<capability>, as ATen's CPU_CAPABILITY, so no two variants share a symbol.
#ifndef INFOVAE_CPU_CAPABILITY
#error "csrc/cpu is compiled once per CPU capability: define INFOVAE_CPU_CAPABILITY (setup.py does)"
#endif

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
inline namespace INFOVAE_CPU_CAPABILITY {
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
  // The second stages (sum_j W_ij y_j) run in lane form up to this d or p (1 thread, N = M = 8192,
  // float32, AVX-512, against the broadcast form: quad_form's full path d = 2 -25%, d = 8 -6%, d = 10 about
  // even, d = 16 +8%; pair_reduce with gradient over its value, p = 1: d = 2 2.05x -> 1.50x, d = 8
  // 1.83x -> 1.58x; p = d + 1 (svgd): d = 2 3.2x -> 1.9x, d = 5 2.85x -> 2.05x).
  static constexpr int LaneD = L < 8 ? L : 8;
};

inline int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t roundup(int64_t a, int64_t b) { return divup(a, b) * b; }

// The kernel: kind and the float64 params as the op received them (1 <= n_scales <= kMaxScales).
struct KernelArg {
  KernelKind kind = KernelKind::RBF;
  int n_scales = 0;
  const double* params = nullptr;
};

// One point set: x of gram / pair_reduce, or z of quad_form.
template <typename T>
struct PointSet {
  int64_t n = 0, d = 0, d_pad = 0;
  const T* rp = nullptr;     // row panels (MR), q = d
  const T* cp = nullptr;     // col panels (NR), q = d
  const T* norms = nullptr;  // |p_i|^2 [n_pad], accumulated like one lane of the dot micro-kernel
  const T* rows = nullptr;   // [n_pad][d_pad]
};

// S_i = sum_j k_ij v_j, G_i = sum_j g_ij (a_i . v_j)(x_i - y_j).
template <typename T>
struct PairProblem {
  PointSet<T> x, y;          // x: rp, norms, rows; y: cp, norms, rows
  int64_t p = 0, p_pad = 0;
  const T* vcol = nullptr;   // p == 1: v as [M_pad]
  const T* vr = nullptr;     // p > 1: v rows [M_pad][p_pad]
  const T* vp = nullptr;     // p > 1 with grad or p <= LaneD: v col panels (NR), q = p
  const T* acol = nullptr;   // grad and p == 1: a as [N_pad]
  const T* ap = nullptr;     // grad and p > 1: a row panels (MR), q = p
  const T* vy = nullptr;     // grad, p == 1 and d > LaneD: v_j y_j rows [M_pad][d_pad]
  KernelArg kernel;
  bool exclude_diagonal = false;
  double* S = nullptr;       // (N, p)
  double* G = nullptr;       // (N, d) or nullptr
};

// q_p = sum_ij w_ip k_ij w_jp, S_i = sum_j k_ij w_j, G_i = sum_j g_ij (a_i . w_j)(z_i - z_j), from one
// symmetric sweep.
template <typename T>
struct QuadProblem {
  PointSet<T> z;             // rp, cp, norms, rows
  int64_t P = 0, P_pad = 0;
  const T* wcol = nullptr;   // P == 1: w as [N_pad]
  const T* acol = nullptr;   // grad and P == 1: a as [N_pad]
  const T* wz = nullptr;     // grad and P == 1: w_i z_i rows [N_pad][d_pad]
  const T* wr = nullptr;     // P > 1: w rows [N_pad][P_pad]
  const T* wrp = nullptr;    // grad and P > 1: w row panels (MR), q = P
  const T* wcp = nullptr;    // grad and P > 1: w col panels (NR), q = P
  const T* arp = nullptr;    // grad and P > 1: a row panels (MR), q = P
  const T* acp = nullptr;    // grad and P > 1: a col panels (NR), q = P
  KernelArg kernel;
  bool exclude_diagonal = false;
  double* q = nullptr;       // (P,)
  double* S = nullptr;       // (N, P) or nullptr
  double* G = nullptr;       // (N, d) or nullptr
};

template <typename T>
struct GramProblem {
  PointSet<T> x, y;          // x: rp, norms; y: cp, norms
  KernelArg kernel;
  bool derivative = false;
  T* K = nullptr;            // (N, M) row-major
};

template <typename T>
void run_pair_reduce(const PairProblem<T>& pb);
template <typename T>
void run_quad_form(const QuadProblem<T>& pb);
template <typename T>
void run_gram(const GramProblem<T>& pb);

}  // namespace engine
}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae
