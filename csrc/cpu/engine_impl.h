// The tiled pair engine (KeOps style). Per MR x NR micro-tile: register-blocked dot products (explicit
// SIMD through GCC/Clang vector extensions, so the width is the -march width), or, on tiles where the
// expansion |x|^2 + |y|^2 - 2 x.y would lose the distance (the lossy rule of infovae/pair_math.h),
// coordinate differences; then the per-pair math of infovae/pair_math.h on SIMD vectors (exp: vexp
// below) and the reductions. Products of a tile of weights with a block of rows (K W, the gradient's
// sum_j W_ij z_j) run as a matmul-shaped second stage on a tile buffer: q vectorised (broadcast form),
// or for quad_form with small d pairs vectorised (lane forms), where a vector of q would be mostly padding.
//
// Partials over one tile are accumulated in T (float32 for float32/half inputs) and added to float64
// accumulators in a fixed order; no accumulator is written by two threads, so there are no atomics
// and results do not depend on the thread count or on scheduling (bitwise).
//
// quad_form is symmetric: blocks of B points; row block I owns the tiles (I, (I + t) mod nb) for
// t = 0 .. nb/2 (t = nb/2 only for I < nb/2 when nb is even), so each unordered pair of blocks is one
// tile, and every row block has the same number of tiles. Value only: row blocks run in parallel.
// With S or G: the same tiles run in rounds t (in order); within a round no two tiles share a row
// block or a column block, so a tile adds its row part to the row accumulators of I and its column
// part to the column accumulators of J without sharing. Per-tile q partials are stored and summed in
// one canonical order: q is bitwise the same with and without S and G.
//
// Included only by engine_f32.cpp / engine_f64.cpp (rbf, imq) and engine_ext_f32.cpp / engine_ext_f64.cpp
// (laplacian, energy, polynomial).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "engine_api.h"
#include "simd.h"
#include "vmath.h"

namespace infovae {
namespace cpu {
inline namespace INFOVAE_CPU_CAPABILITY {
namespace engine {

// Where r2 comes from, fixed at compile time per kernel kind: coordinate differences always (laplacian,
// energy), the raw dot product always (polynomial: Diff = false, and the pair value is x.y itself), or
// the lossy rule per call / tile (rbf, imq). f(std::integral_constant<bool, Diff>).
template <KernelKind K, class F>
INFOVAE_AI void with_diff(bool lossy, F&& f) {
  if constexpr (always_differences(K))
    f(std::true_type{});
  else if constexpr (is_dot_kernel(K))
    f(std::false_type{});
  else if (lossy)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// ---------------------------------------------------------------------------------------------------
// Micro-kernel: acc[r][v] = sum_k xp[k][r] * yp[k][v*L + lane] (row panel x col panel), q-long, or with
// Diff, sum_k (xp[k][r] - yp[k][v*L + lane])^2.
template <typename T, bool Diff = false>
INFOVAE_AI void pair_micro(const T* __restrict xp, const T* __restrict yp, int64_t q,
                           typename VecT<T>::V (&acc)[Dims<T>::MR][Dims<T>::NRV]) {
  using V = typename VecT<T>::V;
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NRV = Dims<T>::NRV, NR = Dims<T>::NR;
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NRV; ++v) acc[r][v] = V{};
  for (int64_t k = 0; k < q; ++k) {
    V yv[NRV];
#pragma GCC unroll 8
    for (int v = 0; v < NRV; ++v) yv[v] = vload(yp + k * NR + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const V xb = vset<T>(xp[k * MR + r]);
#pragma GCC unroll 8
      for (int v = 0; v < NRV; ++v) {
        if constexpr (Diff)
          acc[r][v] = add_squared_difference(acc[r][v], xb, yv[v]);
        else
          acc[r][v] += xb * yv[v];
      }
    }
  }
}

// One row panel (MR rows from gi0) against ncp column panels (from gj0).
template <typename T>
struct PanelArgs {
  int64_t d = 0, p = 0, gi0 = 0, gj0 = 0, ncp = 0;
  bool excl = false;                  // drop i == j (global indices)
  const T* xpan = nullptr;            // row panel [d][MR]
  const T* xn = nullptr;              // its norms
  const T* ypan = nullptr;            // col panels [ncp][d][NR]
  const T* yn = nullptr;              // their norms
  const T* vcol = nullptr;            // v_j (p == 1) from gj0
  const T* wrow = nullptr;            // w_i (p == 1) from gi0: column sums
  const T* appan = nullptr;           // a row panel [p][MR]         (GradPG)
  const T* vppan = nullptr;           // v col panels [ncp][p][NR]   (GradPG)
  const T* wppan = nullptr;           // w row panel [p][MR]         (GradPG, column side)
  const T* acpan = nullptr;           // a col panels [ncp][p][NR]   (GradPG, column side)
  T* kb = nullptr;                    // StoreK / StoreG: k or g tile, row stride ldb
  T* hb = nullptr;                    // GradP1: g; GradPG: g (a_i . v_j)
  T* hcb = nullptr;                   // GradPG column side: g (w_i . a_j), or nullptr
  int64_t ldb = 0;
  T* colS = nullptr;                  // ColS: += sum_i k_ij w_i per column, or nullptr
  T* colU = nullptr;                  // GradP1: += sum_i g_ij w_i; GradPG: += sum_i hc_ij; or nullptr
};

// Flags. FuseS: s_out[r] = sum_j k_ij v_j (p == 1) in registers. StoreK / StoreG: write k / g to kb.
// ColS: column sums of k w_i into colS. GradP1: g to hb, rs_out[r] = sum_j g_ij v_j, column sums of
// g w_i into colU. GradPG: W = g (a_i . v_j) to hb, rs_out[r] = its row sums; with hcb, the column side
// g (w_i . a_j) to hcb and its column sums into colU.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // wat: read only when written (col_side)
template <typename T, KernelKind K, int NS, bool Diff, bool FuseS, bool StoreK, bool StoreG, bool ColS, bool GradP1,
          bool GradPG>
void sweep_row_panel(const KernelParams<T>& kp, const PanelArgs<T>& pa, T* s_out, T* rs_out) {
  using V = typename VecT<T>::V;
  using VI = typename VecT<T>::VI;
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NRV = Dims<T>::NRV, NR = Dims<T>::NR;
  constexpr bool NeedG = StoreG || GradP1 || GradPG;
  // polynomial: acc is x.y; G needs no row / column sums of the weights (no x_i sum_j W_ij term)
  constexpr bool Dot = is_dot_kernel(K);
  static_assert(!(Dot && Diff), "a dot kernel never uses coordinate differences");
  static const Iota<T> iota;
  const int64_t d = pa.d, p = pa.p;
  V s_acc[MR], rs_acc[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) s_acc[r] = rs_acc[r] = V{};
  // w_i for the column sums, broadcast from memory where used (registers are scarce around the dot
  // micro-kernel); pair_reduce has no column side and reads zeros
  const T zeros[MR] = {};
  const T* wrow = (ColS || GradP1) && pa.wrow ? pa.wrow : zeros;
  const bool col_side = GradPG && pa.hcb != nullptr;

  for (int64_t jp = 0; jp < pa.ncp; ++jp) {
    const int64_t gj = pa.gj0 + jp * NR;
    alignas(64) T avt[GradPG ? MR * NR : 1];
    alignas(64) T wat[GradPG ? MR * NR : 1];
    if constexpr (GradPG) {
      V av[MR][NRV];
      pair_micro<T>(pa.appan, pa.vppan + jp * p * NR, p, av);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NRV; ++v) vstore(avt + r * NR + v * L, av[r][v]);
      if (col_side) {
        pair_micro<T>(pa.wppan, pa.acpan + jp * p * NR, p, av);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
          for (int v = 0; v < NRV; ++v) vstore(wat + r * NR + v * L, av[r][v]);
      }
    }
    V acc[MR][NRV];
    pair_micro<T, Diff>(pa.xpan, pa.ypan + jp * d * NR, d, acc);

    auto epilogue = [&](auto masked_tag) {
      constexpr bool Masked = decltype(masked_tag)::value;
#pragma GCC unroll 8
      for (int v = 0; v < NRV; ++v) {
        const int64_t off = jp * NR + v * L;
        V ynv = {};
        if constexpr (!Diff && !Dot) ynv = vload(pa.yn + off);
        V vv = {};
        if constexpr (FuseS || GradP1) vv = vload(pa.vcol + off);
        V cs = {}, cu = {};
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
          V r2;  // the dot product for Dot
          if constexpr (Diff || Dot)
            r2 = acc[r][v];
          else
            r2 = squared_distance(vset<T>(pa.xn[r]), ynv, acc[r][v]);
          V k, g;
          if constexpr (Dot && NeedG)
            dot_kernel_value_and_weight(kp, r2, k, g);
          else if constexpr (Dot)
            k = dot_kernel_value(kp, r2);
          else if constexpr (NeedG)
            kernel_value_and_weight<K, NS>(kp, r2, VExp{}, k, g, VSqrt{});
          else
            k = kernel_value<K, NS>(kp, r2, VExp{}, VSqrt{});
          if constexpr (Masked) {
            // i == j  <=>  gj + v*L + lane - (gi0 + r) == 0
            const VI idx =
                iota.v + static_cast<std::remove_reference_t<decltype(iota.v[0])>>(gj + v * L - pa.gi0 - r);
            const VI zi = {};
            const V zero = {};
            k = idx == zi ? zero : k;
            if constexpr (NeedG) g = idx == zi ? zero : g;
          }
          if constexpr (FuseS) s_acc[r] += k * vv;
          if constexpr (StoreK) vstore(pa.kb + r * pa.ldb + off, k);
          if constexpr (StoreG) vstore(pa.kb + r * pa.ldb + off, g);
          if constexpr (ColS) cs += k * vset<T>(wrow[r]);
          if constexpr (GradP1) {
            if constexpr (!Dot) rs_acc[r] += g * vv;
            if constexpr (!Dot) cu += g * vset<T>(wrow[r]);
            vstore(pa.hb + r * pa.ldb + off, g);
          }
          if constexpr (GradPG) {
            const V w = g * vload(avt + r * NR + v * L);
            if constexpr (!Dot) rs_acc[r] += w;
            vstore(pa.hb + r * pa.ldb + off, w);
            if (col_side) {
              const V wc = g * vload(wat + r * NR + v * L);
              if constexpr (!Dot) cu += wc;
              vstore(pa.hcb + r * pa.ldb + off, wc);
            }
          }
        }
        if constexpr (ColS)
          if (pa.colS) vstore(pa.colS + off, vload(pa.colS + off) + cs);
        if constexpr ((GradP1 || GradPG) && !Dot)
          if (pa.colU) vstore(pa.colU + off, vload(pa.colU + off) + cu);
      }
    };
    const bool masked = pa.excl && gj < pa.gi0 + MR && pa.gi0 < gj + NR;
    if (masked)
      epilogue(std::true_type{});
    else
      epilogue(std::false_type{});
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    if constexpr (FuseS) s_out[r] = hsum<T>(s_acc[r]);
    if constexpr (GradP1 || GradPG) rs_out[r] = hsum<T>(rs_acc[r]);
  }
}

#pragma GCC diagnostic pop

// ---------------------------------------------------------------------------------------------------
// Matmul-shaped second stage: C[o][q] = sum_{j < ninner} A(o, j) * B[j][q] for nout (multiple of RI)
// output rows and nqv vectors of q, A(o, j) = A[o * lda + j], or with Tr A[j * lda + o] (the transposed
// tile: column sums of a tile against the rows of the row block). Broadcast form (q vectorised),
// accumulated in T in j order.
template <typename T, int RI, int QV, bool Tr, bool Acc>
INFOVAE_AI void bgemm_block(const T* __restrict A, int64_t lda, int64_t ninner, const T* __restrict B, int64_t ldb,
                            T* __restrict C, int64_t ldc) {
  using V = typename VecT<T>::V;
  constexpr int L = Dims<T>::L;
  const V zero = {};
  V acc[RI][QV];
#pragma GCC unroll 16
  for (int r = 0; r < RI; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) acc[r][v] = zero;
  for (int64_t j = 0; j < ninner; ++j) {
    V b[QV];
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) b[v] = vload(B + j * ldb + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < RI; ++r) {
      const V a = (Tr ? A[j * lda + r] : A[r * lda + j]) - zero;
#pragma GCC unroll 4
      for (int v = 0; v < QV; ++v) acc[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RI; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) {
      if constexpr (Acc)
        vstore(C + r * ldc + v * L, vload(C + r * ldc + v * L) + acc[r][v]);
      else
        vstore(C + r * ldc + v * L, acc[r][v]);
    }
}

template <typename T, bool Tr = false, bool Acc = false>
void bgemm(const T* A, int64_t lda, int64_t nout, int64_t ninner, const T* B, int64_t ldb, int64_t nqv, T* C,
           int64_t ldc) {
  constexpr int L = Dims<T>::L, RI = Dims<T>::RI;
  for (int64_t i = 0; i < nout; i += RI) {
    const T* Ai = Tr ? A + i : A + i * lda;
    int64_t qv = 0;
    for (; qv + 3 <= nqv; qv += 3)
      bgemm_block<T, RI, 3, Tr, Acc>(Ai, lda, ninner, B + qv * L, ldb, C + i * ldc + qv * L, ldc);
    if (nqv - qv == 2)
      bgemm_block<T, RI, 2, Tr, Acc>(Ai, lda, ninner, B + qv * L, ldb, C + i * ldc + qv * L, ldc);
    else if (nqv - qv == 1)
      bgemm_block<T, RI, 1, Tr, Acc>(Ai, lda, ninner, B + qv * L, ldb, C + i * ldc + qv * L, ldc);
  }
}

// Both sides of a symmetric tile in one pass over H (small d: each broadcast H_ij feeds two FMAs):
//   Cr[i][q] += sum_j H[i][j] BJ[j][q]  (i < nout, multiple of RI),  Cc[j][q] += sum_i H[i][j] BI[i][q]
// (j < ncols; summed over j, and over i in blocks of RI, in order). One vector of q per pass.
template <typename T>
void bgemm_sym(const T* __restrict H, int64_t lda, int64_t nout, int64_t ncols, const T* __restrict BJ,
               const T* __restrict BI, int64_t ldb, int64_t nqv, T* __restrict Cr, T* __restrict Cc, int64_t ldc) {
  using VV = typename VecT<T>::V;
  constexpr int L = Dims<T>::L, RI = Dims<T>::RI;
  const VV zero = {};
  for (int64_t qv = 0; qv < nqv; ++qv) {
    const int64_t qo = qv * L;
    for (int64_t i = 0; i < nout; i += RI) {
      VV acc[RI], bi[RI];
#pragma GCC unroll 16
      for (int r = 0; r < RI; ++r) acc[r] = zero, bi[r] = vload(BI + (i + r) * ldb + qo);
      const T* Hi = H + i * lda;
      for (int64_t j = 0; j < ncols; ++j) {
        const VV b = vload(BJ + j * ldb + qo);
        VV cc = zero;
#pragma GCC unroll 16
        for (int r = 0; r < RI; ++r) {
          const VV a = Hi[r * lda + j] - zero;  // broadcast
          acc[r] += a * b;
          cc += a * bi[r];
        }
        vstore(Cc + j * ldc + qo, vload(Cc + j * ldc + qo) + cc);
      }
#pragma GCC unroll 16
      for (int r = 0; r < RI; ++r) vstore(Cr + (i + r) * ldc + qo, vload(Cr + (i + r) * ldc + qo) + acc[r]);
    }
  }
}

// The column side of a symmetric tile in lane form, for d <= min(8, L) (D = d at compile time):
//   CT[q][j] += sum_i H[i][j] BI[i][q]   (j < njv * L, lanes over j; i < nrows, in order)
// with CT transposed ([q][ldt]). The broadcast form above spends one FMA per pair on a vector of q that is
// mostly padding when d < L; here a vector is L pairs and a pair costs D / L FMAs (each broadcast BI[i][q]
// feeds JV vectors of columns; JV * D <= 16 accumulators stay in registers).
template <typename T, int D>
void lane_col_stage(const T* __restrict H, int64_t ldh, int64_t nrows, int64_t njv, const T* __restrict BI,
                    int64_t ldb, T* __restrict CT, int64_t ldt) {
  using V = typename VecT<T>::V;
  constexpr int L = Dims<T>::L, JV = 2;
  static_assert(D <= 8, "JV * D accumulators in registers");
  for (int64_t jv = 0; jv < njv; jv += JV) {
    V c[JV][D];
#pragma GCC unroll 16
    for (int q = 0; q < D; ++q)
#pragma GCC unroll 2
      for (int u = 0; u < JV; ++u) c[u][q] = vload(CT + q * ldt + (jv + u) * L);
    for (int64_t i = 0; i < nrows; ++i) {
      V h[JV];
#pragma GCC unroll 2
      for (int u = 0; u < JV; ++u) h[u] = vload(H + i * ldh + (jv + u) * L);
#pragma GCC unroll 16
      for (int q = 0; q < D; ++q) {
        const V b = vset<T>(BI[i * ldb + q]);
#pragma GCC unroll 2
        for (int u = 0; u < JV; ++u) c[u][q] += h[u] * b;
      }
    }
#pragma GCC unroll 16
    for (int q = 0; q < D; ++q)
#pragma GCC unroll 2
      for (int u = 0; u < JV; ++u) vstore(CT + q * ldt + (jv + u) * L, c[u][q]);
  }
}

// The row side in lane form, for d <= min(8, L):
//   C[i][q] += sum_j H[i][j] w_j y_j[q]   (i < nrows; j < njv * L in order, y in col panels [jp][q][NR];
//                                          w_j = 1 without HasW)
// summed per lane, then across lanes (hsums); RI rows share each load of y.
template <typename T, int D, bool HasW = true>
void lane_row_stage(const T* __restrict H, int64_t ldh, int64_t nrows, int64_t njv, const T* __restrict ycp,
                    const T* __restrict w, T* __restrict C, int64_t ldc) {
  using V = typename VecT<T>::V;
  constexpr int L = Dims<T>::L, NRV = Dims<T>::NRV, NR = Dims<T>::NR, RI = 2;
  static_assert(D <= 8, "RI * D accumulators in registers");
  for (int64_t i = 0; i < nrows; i += RI) {
    V acc[RI][D];
#pragma GCC unroll 2
    for (int r = 0; r < RI; ++r)
#pragma GCC unroll 16
      for (int q = 0; q < D; ++q) acc[r][q] = V{};
    for (int64_t jv = 0; jv < njv; ++jv) {
      V h[RI];
#pragma GCC unroll 2
      for (int r = 0; r < RI; ++r) h[r] = vload(H + (i + r) * ldh + jv * L);
      if constexpr (HasW) {
        const V wv = vload(w + jv * L);
#pragma GCC unroll 2
        for (int r = 0; r < RI; ++r) h[r] *= wv;
      }
      const T* yv = ycp + (jv / NRV) * D * NR + (jv % NRV) * L;
#pragma GCC unroll 16
      for (int q = 0; q < D; ++q) {
        const V y = vload(yv + q * NR);
#pragma GCC unroll 2
        for (int r = 0; r < RI; ++r) acc[r][q] += h[r] * y;
      }
    }
#pragma GCC unroll 2
    for (int r = 0; r < RI; ++r) {
      T s[D];
      hsums<T, D>(acc[r], s);
#pragma GCC unroll 16
      for (int q = 0; q < D; ++q) C[(i + r) * ldc + q] += s[q];
    }
  }
}

// f(std::integral_constant<int, D>) for the run-time d, 1 <= d <= Max.
template <int Max, int D = 1, class F>
INFOVAE_AI void with_dim(int64_t d, F&& f) {
  if constexpr (D <= Max) {
    if (d == D)
      f(std::integral_constant<int, D>{});
    else
      with_dim<Max, D + 1>(d, f);
  }
}

// pair_reduce's second stages: C[i][q] = sum_j H[i][j] w_j y_j[q] for i < nrows, q < nq and the columns
// j0 + j, j < ncp * NR (w_j = 1 without HasW). Lane form from y's col panels ycp [jp][q][NR] when
// nq <= LaneD, else broadcast form from its rows yr [j][ldc] (w already applied there).
template <typename T, bool HasW>
void row_stage(const T* H, int64_t ldh, int64_t nrows, int64_t ncp, int64_t nq, int64_t j0, const T* ycp,
               const T* w, const T* yr, T* C, int64_t ldc) {
  constexpr int L = Dims<T>::L, NR = Dims<T>::NR, NRV = Dims<T>::NRV;
  if (nq <= Dims<T>::LaneD) {
    std::fill(C, C + nrows * ldc, T(0));
    with_dim<Dims<T>::LaneD>(nq, [&](auto dim) {
      lane_row_stage<T, decltype(dim)::value, HasW>(H, ldh, nrows, ncp * NRV, ycp + j0 * nq,
                                                    HasW ? w + j0 : nullptr, C, ldc);
    });
  } else {
    bgemm<T>(H, ldh, nrows, ncp * NR, yr + j0 * ldc, ldc, ldc / L, C, ldc);
  }
}

// The gradient's second stage in difference form, for tiles whose distances use coordinate differences
// (there, z_i sum_j W_ij - sum_j W_ij z_j would cancel the same way the expansion does). For rows
// i < nrow and columns j < ncp * NR (y in col panels [jp][k][NR]):
//   row_out[i][k] += sum_j Ar_ij (x_ik - y_jk),  Ar_ij = Ar[i * ld + j] * (vr ? vr[j] : 1)
//   col_out[k][j] += sum_i Ac_ij (y_jk - x_ik),  Ac_ij = Ac[i * ld + j] * (wc ? wc[i] : 1)
// (either side skipped when its tile is nullptr), accumulated in T in a fixed order.
// HasR / HasC: which sides; HasV / HasW: whether vr / wc scale them (compile-time, so that the loop
// keeps its accumulator in a register).
template <typename T, bool HasR, bool HasC, bool HasV, bool HasW>
void diff_stage_t(int64_t nrow, int64_t ncp, int64_t d, const T* __restrict xrows, int64_t ldx,
                  const T* __restrict ycp, const T* __restrict Ar, const T* __restrict vr, const T* __restrict Ac,
                  const T* __restrict wc, int64_t ld, T* __restrict row_out, T* __restrict col_out) {
  using V = typename VecT<T>::V;
  constexpr int L = Dims<T>::L, NRV = Dims<T>::NRV, NR = Dims<T>::NR;
  const int64_t ldc = ncp * NR;
  for (int64_t i = 0; i < nrow; ++i) {
    const V wi = vset<T>(HasW ? wc[i] : T(1));
    for (int64_t k = 0; k < d; ++k) {
      const V xb = vset<T>(xrows[i * ldx + k]);
      V racc = {};
      for (int64_t jp = 0; jp < ncp; ++jp) {
#pragma GCC unroll 8
        for (int v = 0; v < NRV; ++v) {
          const int64_t j = jp * NR + v * L;
          const V t = xb - vload(ycp + (jp * d + k) * NR + v * L);
          if constexpr (HasR) {
            V a = vload(Ar + i * ld + j);
            if constexpr (HasV) a *= vload(vr + j);
            racc += a * t;
          }
          if constexpr (HasC) {
            if constexpr (HasW)
              vstore(col_out + k * ldc + j, vload(col_out + k * ldc + j) - vload(Ac + i * ld + j) * wi * t);
            else
              vstore(col_out + k * ldc + j, vload(col_out + k * ldc + j) - vload(Ac + i * ld + j) * t);
          }
        }
      }
      if constexpr (HasR) row_out[i * d + k] += hsum<T>(racc);
    }
  }
}

template <typename T>
void diff_stage(int64_t nrow, int64_t ncp, int64_t d, const T* xrows, int64_t ldx, const T* ycp, const T* Ar,
                const T* vr, const T* Ac, const T* wc, int64_t ld, T* row_out, T* col_out) {
  auto go = [&](auto r, auto c, auto v, auto w) {
    diff_stage_t<T, decltype(r)::value, decltype(c)::value, decltype(v)::value, decltype(w)::value>(
        nrow, ncp, d, xrows, ldx, ycp, Ar, vr, Ac, wc, ld, row_out, col_out);
  };
  using t_ = std::true_type;
  using f_ = std::false_type;
  // the callers' combinations: quad_form P == 1 scales both sides (vr and wc), P > 1 neither
  if (Ac) {
    if (Ar)
      vr ? go(t_{}, t_{}, t_{}, t_{}) : go(t_{}, t_{}, f_{}, f_{});
    else
      wc ? go(f_{}, t_{}, f_{}, t_{}) : go(f_{}, t_{}, f_{}, f_{});
  } else if (Ar) {
    vr ? go(t_{}, f_{}, t_{}, f_{}) : go(t_{}, f_{}, f_{}, f_{});
  }
}

// Column tile width: keep a (d x CB) tile of Y near 32 KiB (L1-resident, reused by every row panel).
template <typename T>
int64_t column_tile(int64_t d, bool buffered) {
  constexpr int NR = Dims<T>::NR;
  const int64_t target = (32 * 1024) / (static_cast<int64_t>(sizeof(T)) * std::max<int64_t>(d, 1));
  const int64_t cap = buffered ? 256 : 1024;
  return std::min<int64_t>(cap, std::max<int64_t>(2 * NR, roundup(target, NR)));
}

// Row block: a function of N and the thread count only; per-row arithmetic does not depend on it.
template <typename T>
int64_t row_block(int64_t N) {
  constexpr int MR = Dims<T>::MR;
  const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
  return std::min<int64_t>(128, std::max<int64_t>(MR, roundup(divup(N, 4 * nt), MR)));
}

// Dynamic scheduling: one worker per thread, each taking the next item from a shared counter, so a
// thread slowed down (a busy core) does not hold the others up. Which thread computes an item never
// changes what is computed: items own their outputs and partials. worker(slot, next): slot is a
// per-worker index below max_workers() (for scratch buffers).
inline int64_t max_workers() { return std::max(1, at::get_num_threads()); }

// Subnormal results flushed to zero and subnormal inputs read as zero (MXCSR FTZ | DAZ) while a worker
// runs, restored after. x86 takes a microcode assist on each subnormal: a kernel value near the exp
// cutoff times a weight (k w_j, g w_i ...) is one, and with a bandwidth well below the data spread most
// far pairs give one (float32, N = M = 8192, 1 thread: d = 8, sigma 0.3 took 3.8x the time of sigma
// sqrt(d) for the value and 13x for value + gradient). Anything flushed is below 1.2e-38 (double:
// 2.2e-308), far below the rounding of the tile sums it enters.
struct FlushSubnormals {
#if defined(__SSE2__)
  const unsigned saved = _mm_getcsr();
  FlushSubnormals() { _mm_setcsr(saved | 0x8040u); }
  ~FlushSubnormals() { _mm_setcsr(saved); }
#endif
};

template <class Worker>
void for_each_item(int64_t nitems, Worker&& worker) {
  if (nitems <= 0) return;
  std::atomic<int64_t> counter{0};
  const int64_t nw = std::min<int64_t>(nitems, max_workers());
  auto next = [&counter, nitems]() -> int64_t {
    const int64_t b = counter.fetch_add(1, std::memory_order_relaxed);
    return b < nitems ? b : -1;
  };
  if (nw == 1) {
    FlushSubnormals ftz;
    worker(int64_t{0}, next);
    return;
  }
  at::parallel_for(0, nw, 1, [&](int64_t w0, int64_t w1) {
    FlushSubnormals ftz;
    for (int64_t w = w0; w < w1; ++w) worker(w, next);
  });
}

template <typename T>
double max_norm(const T* norms, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(norms[i]));
  return m;
}

template <typename T>
bool lossy_call(const KernelArg& ka, const PointSet<T>& x, const PointSet<T>& y) {
  return expansion_is_lossy<T>(max_norm(x.norms, x.n), max_norm(y.norms, y.n),
                               lossy_kappa(ka.kind, ka.params, ka.n_scales));
}

// ---------------------------------------------------------------------------------------------------
// pair_reduce: row blocks of x own their accumulators; y streams through in column tiles.
template <typename T, KernelKind K, int NS, bool Diff, bool P1, bool Grad>
void pair_reduce_mode(const PairProblem<T>& pb) {
  constexpr int MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t N = pb.x.n, M = pb.y.n, d = pb.x.d, p = pb.p, dp = pb.y.d_pad, pp = pb.p_pad;
  const int64_t RB = row_block<T>(N);
  const int64_t CB = column_tile<T>(d, !P1 || Grad);
  const int64_t nrb = divup(N, RB);
  const KernelParams<T> kp = make_kernel_params<T>(pb.kernel.kind, pb.kernel.params, pb.kernel.n_scales);
  for_each_item(nrb, [&](int64_t, auto next) {
    std::vector<T> kb(P1 ? 0 : RB * CB), hb(Grad ? RB * CB : 0);
    std::vector<T> ct(P1 ? 0 : RB * pp), cy(Grad ? RB * dp : 0);
    std::vector<double> rs(Grad ? RB : 0), wy(Grad ? RB * d : 0);
    for (int64_t rb = next(); rb >= 0; rb = next()) {
      const int64_t i0 = rb * RB, rows = std::min(RB, N - i0), npan = divup(rows, MR);
      std::fill(rs.begin(), rs.end(), 0.0);
      std::fill(wy.begin(), wy.end(), 0.0);
      for (int64_t j0 = 0; j0 < M; j0 += CB) {
        const int64_t cols = std::min(CB, M - j0), ncp = divup(cols, NR);
        for (int64_t ip = 0; ip < npan; ++ip) {
          const int64_t gi0 = i0 + ip * MR;
          PanelArgs<T> pa;
          pa.d = d, pa.p = p, pa.gi0 = gi0, pa.gj0 = j0, pa.ncp = ncp, pa.excl = pb.exclude_diagonal;
          pa.xpan = pb.x.rp + gi0 * d, pa.xn = pb.x.norms + gi0;
          pa.ypan = pb.y.cp + j0 * d, pa.yn = pb.y.norms + j0;
          pa.ldb = CB;
          if (P1) pa.vcol = pb.vcol + j0;
          if (!P1) pa.kb = kb.data() + ip * MR * CB;
          if (Grad) pa.hb = hb.data() + ip * MR * CB;
          if (Grad && !P1) pa.appan = pb.ap + gi0 * p, pa.vppan = pb.vp + j0 * p;
          T s_out[MR], rs_out[MR];
          sweep_row_panel<T, K, NS, Diff, P1, !P1, false, false, Grad && P1, Grad && !P1>(kp, pa, s_out, rs_out);
          for (int r = 0; r < MR && gi0 + r < N; ++r) {
            if constexpr (P1) pb.S[gi0 + r] += static_cast<double>(s_out[r]);
            if constexpr (Grad && !Diff) rs[gi0 + r - i0] += static_cast<double>(rs_out[r]);
          }
        }
        if constexpr (!P1) {
          T* c = ct.data();
          row_stage<T, false>(kb.data(), CB, npan * MR, ncp, p, j0, pb.vp, nullptr, pb.vr, c, pp);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t q = 0; q < p; ++q) pb.S[(i0 + i) * p + q] += static_cast<double>(c[i * pp + q]);
        }
        if constexpr (Grad && Diff) {
          T* c = cy.data();  // rows x d: sum_j W_ij (x_i - y_j), entered as -wy (G = x rs - wy)
          std::fill(c, c + rows * d, T(0));
          diff_stage<T>(rows, ncp, d, pb.x.rows + i0 * pb.x.d_pad, pb.x.d_pad, pb.y.cp + j0 * d, hb.data(),
                        P1 ? pb.vcol + j0 : nullptr, nullptr, nullptr, CB, c, nullptr);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t k = 0; k < d; ++k) wy[i * d + k] -= static_cast<double>(c[i * d + k]);
        } else if constexpr (Grad) {
          T* c = cy.data();
          row_stage<T, P1>(hb.data(), CB, npan * MR, ncp, d, j0, pb.y.cp, pb.vcol, P1 ? pb.vy : pb.y.rows, c, dp);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t k = 0; k < d; ++k) wy[i * d + k] += static_cast<double>(c[i * dp + k]);
        }
      }
      if constexpr (Grad) {
        const int64_t xdp = pb.x.d_pad;
        for (int64_t i = 0; i < rows; ++i) {
          const double ai = P1 ? static_cast<double>(pb.acol[i0 + i]) : 1.0;
          for (int64_t k = 0; k < d; ++k) {
            // a dot kernel: G_i = -sum_j W_ij y_j (rs stays 0, and x_i rs is not formed)
            const double g =
                is_dot_kernel(K) ? -wy[i * d + k] : static_cast<double>(pb.x.rows[(i0 + i) * xdp + k]) * rs[i] - wy[i * d + k];
            pb.G[(i0 + i) * d + k] = P1 ? ai * g : g;
          }
        }
      }
    }
  });
}

template <typename T, KernelKind K, int NS>
void pair_reduce_kernel(const PairProblem<T>& pb) {
  const bool diff = !always_differences(K) && !is_dot_kernel(K) && lossy_call(pb.kernel, pb.x, pb.y);
  const bool grad = pb.G != nullptr, p1 = pb.p == 1;
  auto go = [&](auto diff_tag) {
    constexpr bool D = decltype(diff_tag)::value;
    if (!grad && p1)
      pair_reduce_mode<T, K, NS, D, true, false>(pb);
    else if (grad && p1)
      pair_reduce_mode<T, K, NS, D, true, true>(pb);
    else if (!grad)
      pair_reduce_mode<T, K, NS, D, false, false>(pb);
    else
      pair_reduce_mode<T, K, NS, D, false, true>(pb);
  };
  with_diff<K>(diff, go);
}

// ---------------------------------------------------------------------------------------------------
// quad_form (see the top of this file).
template <typename T>
struct QuadScratch {
  std::vector<T> kb, hb, hcb, colS, colU, c, cc;
};

struct QuadAcc {
  double* Srow = nullptr;  // (N, P): pb.S
  double* Scol = nullptr;  // (N, P)
  double* Urow = nullptr;  // (N)
  double* Ucol = nullptr;  // (N)
  double* Yrow = nullptr;  // (N, d): pb.G
  double* Ycol = nullptr;  // (N, d)
};

// The matmul-stage results of consecutive rounds are summed in T per block (as a pair_reduce column
// tile sums up to 1024 columns in T) and flushed into Yrow / Ycol every kFlushRounds rounds.
constexpr int64_t kFlushRounds = 8;

template <typename T>
struct QuadAccT {
  T* Yrow = nullptr;   // [N_pad][d_pad]
  T* Ycol = nullptr;   // [N_pad][d_pad], or with d <= LaneD:
  T* YcolT = nullptr;  // [d][N_pad] (lane_col_stage)
  int64_t ldt = 0;     // N_pad
};

struct TileJob {
  int64_t I, J, B;
  bool diag, rowG, colG;
};

// A lossy tile's gradient terms in difference form (diff_stage), entered as -D into Y: G = z u - Y
// (times a for P == 1) then gets + D, and such a tile adds nothing to u.
template <typename T>
void diff_tile_out(const PointSet<T>& z, const TileJob& tj, int64_t rows, int64_t cols, int64_t ncp, const T* Ar,
                   const T* vr, const T* Ac, const T* wc, const QuadAcc& acc, QuadScratch<T>& ws) {
  constexpr int NR = Dims<T>::NR;
  const int64_t d = z.d, dp = z.d_pad, i0 = tj.I * tj.B, j0 = tj.J * tj.B, ldc = ncp * NR;
  T* dr = ws.c.data();
  T* dc = ws.cc.data();
  std::fill(dr, dr + rows * d, T(0));
  if (Ac) std::fill(dc, dc + d * ldc, T(0));
  diff_stage<T>(rows, ncp, d, z.rows + i0 * dp, dp, z.cp + j0 * d, tj.rowG ? Ar : nullptr, vr, Ac, wc, tj.B, dr, dc);
  if (tj.rowG)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < d; ++k) acc.Yrow[(i0 + i) * d + k] -= static_cast<double>(dr[i * d + k]);
  if (Ac)
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t k = 0; k < d; ++k) acc.Ycol[(j0 + j) * d + k] -= static_cast<double>(dc[k * ldc + j]);
}

// One tile (I, J) with P == 1. RowS: S wanted; Grad: the tile needs g (rowG or colG).
template <typename T, KernelKind K, int NS, bool Diff, bool RowS, bool Grad>
void quad_tile_p1(const QuadProblem<T>& pb, const KernelParams<T>& kp, const TileJob& tj, const QuadAcc& acc,
                  const QuadAccT<T>& acct, QuadScratch<T>& ws, double* qt) {
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR, NRV = Dims<T>::NRV;
  const int64_t N = pb.z.n, d = pb.z.d, dp = pb.z.d_pad, B = tj.B;
  const int64_t i0 = tj.I * B, rows = std::min(B, N - i0), npan = divup(rows, MR);
  const int64_t j0 = tj.J * B, cols = std::min(B, N - j0), ncp = divup(cols, NR);
  const bool cs_on = RowS && !tj.diag, cu_on = Grad && tj.colG && !tj.diag;
  if (cs_on) std::fill(ws.colS.begin(), ws.colS.end(), T(0));
  if (cu_on) std::fill(ws.colU.begin(), ws.colU.end(), T(0));
  double tq = 0.0;
  for (int64_t ip = 0; ip < npan; ++ip) {
    const int64_t gi0 = i0 + ip * MR;
    PanelArgs<T> pa;
    pa.d = d, pa.p = 1, pa.gi0 = gi0, pa.gj0 = j0, pa.ncp = ncp, pa.excl = pb.exclude_diagonal && tj.diag;
    pa.xpan = pb.z.rp + gi0 * d, pa.xn = pb.z.norms + gi0;
    pa.ypan = pb.z.cp + j0 * d, pa.yn = pb.z.norms + j0;
    pa.vcol = pb.wcol + j0, pa.wrow = pb.wcol + gi0;
    pa.ldb = B;
    if (Grad) pa.hb = ws.hb.data() + ip * MR * B;
    pa.colS = cs_on ? ws.colS.data() : nullptr;
    pa.colU = cu_on ? ws.colU.data() : nullptr;
    T s_out[MR], rs_out[MR];
    sweep_row_panel<T, K, NS, Diff, true, false, false, RowS, Grad, false>(kp, pa, s_out, rs_out);
    for (int r = 0; r < MR && gi0 + r < N; ++r) {
      tq += static_cast<double>(pb.wcol[gi0 + r]) * static_cast<double>(s_out[r]);
      if constexpr (RowS) acc.Srow[gi0 + r] += static_cast<double>(s_out[r]);
      if constexpr (Grad && !Diff) acc.Urow[gi0 + r] += static_cast<double>(rs_out[r]);
    }
  }
  qt[0] = tq;
  if (cs_on)
    for (int64_t j = 0; j < cols; ++j) acc.Scol[j0 + j] += static_cast<double>(ws.colS[j]);
  if constexpr (Grad && Diff) {
    diff_tile_out<T>(pb.z, tj, rows, cols, ncp, ws.hb.data(), pb.wcol + j0, cu_on ? ws.hb.data() : nullptr, pb.wcol + i0,
                  acc, ws);
  } else if constexpr (Grad) {
    T* yr = acct.Yrow + i0 * dp;
    T* yc = acct.Ycol + j0 * dp;
    if (acct.YcolT) {  // lane forms (d <= LaneD)
      with_dim<Dims<T>::LaneD>(d, [&](auto dim) {
        constexpr int D = decltype(dim)::value;
        if (tj.rowG)
          lane_row_stage<T, D>(ws.hb.data(), B, npan * MR, ncp * NRV, pb.z.cp + j0 * d, pb.wcol + j0, yr, dp);
        if (cu_on)
          lane_col_stage<T, D>(ws.hb.data(), B, npan * MR, ncp * NRV, pb.wz + i0 * dp, dp, acct.YcolT + j0, acct.ldt);
      });
    } else if (tj.rowG && cu_on && dp / L <= 2) {
      bgemm_sym(ws.hb.data(), B, npan * MR, ncp * NR, pb.wz + j0 * dp, pb.wz + i0 * dp, dp, dp / L, yr, yc, dp);
    } else {
      if (tj.rowG) bgemm<T, false, true>(ws.hb.data(), B, npan * MR, ncp * NR, pb.wz + j0 * dp, dp, dp / L, yr, dp);
      if (cu_on) bgemm<T, true, true>(ws.hb.data(), B, ncp * NR, npan * MR, pb.wz + i0 * dp, dp, dp / L, yc, dp);
    }
    if (cu_on)
      for (int64_t j = 0; j < cols; ++j) acc.Ucol[j0 + j] += static_cast<double>(ws.colU[j]);
  }
}

// One tile with P > 1 (the unbiased estimator's P = 3, permutation tests): k and the weighted g tiles go
// through the matmul stage. Correct first; slower than P == 1 per column of w.
template <typename T, KernelKind K, bool Diff, bool Grad>
void quad_tile_pg(const QuadProblem<T>& pb, const KernelParams<T>& kp, const TileJob& tj, const QuadAcc& acc,
                  const QuadAccT<T>& acct, QuadScratch<T>& ws, double* qt) {
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t N = pb.z.n, d = pb.z.d, dp = pb.z.d_pad, B = tj.B, P = pb.P, Pp = pb.P_pad;
  const int64_t i0 = tj.I * B, rows = std::min(B, N - i0), npan = divup(rows, MR);
  const int64_t j0 = tj.J * B, cols = std::min(B, N - j0), ncp = divup(cols, NR);
  const bool rows_S = pb.S != nullptr, cs_on = rows_S && !tj.diag, cu_on = Grad && tj.colG && !tj.diag;
  if (cu_on) std::fill(ws.colU.begin(), ws.colU.end(), T(0));
  for (int64_t ip = 0; ip < npan; ++ip) {
    const int64_t gi0 = i0 + ip * MR;
    PanelArgs<T> pa;
    pa.d = d, pa.p = P, pa.gi0 = gi0, pa.gj0 = j0, pa.ncp = ncp, pa.excl = pb.exclude_diagonal && tj.diag;
    pa.xpan = pb.z.rp + gi0 * d, pa.xn = pb.z.norms + gi0;
    pa.ypan = pb.z.cp + j0 * d, pa.yn = pb.z.norms + j0;
    pa.ldb = B;
    pa.kb = ws.kb.data() + ip * MR * B;
    if (Grad) {
      pa.hb = ws.hb.data() + ip * MR * B;
      pa.appan = pb.arp + gi0 * P, pa.vppan = pb.wcp + j0 * P;
      if (cu_on) {
        pa.hcb = ws.hcb.data() + ip * MR * B;
        pa.wppan = pb.wrp + gi0 * P, pa.acpan = pb.acp + j0 * P;
        pa.colU = ws.colU.data();
      }
    }
    T s_out[MR], rs_out[MR];
    sweep_row_panel<T, K, 0, Diff, false, true, false, false, false, Grad>(kp, pa, s_out, rs_out);
    if constexpr (Grad && !Diff)
      for (int r = 0; r < MR && gi0 + r < N; ++r) acc.Urow[gi0 + r] += static_cast<double>(rs_out[r]);
  }
  {
    T* c = ws.c.data();
    bgemm<T>(ws.kb.data(), B, npan * MR, ncp * NR, pb.wr + j0 * Pp, Pp, Pp / L, c, Pp);
    for (int64_t q = 0; q < P; ++q) qt[q] = 0.0;
    for (int64_t i = 0; i < rows; ++i) {
      const T* wi = pb.wr + (i0 + i) * Pp;
      for (int64_t q = 0; q < P; ++q) {
        qt[q] += static_cast<double>(wi[q]) * static_cast<double>(c[i * Pp + q]);
        if (rows_S) acc.Srow[(i0 + i) * P + q] += static_cast<double>(c[i * Pp + q]);
      }
    }
  }
  if (cs_on) {
    T* c = ws.cc.data();
    bgemm<T, true>(ws.kb.data(), B, ncp * NR, npan * MR, pb.wr + i0 * Pp, Pp, Pp / L, c, Pp);
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t q = 0; q < P; ++q) acc.Scol[(j0 + j) * P + q] += static_cast<double>(c[j * Pp + q]);
  }
  if constexpr (Grad && Diff) {
    diff_tile_out<T>(pb.z, tj, rows, cols, ncp, ws.hb.data(), nullptr, cu_on ? ws.hcb.data() : nullptr, nullptr, acc, ws);
  } else if constexpr (Grad) {
    if (tj.rowG)
      bgemm<T, false, true>(ws.hb.data(), B, npan * MR, ncp * NR, pb.z.rows + j0 * dp, dp, dp / L,
                            acct.Yrow + i0 * dp, dp);
    if (cu_on) {
      bgemm<T, true, true>(ws.hcb.data(), B, ncp * NR, npan * MR, pb.z.rows + i0 * dp, dp, dp / L,
                           acct.Ycol + j0 * dp, dp);
      for (int64_t j = 0; j < cols; ++j) acc.Ucol[j0 + j] += static_cast<double>(ws.colU[j]);
    }
  }
}

template <typename T, KernelKind K, int NS>
void quad_form_kernel(const QuadProblem<T>& pb) {
  const int64_t N = pb.z.n, d = pb.z.d, P = pb.P, dp = pb.z.d_pad, Pp = pb.P_pad;
  const int64_t B = N >= 2048 ? 128 : 64;  // a multiple of MR, NR and RI; a function of N only
  const int64_t nb = divup(N, B), half = nb / 2;
  const bool even = nb % 2 == 0;
  const KernelParams<T> kp = make_kernel_params<T>(pb.kernel.kind, pb.kernel.params, pb.kernel.n_scales);
  const double kappa = lossy_kappa(pb.kernel.kind, pb.kernel.params, pb.kernel.n_scales);
  const bool grad = pb.G != nullptr, rows_S = pb.S != nullptr, p1 = P == 1;
  // per block: largest norm (lossy rule per tile) and whether a is zero on it (no G for its rows)
  std::vector<double> bmax(nb, 0.0);
  std::vector<char> a_zero(nb, 1);
  for (int64_t I = 0; I < nb; ++I) {
    const int64_t i0 = I * B, rows = std::min(B, N - i0);
    bmax[I] = max_norm(pb.z.norms + i0, rows);
    if (grad) {
      bool z = true;
      for (int64_t i = i0; i < i0 + rows && z; ++i) {
        if (p1) {
          z = pb.acol[i] == T(0);
        } else {
          // a row panels: [i / MR][q][MR]
          constexpr int MR = Dims<T>::MR;
          for (int64_t q = 0; q < P; ++q) z = z && pb.arp[((i / MR) * P + q) * MR + i % MR] == T(0);
        }
      }
      a_zero[I] = z;
    }
  }
  const int64_t ntile = half + 1;  // tiles per row block (t = 0 .. half)
  std::vector<double> qt(nb * ntile * P, 0.0);
  std::vector<double> Scol(rows_S ? N * P : 0), Urow(grad ? N : 0), Ucol(grad ? N : 0), Ycol(grad ? N * d : 0);
  const int64_t N_pad = roundup(N, Dims<T>::NR);
  std::vector<T> Yf(grad ? 2 * N_pad * dp : 0, T(0));
  QuadAccT<T> acct;
  acct.Yrow = Yf.data(), acct.Ycol = Yf.data() + (grad ? N_pad * dp : 0);
  std::vector<T> YfT(grad && p1 && d <= Dims<T>::LaneD ? d * N_pad : 0, T(0));
  if (!YfT.empty()) acct.YcolT = YfT.data(), acct.ldt = N_pad;
  QuadAcc acc;
  acc.Srow = pb.S, acc.Scol = Scol.data(), acc.Urow = Urow.data(), acc.Ucol = Ucol.data(), acc.Yrow = pb.G,
  acc.Ycol = Ycol.data();

  std::vector<QuadScratch<T>> scratch(max_workers());
  for (auto& ws : scratch) {
    if (!p1) ws.kb.resize(B * B);
    if (grad) ws.hb.resize(B * B), ws.colU.resize(B);
    if (grad && !p1) ws.hcb.resize(B * B);
    if (rows_S && p1) ws.colS.resize(B);
    const int64_t cw = std::max<int64_t>(p1 ? 0 : Pp, grad ? dp : 0);
    ws.c.resize(B * cw), ws.cc.resize(B * cw);
  }

  auto tile = [&](int64_t I, int64_t t, QuadScratch<T>& ws) {
    TileJob tj;
    tj.I = I, tj.J = (I + t) % nb, tj.B = B, tj.diag = t == 0;
    tj.rowG = grad && !a_zero[I];
    tj.colG = grad && !a_zero[tj.J] && !tj.diag;
    const bool tgrad = tj.rowG || tj.colG;
    const bool diff = expansion_is_lossy<T>(bmax[I], bmax[tj.J], kappa);
    double* q = qt.data() + (I * ntile + t) * P;
    auto go = [&](auto diff_tag, auto grad_tag) {
      constexpr bool D = decltype(diff_tag)::value, G = decltype(grad_tag)::value;
      if (p1) {
        if (rows_S)
          quad_tile_p1<T, K, NS, D, true, G>(pb, kp, tj, acc, acct, ws, q);
        else
          quad_tile_p1<T, K, NS, D, false, G>(pb, kp, tj, acc, acct, ws, q);
      } else {
        quad_tile_pg<T, K, D, G>(pb, kp, tj, acc, acct, ws, q);
      }
    };
    with_diff<K>(diff, [&](auto diff_tag) {
      tgrad ? go(diff_tag, std::true_type{}) : go(diff_tag, std::false_type{});
    });
  };
  auto tiles_of_round = [&](int64_t t) { return t == 0 ? nb : (even && t == half ? half : nb); };

  if (!grad && !rows_S) {
    // value only: row blocks in parallel, each running its tiles in t order
    for_each_item(nb, [&](int64_t slot, auto next) {
      for (int64_t I = next(); I >= 0; I = next())
        for (int64_t t = 0; t <= half; ++t)
          if (I < tiles_of_round(t)) tile(I, t, scratch[slot]);
    });
  } else {
    for (int64_t t = 0; t <= half; ++t) {
      for_each_item(tiles_of_round(t), [&](int64_t slot, auto next) {
        for (int64_t I = next(); I >= 0; I = next()) tile(I, t, scratch[slot]);
      });
      if (grad && ((t + 1) % kFlushRounds == 0 || t == half))
        at::parallel_for(0, N, 256, [&](int64_t r0, int64_t r1) {
          for (int64_t i = r0; i < r1; ++i)
            for (int64_t k = 0; k < d; ++k) {
              pb.G[i * d + k] += static_cast<double>(acct.Yrow[i * dp + k]);
              Ycol[i * d + k] += static_cast<double>(acct.Ycol[i * dp + k]);
              acct.Yrow[i * dp + k] = acct.Ycol[i * dp + k] = T(0);
              if (acct.YcolT) {
                Ycol[i * d + k] += static_cast<double>(acct.YcolT[k * N_pad + i]);
                acct.YcolT[k * N_pad + i] = T(0);
              }
            }
        });
    }
  }

  for (int64_t q = 0; q < P; ++q) {
    double s = 0.0;
    for (int64_t I = 0; I < nb; ++I)
      for (int64_t t = 0; t <= half; ++t)
        if (I < tiles_of_round(t)) s += (t == 0 ? 1.0 : 2.0) * qt[(I * ntile + t) * P + q];
    pb.q[q] = s;
  }
  if (rows_S)
    for (int64_t i = 0; i < N * P; ++i) pb.S[i] += Scol[i];
  if (grad) {
    at::parallel_for(0, N, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const double u = is_dot_kernel(K) ? 0.0 : Urow[i] + Ucol[i];  // a dot kernel: G = -Y (u is 0)
        const double ai = p1 ? static_cast<double>(pb.acol[i]) : 1.0;
        for (int64_t k = 0; k < d; ++k) {
          const double y = pb.G[i * d + k] + Ycol[i * d + k];
          const double g = is_dot_kernel(K) ? -y : static_cast<double>(pb.z.rows[i * dp + k]) * u - y;
          pb.G[i * d + k] = p1 ? ai * g : g;
        }
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------
template <typename T, KernelKind K, int NS, bool Diff, bool Deriv>
void gram_mode(const GramProblem<T>& pb) {
  constexpr int MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t N = pb.x.n, M = pb.y.n, d = pb.x.d;
  const int64_t RB = row_block<T>(N), CB = column_tile<T>(d, true);
  const int64_t nrb = divup(N, RB);
  const KernelParams<T> kp = make_kernel_params<T>(pb.kernel.kind, pb.kernel.params, pb.kernel.n_scales);
  for_each_item(nrb, [&](int64_t, auto next) {
    std::vector<T> kb(RB * CB);
    for (int64_t rb = next(); rb >= 0; rb = next()) {
      const int64_t i0 = rb * RB, rows = std::min(RB, N - i0), npan = divup(rows, MR);
      for (int64_t j0 = 0; j0 < M; j0 += CB) {
        const int64_t cols = std::min(CB, M - j0), ncp = divup(cols, NR);
        for (int64_t ip = 0; ip < npan; ++ip) {
          const int64_t gi0 = i0 + ip * MR;
          PanelArgs<T> pa;
          pa.d = d, pa.p = 1, pa.gi0 = gi0, pa.gj0 = j0, pa.ncp = ncp;
          pa.xpan = pb.x.rp + gi0 * d, pa.xn = pb.x.norms + gi0;
          pa.ypan = pb.y.cp + j0 * d, pa.yn = pb.y.norms + j0;
          pa.kb = kb.data() + ip * MR * CB, pa.ldb = CB;
          T s_out[MR], rs_out[MR];
          sweep_row_panel<T, K, NS, Diff, false, !Deriv, Deriv, false, false, false>(kp, pa, s_out, rs_out);
        }
        for (int64_t i = 0; i < rows; ++i)
          std::memcpy(pb.K + (i0 + i) * M + j0, kb.data() + i * CB, sizeof(T) * cols);
      }
    }
  });
}

template <typename T, KernelKind K, int NS>
void gram_kernel(const GramProblem<T>& pb) {
  const bool diff = !always_differences(K) && !is_dot_kernel(K) && lossy_call(pb.kernel, pb.x, pb.y);
  with_diff<K>(diff, [&](auto diff_tag) {
    constexpr bool D = decltype(diff_tag)::value;
    pb.derivative ? gram_mode<T, K, NS, D, true>(pb) : gram_mode<T, K, NS, D, false>(pb);
  });
}

// Dispatch on the kernel kind. rbf and imq (engine_f32.cpp / engine_f64.cpp) with one scale as its own
// instantiation (the common case: its scale loop compiles away); laplacian, energy and polynomial in
// their own translation units (engine_ext_f32.cpp / engine_ext_f64.cpp), so that the two halves build
// in parallel. laplacian reads its scale count at run time (one instantiation keeps the build short);
// energy and polynomial have exactly one (NS = 1; polynomial ignores it).
inline bool base_kind(KernelKind kind) { return kind == KernelKind::RBF || kind == KernelKind::IMQ; }

template <template <typename, KernelKind, int> class F, typename T, class Pb>
void dispatch_base(const KernelArg& ka, const Pb& pb) {
  const bool ns1 = ka.n_scales == 1;
  if (ka.kind == KernelKind::RBF)
    ns1 ? F<T, KernelKind::RBF, 1>::run(pb) : F<T, KernelKind::RBF, 0>::run(pb);
  else
    ns1 ? F<T, KernelKind::IMQ, 1>::run(pb) : F<T, KernelKind::IMQ, 0>::run(pb);
}

template <template <typename, KernelKind, int> class F, typename T, class Pb>
void dispatch_ext(const KernelArg& ka, const Pb& pb) {
  if (ka.kind == KernelKind::LAPLACIAN)
    F<T, KernelKind::LAPLACIAN, 0>::run(pb);
  else if (ka.kind == KernelKind::ENERGY)
    F<T, KernelKind::ENERGY, 1>::run(pb);
  else
    F<T, KernelKind::POLYNOMIAL, 1>::run(pb);
}

// Defined by INFOVAE_INSTANTIATE_ENGINE_EXT (the ext translation units).
void run_pair_reduce_ext(const PairProblem<float>& pb);
void run_pair_reduce_ext(const PairProblem<double>& pb);
void run_quad_form_ext(const QuadProblem<float>& pb);
void run_quad_form_ext(const QuadProblem<double>& pb);
void run_gram_ext(const GramProblem<float>& pb);
void run_gram_ext(const GramProblem<double>& pb);

template <typename T, KernelKind K, int NS>
struct PairReduceF {
  static void run(const PairProblem<T>& pb) { pair_reduce_kernel<T, K, NS>(pb); }
};
template <typename T, KernelKind K, int NS>
struct QuadFormF {
  static void run(const QuadProblem<T>& pb) { quad_form_kernel<T, K, NS>(pb); }
};
template <typename T, KernelKind K, int NS>
struct GramF {
  static void run(const GramProblem<T>& pb) { gram_kernel<T, K, NS>(pb); }
};

}  // namespace engine
}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae

#define INFOVAE_INSTANTIATE_ENGINE(T)                                                                  \
  namespace infovae {                                                                                  \
  namespace cpu {                                                                                      \
  inline namespace INFOVAE_CPU_CAPABILITY {                                                            \
  namespace engine {                                                                                   \
  template <>                                                                                          \
  void run_pair_reduce<T>(const PairProblem<T>& pb) {                                                  \
    if (base_kind(pb.kernel.kind))                                                                     \
      dispatch_base<PairReduceF, T>(pb.kernel, pb);                                                    \
    else                                                                                               \
      run_pair_reduce_ext(pb);                                                                         \
  }                                                                                                    \
  template <>                                                                                          \
  void run_quad_form<T>(const QuadProblem<T>& pb) {                                                    \
    if (base_kind(pb.kernel.kind))                                                                     \
      dispatch_base<QuadFormF, T>(pb.kernel, pb);                                                      \
    else                                                                                               \
      run_quad_form_ext(pb);                                                                           \
  }                                                                                                    \
  template <>                                                                                          \
  void run_gram<T>(const GramProblem<T>& pb) {                                                         \
    if (base_kind(pb.kernel.kind))                                                                     \
      dispatch_base<GramF, T>(pb.kernel, pb);                                                          \
    else                                                                                               \
      run_gram_ext(pb);                                                                                \
  }                                                                                                    \
  }                                                                                                    \
  }                                                                                                    \
  }                                                                                                    \
  }

#define INFOVAE_INSTANTIATE_ENGINE_EXT(T)                                                              \
  namespace infovae {                                                                                  \
  namespace cpu {                                                                                      \
  inline namespace INFOVAE_CPU_CAPABILITY {                                                            \
  namespace engine {                                                                                   \
  void run_pair_reduce_ext(const PairProblem<T>& pb) { dispatch_ext<PairReduceF, T>(pb.kernel, pb); }  \
  void run_quad_form_ext(const QuadProblem<T>& pb) { dispatch_ext<QuadFormF, T>(pb.kernel, pb); }      \
  void run_gram_ext(const GramProblem<T>& pb) { dispatch_ext<GramF, T>(pb.kernel, pb); }               \
  }                                                                                                    \
  }                                                                                                    \
  }                                                                                                    \
  }
