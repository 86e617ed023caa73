// The tiled pair engine (KeOps style): at::parallel_for over row blocks of X; each row block owns its
// accumulators; Y streams through in column tiles. Per MR x NR micro-tile: register-blocked dot products
// (explicit SIMD through GCC/Clang vector extensions, so the width is the -march width: zmm with AVX-512
// even where the auto-vectoriser would prefer ymm), then r2 = |x|^2 + |y|^2 - 2 x.y clamped at 0, the
// kernel value / gradient weight per pair, and the reductions. Partials over one column tile are
// accumulated in T (float32 for float32/half inputs) and added to float64 per-row accumulators in
// column-tile order. Row blocks are independent and no accumulator is shared, so there are no atomics
// and the result does not depend on the thread count or on scheduling (bitwise).
//
// Included only by engine_f32.cpp / engine_f64.cpp.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

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
template <>
struct VecT<float> {
  using V = vf32;
  using VI = vi32;
};
template <>
struct VecT<double> {
  using V = vf64;
  using VI = vi64;
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
// Horizontal sum in a fixed (pairwise) order.
template <typename T>
INFOVAE_AI T hsum(typename VecT<T>::V v) {
  constexpr int L = Dims<T>::L;
  T a[L];
  std::memcpy(a, &v, sizeof(v));
#pragma GCC unroll 16
  for (int w = L / 2; w >= 1; w /= 2) {
#pragma GCC unroll 16
    for (int i = 0; i < w; ++i) a[i] += a[i + w];
  }
  return a[0];
}

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

// ---------------------------------------------------------------------------------------------------
// Per-pair math, vectorised: the same formulas as infovae/pair_math.h (squared_distance and
// kernel_value_and_weight), written on SIMD vectors because GCC vector types cannot be built from
// scalars the way the header's T(2) / T(0) do. Scale loop order, and so rounding, match the header.
template <typename T>
struct KParams {
  using V = typename VecT<T>::V;
  int ns = 0;
  V a[kMaxScales];  // rbf: -c_s;  imq: C_s
  V b[kMaxScales];  // rbf: 2 c_s; imq: 2 / C_s
  explicit KParams(const KernelSpec& spec) {
    ns = spec.n_scales;
    for (int s = 0; s < ns; ++s) {
      const T c = static_cast<T>(spec.param[s]);
      if (spec.kind == KernelKind::RBF) {
        a[s] = vset<T>(-c);
        b[s] = vset<T>(T(2) * c);
      } else {
        a[s] = vset<T>(c);
        b[s] = vset<T>(T(2) / c);
      }
    }
  }
};

template <typename V>
INFOVAE_AI V vsquared_distance(V xn, V yn, V dot) {
  const V r2 = xn + yn - dot * 2;
  const V zero = {};
  return r2 > zero ? r2 : zero;
}

template <typename T, KernelKind K, bool NS1, bool Grad>
INFOVAE_AI void keval(const KParams<T>& kp, typename VecT<T>::V r2, typename VecT<T>::V& k,
                      typename VecT<T>::V& g) {
  using V = typename VecT<T>::V;
  const int ns = NS1 ? 1 : kp.ns;
  if constexpr (K == KernelKind::RBF) {
    V e = vexp(r2 * kp.a[0]);
    k = e;
    if constexpr (Grad) g = kp.b[0] * e;
    for (int s = 1; s < ns; ++s) {
      e = vexp(r2 * kp.a[s]);
      k += e;
      if constexpr (Grad) g += kp.b[s] * e;
    }
  } else {
    V ks = kp.a[0] / (kp.a[0] + r2);
    k = ks;
    if constexpr (Grad) g = ks * ks * kp.b[0];
    for (int s = 1; s < ns; ++s) {
      ks = kp.a[s] / (kp.a[s] + r2);
      k += ks;
      if constexpr (Grad) g += ks * ks * kp.b[s];
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Micro-kernel: acc[r][v] = sum_k xp[k][r] * yp[k][v*L + lane] (row panel x col panel), q-long.
template <typename T>
INFOVAE_AI void dot_micro(const T* __restrict xp, const T* __restrict yp, int64_t q,
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
      for (int v = 0; v < NRV; ++v) acc[r][v] += xb * yv[v];
    }
  }
}

template <typename T>
struct Iota {
  typename VecT<T>::VI v;
  Iota() {
    using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
    I a[Dims<T>::L];
    for (int i = 0; i < Dims<T>::L; ++i) a[i] = i;
    std::memcpy(&v, a, sizeof(v));
  }
};

// Flags of one sweep: FuseS: accumulate S_i = sum_j k_ij v_j (p == 1) in registers; StoreK: write k to
// the tile buffer kb; Grad: w_ij = g_ij (a_i . v_j) written to wb and its row sums accumulated;
// AvP1: p == 1, so a_i . v_j = a_i v_j (else an a x v micro-tile is computed with inner length p).
struct SweepArgs {
  int64_t d, p, gi0, gj0, ncp;
  bool excl;
};

// One row panel (MR rows from gi0) against ncp column panels (from gj0). s_out / rs_out: the float
// partials (row sums of k v and of w) over these columns.
template <typename T, KernelKind K, bool NS1, bool FuseS, bool StoreK, bool Grad, bool AvP1>
void sweep_row_panel(const KParams<T>& kp, const SweepArgs& sa, const T* __restrict xpan,
                     const T* __restrict xn, const T* __restrict ypan0, const T* __restrict yn0,
                     const T* __restrict vcol0, const T* __restrict arow, const T* __restrict appan,
                     const T* __restrict vppan0, T* __restrict kb, T* __restrict wb, int64_t ldb,
                     T* s_out, T* rs_out) {
  using V = typename VecT<T>::V;
  using VI = typename VecT<T>::VI;
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NRV = Dims<T>::NRV, NR = Dims<T>::NR;
  static const Iota<T> iota;
  const int64_t d = sa.d, p = sa.p;
  V s_acc[MR], rs_acc[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) s_acc[r] = rs_acc[r] = V{};

  for (int64_t jp = 0; jp < sa.ncp; ++jp) {
    const int64_t gj = sa.gj0 + jp * NR;
    alignas(64) T avt[Grad && !AvP1 ? MR * NR : 1];
    if constexpr (Grad && !AvP1) {
      V av[MR][NRV];
      dot_micro<T>(appan, vppan0 + jp * p * NR, p, av);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NRV; ++v) vstore(avt + r * NR + v * L, av[r][v]);
    }
    V acc[MR][NRV];
    dot_micro<T>(xpan, ypan0 + jp * d * NR, d, acc);

    auto epilogue = [&](auto masked_tag) {
      constexpr bool Masked = decltype(masked_tag)::value;
#pragma GCC unroll 8
      for (int v = 0; v < NRV; ++v) {
        const V ynv = vload(yn0 + jp * NR + v * L);
        V vv = {};
        if constexpr (FuseS || (Grad && AvP1)) vv = vload(vcol0 + jp * NR + v * L);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
          const V r2 = vsquared_distance(vset<T>(xn[r]), ynv, acc[r][v]);
          V k, g;
          keval<T, K, NS1, Grad>(kp, r2, k, g);
          if constexpr (Masked) {
            // i == j  <=>  gj + v*L + lane - (gi0 + r) == 0
            const VI idx = iota.v + static_cast<std::remove_reference_t<decltype(iota.v[0])>>(
                                        gj + v * L - sa.gi0 - r);
            const VI zi = {};
            const V zero = {};
            k = idx == zi ? zero : k;
            if constexpr (Grad) g = idx == zi ? zero : g;
          }
          if constexpr (FuseS) s_acc[r] += k * vv;
          if constexpr (StoreK) vstore(kb + r * ldb + jp * NR + v * L, k);
          if constexpr (Grad) {
            V av;
            if constexpr (AvP1)
              av = vset<T>(arow[r]) * vv;
            else
              av = vload(avt + r * NR + v * L);
            const V w = g * av;
            rs_acc[r] += w;
            vstore(wb + r * ldb + jp * NR + v * L, w);
          }
        }
      }
    };
    const bool masked = sa.excl && gj < sa.gi0 + MR && sa.gi0 < gj + NR;
    if (masked)
      epilogue(std::true_type{});
    else
      epilogue(std::false_type{});
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    if constexpr (FuseS) s_out[r] = hsum<T>(s_acc[r]);
    if constexpr (Grad) rs_out[r] = hsum<T>(rs_acc[r]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Matmul-shaped second stage: C[i][q] = sum_{j < ncols} A[i][j] * B[j][q] for nrows (multiple of RI)
// rows and nqv vectors of q; A is a tile buffer (row stride lda), B rows have stride ldb. Broadcast form
// (q vectorised), accumulated in T in j order.
template <typename T, int RI, int QV>
INFOVAE_AI void bgemm_block(const T* __restrict A, int64_t lda, int64_t ncols, const T* __restrict B,
                            int64_t ldb, T* __restrict C, int64_t ldc) {
  using V = typename VecT<T>::V;
  constexpr int L = Dims<T>::L;
  V acc[RI][QV];
#pragma GCC unroll 16
  for (int r = 0; r < RI; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) acc[r][v] = V{};
  for (int64_t j = 0; j < ncols; ++j) {
    V b[QV];
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) b[v] = vload(B + j * ldb + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < RI; ++r) {
      const V a = vset<T>(A[r * lda + j]);
#pragma GCC unroll 4
      for (int v = 0; v < QV; ++v) acc[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RI; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) vstore(C + r * ldc + v * L, acc[r][v]);
}

template <typename T>
void bgemm(const T* A, int64_t lda, int64_t nrows, int64_t ncols, const T* B, int64_t ldb, int64_t nqv,
           T* C, int64_t ldc) {
  constexpr int L = Dims<T>::L, RI = Dims<T>::RI;
  for (int64_t i = 0; i < nrows; i += RI) {
    int64_t qv = 0;
    for (; qv + 3 <= nqv; qv += 3)
      bgemm_block<T, RI, 3>(A + i * lda, lda, ncols, B + qv * L, ldb, C + i * ldc + qv * L, ldc);
    if (nqv - qv == 2)
      bgemm_block<T, RI, 2>(A + i * lda, lda, ncols, B + qv * L, ldb, C + i * ldc + qv * L, ldc);
    else if (nqv - qv == 1)
      bgemm_block<T, RI, 1>(A + i * lda, lda, ncols, B + qv * L, ldb, C + i * ldc + qv * L, ldc);
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

// Row-block scheduling: one worker per thread, each taking the next block from a shared counter, so a
// thread slowed down (a busy core, a block with more tiles) does not hold the others up. Which thread
// computes a block never changes what is computed: blocks own their outputs and partials.
template <class Worker>
void for_each_block(int64_t nblocks, Worker&& worker) {
  if (nblocks <= 0) return;
  std::atomic<int64_t> counter{0};
  const int64_t nw = std::min<int64_t>(nblocks, std::max(1, at::get_num_threads()));
  at::parallel_for(0, nw, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w)
      worker([&counter, nblocks]() -> int64_t {
        const int64_t b = counter.fetch_add(1, std::memory_order_relaxed);
        return b < nblocks ? b : -1;
      });
  });
}

// ---------------------------------------------------------------------------------------------------
template <typename T, KernelKind K, bool NS1, bool FuseS, bool StoreK, bool Grad, bool AvP1>
void pair_reduce_mode(const PairProblem<T>& pb) {
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR;
  (void)L;
  const int64_t N = pb.N, M = pb.M, d = pb.d, p = pb.p;
  const int64_t RB = row_block<T>(N);
  const int64_t CB = column_tile<T>(d, StoreK || Grad);
  const int64_t nrb = divup(N, RB);
  const KParams<T> kp(pb.spec);
  for_each_block(nrb, [&](auto next) {
    std::vector<T> kb(StoreK ? RB * CB : 0), wb(Grad ? RB * CB : 0);
    std::vector<T> ct((StoreK ? RB * pb.p_pad : 0) + (Grad ? RB * pb.d_pad : 0));
    std::vector<double> rs(Grad ? RB : 0), wy(Grad ? RB * d : 0);
    for (int64_t rb = next(); rb >= 0; rb = next()) {
      const int64_t i0 = rb * RB, rows = std::min(RB, N - i0), npan = divup(rows, MR);
      std::fill(rs.begin(), rs.end(), 0.0);
      std::fill(wy.begin(), wy.end(), 0.0);
      for (int64_t j0 = 0; j0 < M; j0 += CB) {
        const int64_t cols = std::min(CB, M - j0), ncp = divup(cols, NR);
        for (int64_t ip = 0; ip < npan; ++ip) {
          const int64_t gi0 = i0 + ip * MR;
          const SweepArgs sa{d, p, gi0, j0, ncp, pb.exclude_diagonal};
          T s_out[MR], rs_out[MR];
          sweep_row_panel<T, K, NS1, FuseS, StoreK, Grad, AvP1>(
              kp, sa, pb.xp + gi0 * d, pb.xn + gi0, pb.yp + j0 * d, pb.yn + j0,
              pb.vcol ? pb.vcol + j0 : nullptr, pb.acol ? pb.acol + gi0 : nullptr,
              pb.ap ? pb.ap + gi0 * p : nullptr, pb.vp ? pb.vp + j0 * p : nullptr,
              StoreK ? kb.data() + ip * MR * CB : nullptr, Grad ? wb.data() + ip * MR * CB : nullptr, CB,
              s_out, rs_out);
          for (int r = 0; r < MR && gi0 + r < N; ++r) {
            if constexpr (FuseS) pb.S[gi0 + r] += static_cast<double>(s_out[r]);
            if constexpr (Grad) rs[gi0 + r - i0] += static_cast<double>(rs_out[r]);
          }
        }
        if constexpr (StoreK) {
          T* c = ct.data();
          bgemm<T>(kb.data(), CB, npan * MR, ncp * NR, pb.vr + j0 * pb.p_pad, pb.p_pad, pb.p_pad / L, c,
                   pb.p_pad);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t q = 0; q < p; ++q) pb.S[(i0 + i) * p + q] += static_cast<double>(c[i * pb.p_pad + q]);
        }
        if constexpr (Grad) {
          T* c = ct.data() + (StoreK ? RB * pb.p_pad : 0);
          bgemm<T>(wb.data(), CB, npan * MR, ncp * NR, pb.yr + j0 * pb.d_pad, pb.d_pad, pb.d_pad / L, c,
                   pb.d_pad);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t k = 0; k < d; ++k) wy[i * d + k] += static_cast<double>(c[i * pb.d_pad + k]);
        }
      }
      if constexpr (Grad) {
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t k = 0; k < d; ++k)
            pb.G[(i0 + i) * d + k] =
                static_cast<double>(pb.xr[(i0 + i) * d + k]) * rs[i] - wy[i * d + k];
      }
    }
  });
}

template <typename T, KernelKind K, bool NS1>
void pair_reduce_kernel(const PairProblem<T>& pb) {
  const bool grad = pb.G != nullptr, p1 = pb.p == 1;
  if (!grad && p1)
    pair_reduce_mode<T, K, NS1, true, false, false, false>(pb);
  else if (grad && p1)
    pair_reduce_mode<T, K, NS1, true, false, true, true>(pb);
  else if (!grad)
    pair_reduce_mode<T, K, NS1, false, true, false, false>(pb);
  else
    pair_reduce_mode<T, K, NS1, false, true, true, false>(pb);
}

// ---------------------------------------------------------------------------------------------------
// quad_form: symmetric. Blocks of B rows; row block I visits column tiles J >= I; the diagonal tile
// counts once, the others twice. One float64 partial per (block, column of w), summed in block order.
template <typename T, KernelKind K, bool NS1, bool P1>
void quad_form_mode(const QuadProblem<T>& pb) {
  constexpr int L = Dims<T>::L;
  (void)L;
  constexpr int MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t N = pb.N, d = pb.d, P = pb.P, Pp = pb.P_pad;
  const int64_t B = N >= 2048 ? 128 : 64;  // a multiple of MR and NR; a function of N only
  const int64_t nb = divup(N, B);
  const KParams<T> kp(pb.spec);
  std::vector<double> qpart(nb * P, 0.0);
  // blocks are handed out in order 0, 1, ...: most tiles first, so the dynamic schedule balances
  for_each_block(nb, [&](auto next) {
    std::vector<T> kb(P1 ? 0 : B * B), ct(P1 ? 0 : B * Pp);
    std::vector<double> tile(P);
    for (int64_t I = next(); I >= 0; I = next()) {
      {
        const int64_t i0 = I * B, rows = std::min(B, N - i0), npan = divup(rows, MR);
        for (int64_t J = I; J < nb; ++J) {
          const int64_t j0 = J * B, cols = std::min(B, N - j0), ncp = divup(cols, NR);
          const double factor = J == I ? 1.0 : 2.0;
          std::fill(tile.begin(), tile.end(), 0.0);
          for (int64_t ip = 0; ip < npan; ++ip) {
            const int64_t gi0 = i0 + ip * MR;
            const SweepArgs sa{d, 1, gi0, j0, ncp, pb.exclude_diagonal && I == J};
            T s_out[MR], rs_out[MR];
            sweep_row_panel<T, K, NS1, P1, !P1, false, false>(
                kp, sa, pb.zp + gi0 * d, pb.zn + gi0, pb.zq + j0 * d, pb.zn + j0,
                P1 ? pb.wcol + j0 : nullptr, nullptr, nullptr, nullptr,
                P1 ? nullptr : kb.data() + ip * MR * B, nullptr, B, s_out, rs_out);
            if constexpr (P1) {
              for (int r = 0; r < MR && gi0 + r < N; ++r)
                tile[0] += static_cast<double>(pb.wcol[gi0 + r]) * static_cast<double>(s_out[r]);
            }
          }
          if constexpr (!P1) {
            T* c = ct.data();
            bgemm<T>(kb.data(), B, npan * MR, ncp * NR, pb.wr + j0 * Pp, Pp, Pp / L, c, Pp);
            for (int64_t i = 0; i < rows; ++i) {
              const T* wi = pb.wr + (i0 + i) * Pp;
              for (int64_t q = 0; q < P; ++q)
                tile[q] += static_cast<double>(wi[q]) * static_cast<double>(c[i * Pp + q]);
            }
          }
          for (int64_t q = 0; q < P; ++q) qpart[I * P + q] += factor * tile[q];
        }
      }
    }
  });
  for (int64_t q = 0; q < P; ++q) {
    double s = 0.0;
    for (int64_t I = 0; I < nb; ++I) s += qpart[I * P + q];
    pb.q[q] = s;
  }
}

template <typename T, KernelKind K, bool NS1>
void quad_form_kernel(const QuadProblem<T>& pb) {
  if (pb.P == 1)
    quad_form_mode<T, K, NS1, true>(pb);
  else
    quad_form_mode<T, K, NS1, false>(pb);
}

// ---------------------------------------------------------------------------------------------------
template <typename T, bool NS1>
void gram_kernel(const GramProblem<T>& pb) {
  constexpr int MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t N = pb.N, M = pb.M, d = pb.d;
  const int64_t RB = row_block<T>(N), CB = column_tile<T>(d, true);
  const int64_t nrb = divup(N, RB);
  const KParams<T> kp(pb.spec);
  for_each_block(nrb, [&](auto next) {
    std::vector<T> kb(RB * CB);
    for (int64_t rb = next(); rb >= 0; rb = next()) {
      const int64_t i0 = rb * RB, rows = std::min(RB, N - i0), npan = divup(rows, MR);
      for (int64_t j0 = 0; j0 < M; j0 += CB) {
        const int64_t cols = std::min(CB, M - j0), ncp = divup(cols, NR);
        for (int64_t ip = 0; ip < npan; ++ip) {
          const int64_t gi0 = i0 + ip * MR;
          const SweepArgs sa{d, 1, gi0, j0, ncp, false};
          T s_out[MR], rs_out[MR];
          sweep_row_panel<T, KernelKind::RBF, NS1, false, true, false, false>(
              kp, sa, pb.xp + gi0 * d, pb.xn + gi0, pb.yp + j0 * d, pb.yn + j0, nullptr, nullptr, nullptr,
              nullptr, kb.data() + ip * MR * CB, nullptr, CB, s_out, rs_out);
        }
        for (int64_t i = 0; i < rows; ++i)
          std::memcpy(pb.K + (i0 + i) * M + j0, kb.data() + i * CB, sizeof(T) * cols);
      }
    }
  });
}

template <typename T>
void run_pair_reduce_impl(const PairProblem<T>& pb) {
  const bool ns1 = pb.spec.n_scales == 1;
  if (pb.spec.kind == KernelKind::RBF)
    ns1 ? pair_reduce_kernel<T, KernelKind::RBF, true>(pb) : pair_reduce_kernel<T, KernelKind::RBF, false>(pb);
  else
    ns1 ? pair_reduce_kernel<T, KernelKind::IMQ, true>(pb) : pair_reduce_kernel<T, KernelKind::IMQ, false>(pb);
}

template <typename T>
void run_quad_form_impl(const QuadProblem<T>& pb) {
  const bool ns1 = pb.spec.n_scales == 1;
  if (pb.spec.kind == KernelKind::RBF)
    ns1 ? quad_form_kernel<T, KernelKind::RBF, true>(pb) : quad_form_kernel<T, KernelKind::RBF, false>(pb);
  else
    ns1 ? quad_form_kernel<T, KernelKind::IMQ, true>(pb) : quad_form_kernel<T, KernelKind::IMQ, false>(pb);
}

template <typename T>
void run_gram_impl(const GramProblem<T>& pb) {
  pb.spec.n_scales == 1 ? gram_kernel<T, true>(pb) : gram_kernel<T, false>(pb);
}

}  // namespace engine
}  // namespace cpu
}  // namespace infovae

#define INFOVAE_INSTANTIATE_ENGINE(T)                                                           \
  namespace infovae {                                                                           \
  namespace cpu {                                                                               \
  namespace engine {                                                                            \
  template <>                                                                                   \
  void run_pair_reduce<T>(const PairProblem<T>& pb) { run_pair_reduce_impl<T>(pb); }            \
  template <>                                                                                   \
  void run_quad_form<T>(const QuadProblem<T>& pb) { run_quad_form_impl<T>(pb); }                \
  template <>                                                                                   \
  void run_gram<T>(const GramProblem<T>& pb) { run_gram_impl<T>(pb); }                          \
  }                                                                                             \
  }                                                                                             \
  }
