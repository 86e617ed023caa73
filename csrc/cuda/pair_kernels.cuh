// CUDA kernels of the infovae:: primitives and their torch-free launch sequences. Raw pointers,
// cuda_fp16/cuda_bf16 element types, the per-pair math of csrc/include/infovae/pair_math.h.
// ops_cuda.cu validates, allocates and calls the run_* drivers at the end of this file;
// tests/cpp/test_cuda_emulation.cpp calls the same drivers on the CPU (INFOVAE_CUDA_EMULATION), so the
// host-side scheduling (grids, rounds, slabs, final sums) is tested along with the kernels.
//
// Tiling (one CUDA block = 16 x 16 threads):
//   BM x BN pair tile, BM = 16*TM rows of X, BN = 16*TN rows of Y; thread (ty, tx) owns the TM x TN pairs
//   (ty + 16 r, tx + 16 c). Both operands are staged in shared memory, k-major ([BK][rows]), BK = 16
//   features at a time, with 16-byte vector loads when the row length and base pointer allow it.
//   float/half/bf16 -> acc_t float, TM = TN = 4 (64 x 64 tile); double -> acc_t double, TM = TN = 2.
// Kernel families (Family below): every kernel is compiled once per family (RULE: rbf, imq; DIFF:
//   laplacian, energy; DOT: polynomial), the kind within a family read at run time.
// Distances. RULE: r2 = |x|^2 + |y|^2 - 2 x.y, clamped at 0, where |x|^2 is accumulated exactly like the
//   dot products (acc_t, fma, k ascending from 0), so a point paired with itself gives r2 = 0 exactly; in
//   quad_form r2 is also forced to 0 for i == j. A tile computes r2 = sum_k (x_k - y_k)^2 instead when
//   the expansion would lose the distance (the lossy-distance rule of pair_math.h, decided per tile from
//   the largest squared norm of each side's rows: uniform over the block). DIFF: r2 = sum_k (x_k - y_k)^2
//   on every tile (no norms are computed). DOT: the dot products x.y only (no norms, no distances); its
//   gradient term is -h (a . v) y_j where the distance kernels have g (a . v)(x_i - y_j).
// Sums. Per tile, partial sums in acc_t; across tiles, float64 in a fixed order owned by one block; slabs
//   summed by fixed-order kernels. No atomics; no grid choice depends on the device (only on the
//   problem size): bitwise reproducible run to run, process to process and GPU to GPU.
// Stein primitives: stein_form on quad_form's symmetric schedule, stein_moments on pair_reduce's full one;
//   r2 and the cross term from coordinate differences (pair_math.h, "Stein kernels").
// Batches (gram, pair_reduce, quad_form; docs/DESIGN.md, "Batched problems"): `batch` problems of one shape,
//   each a contiguous block of every input, params one row of n_scales values per problem. Every kernel
//   of these three runs with grid.z = batch, blockIdx.z the problem (problem_index): it moves its
//   pointers to that problem's rows and reads that problem's params; grid.x and grid.y, and every plan,
//   are the 2-D call's, a function of the problem's size only, so problem b's result is bitwise the 2-D
//   call's (a 2-D call is the batch of one). Scratch and slabs get a leading batch axis.
#pragma once

#include <cuda_bf16.h>  // tests/cpp/emu/ holds host stand-ins of these three for the emulation
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "infovae/pair_math.h"

// Launch-error hook: ops_cuda.cu defines it as C10_CUDA_KERNEL_LAUNCH_CHECK() before including this file.
#ifndef INFOVAE_CHECK_LAUNCH
#define INFOVAE_CHECK_LAUNCH() ((void)0)
#endif

namespace infovae {
namespace cuda_kernels {

constexpr int kThreadsX = 16;
constexpr int kThreadsY = 16;
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kBK = 16;     // features per shared-memory stage
constexpr int kPad = 4;     // shared-memory row padding (keeps 16-byte alignment of rows)
constexpr int kNarrow = 4;  // pair_reduce: S = K v with p <= kNarrow is reduced in registers
constexpr int kQC = kThreadsX;  // quad_form: output columns per chunk (one per thread column)

template <typename acc_t>
struct TileCfg;
template <>
struct TileCfg<float> {
  static constexpr int TM = 4, TN = 4, TC = 2, NREG = 1;  // NREG: output chunks kept in registers
};
template <>
struct TileCfg<double> {
  static constexpr int TM = 2, TN = 2, TC = 2, NREG = 1;
};

template <typename acc_t>
struct Tile {
  using C = TileCfg<acc_t>;
  static constexpr int TM = C::TM, TN = C::TN, TC = C::TC, NREG = C::NREG;
  static constexpr int BM = kThreadsY * TM;
  static constexpr int BN = kThreadsX * TN;
  static constexpr int BC = kThreadsX * TC;
  static constexpr int LDP = BN + 1;
  // Shared memory: pair_reduce and quad_form each as a union of their phases.
  static constexpr int kDotBytes = 2 * kBK * (BM + kPad) * int(sizeof(acc_t));  // staging of two operands
  static constexpr int kPBytes = BM * LDP * int(sizeof(acc_t));                 // one BM x BN pair matrix
  static constexpr int kCBytes = BN * (BC + kPad) * int(sizeof(acc_t));
  static constexpr int kReduceBytes = 2 * kPBytes + kCBytes;
  static constexpr int kQCBytes = BN * (kQC + kPad) * int(sizeof(acc_t));
  static constexpr int kQuadBytes = 2 * kPBytes + 2 * kQCBytes + kThreadsY * kQC * int(sizeof(acc_t));
  static constexpr int cmax(int a, int b) { return a > b ? a : b; }
  static constexpr int kSmemBytes = cmax(kDotBytes, kReduceBytes);
  static_assert(BM == BN, "square tiles (quad_form pairs row blocks with row blocks)");
  static_assert(kDotBytes <= 2 * kPBytes, "quad_form: operand staging overlaps the two pair matrices only");
  static_assert(kSmemBytes <= 48 * 1024 && kQuadBytes <= 48 * 1024, "static shared memory limit");
};

__host__ __device__ __forceinline__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename acc_t>
__host__ __device__ __forceinline__ constexpr int64_t row_blocks(int64_t n) {
  return ceil_div(n, Tile<acc_t>::BM);
}

// The problem of the batch this block works on (grid.z = the batch size).
__device__ __forceinline__ int64_t problem_index() { return static_cast<int64_t>(blockIdx.z); }

// pair_reduce: the squared norms and their per-row-block maxima of this block's problem, moved to
// problem b by thread 0 and kept in shared memory (read by every thread after load_kernel's barrier).
// Four more pointers held in registers made ptxas spill pair_reduce<double> (rbf, imq) at sm_90.
template <typename acc_t>
struct ProblemNorms {
  const acc_t *xnorm, *ynorm, *xmax, *ymax;
};

// ---- per-pair math (csrc/include/infovae/pair_math.h) ----

// The kernel parameters of a launch, built in every block from the float64 params array on the device
// (thread 0 reads n_scales <= kMaxScales values into shared memory): no host copy of params, no sync.
template <typename acc_t>
struct DeviceKernel {
  KernelParams<acc_t> p;
  double kappa;  // of the lossy-distance rule
};

// Every thread of the block must call it (it ends with a barrier).
// part[r][c] += sum_jj P[row r][jj] (+-) C[jj][col c] over a tile's BN pair columns, for this thread's TM x TC
// outputs (rows ty + kThreadsY r, columns tx + kThreadsX c): P [BM][LDP] one per-pair matrix in shared memory,
// C [BN][LDC] a chunk of right-hand-side columns. Phase 2 of pair_reduce (S and G) and of stein_moments.
template <int TM, int TC, int BN, int LDP, int LDC, bool Negate = false, typename acc_t>
__device__ __forceinline__ void add_tile_product(const acc_t* P, const acc_t* C, int ty, int tx,
                                                 acc_t (&part)[TM][TC]) {
#pragma unroll 4
  for (int jj = 0; jj < BN; ++jj) {
    acc_t pv[TM], cv[TC];
#pragma unroll
    for (int r = 0; r < TM; ++r) pv[r] = P[(ty + kThreadsY * r) * LDP + jj];
#pragma unroll
    for (int c = 0; c < TC; ++c) cv[c] = C[jj * LDC + tx + kThreadsX * c];
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TC; ++c) part[r][c] = fma(pv[r], Negate ? -cv[c] : cv[c], part[r][c]);
  }
}

template <typename acc_t>
__device__ __forceinline__ void load_kernel(DeviceKernel<acc_t>& k, KernelKind kind, const double* __restrict__ params,
                                            int n_scales) {
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    k.p = make_kernel_params<acc_t>(kind, params, n_scales);
    k.kappa = lossy_kappa(kind, params, n_scales);
  }
  __syncthreads();
}

// The exponential of the CUDA kernels: exp of the compute type without fast-math (expf / exp, the CUDA
// math library's ~1-2 ulp versions); see setup.py for why --use_fast_math is not used.
using CudaExp = StdExp;

// Kernel families: every kernel (and its driver) is compiled once per family, so that a launch carries
// only its own family's per-pair code. One run-time switch over all five kinds in the pair loop made
// ptxas spill (pair_reduce<double>: 120 -> 6756 bytes of spill stores at sm_90, from the double
// division and sqrt slow paths of laplacian/energy beside rbf/imq).
//   RULE: rbf, imq          r2 by the expansion, or by coordinate differences where the lossy rule says
//   DIFF: laplacian, energy r2 from coordinate differences on every tile (always_differences)
//   DOT:  polynomial        the dot product x.y only (no norms, no differences); G's term -h (a.v) y_j
enum class Family : int { RULE = 0, DIFF = 1, DOT = 2 };

__host__ __device__ __forceinline__ constexpr Family family_of(KernelKind kind) {
  return is_dot_kernel(kind) ? Family::DOT : always_differences(kind) ? Family::DIFF : Family::RULE;
}

// k of one pair from its argument (r2, or x.y for DOT).
template <Family F, typename acc_t>
__device__ __forceinline__ acc_t k_of(const DeviceKernel<acc_t>& k, acc_t arg) {
  if constexpr (F == Family::DOT) {
    return dot_kernel_value(k.p, arg);
  } else if constexpr (F == Family::DIFF) {
    return k.p.kind == KernelKind::ENERGY ? kernel_value<KernelKind::ENERGY, 1>(k.p, arg, CudaExp{})
                                          : kernel_value<KernelKind::LAPLACIAN, 0>(k.p, arg, CudaExp{});
  } else {
    return k.p.kind == KernelKind::IMQ ? kernel_value<KernelKind::IMQ, 0>(k.p, arg, CudaExp{})
                                       : kernel_value<KernelKind::RBF, 0>(k.p, arg, CudaExp{});
  }
}

// k and its gradient weight: g (distance kernels; g = 0 where r2 == 0) or h (DOT); k is bitwise k_of's.
template <Family F, typename acc_t>
__device__ __forceinline__ void k_and_g_of(const DeviceKernel<acc_t>& k, acc_t arg, acc_t& kv, acc_t& gv) {
  if constexpr (F == Family::DOT) {
    dot_kernel_value_and_weight(k.p, arg, kv, gv);
  } else if constexpr (F == Family::DIFF) {
    if (k.p.kind == KernelKind::ENERGY) {
      kernel_value_and_weight<KernelKind::ENERGY, 1>(k.p, arg, CudaExp{}, kv, gv);
    } else {
      kernel_value_and_weight<KernelKind::LAPLACIAN, 0>(k.p, arg, CudaExp{}, kv, gv);
    }
  } else {
    if (k.p.kind == KernelKind::IMQ) {
      kernel_value_and_weight<KernelKind::IMQ, 0>(k.p, arg, CudaExp{}, kv, gv);
    } else {
      kernel_value_and_weight<KernelKind::RBF, 0>(k.p, arg, CudaExp{}, kv, gv);
    }
  }
}

// Whether a tile whose rows have squared norms <= max_x and columns <= max_y computes r2 from
// coordinate differences (uniform over the block: every thread reads the same two maxima).
template <typename acc_t>
__device__ __forceinline__ bool tile_is_lossy(const DeviceKernel<acc_t>& k, acc_t max_x, acc_t max_y) {
  return expansion_is_lossy<acc_t>(static_cast<double>(max_x), static_cast<double>(max_y), k.kappa);
}

// ---- element conversion (explicit intrinsics: torch builds with __CUDA_NO_HALF_CONVERSIONS__) ----
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ double to_float(double v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t to_acc(T v) {
  return static_cast<acc_t>(to_float(v));
}

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ double from_acc_d(double v) { return v; }

template <typename T>
struct alignas(16) Vec16 {
  static constexpr int N = 16 / int(sizeof(T));
  T v[N];
};

// Loads rows [row0, row0 + ROWS) x features [k0, k0 + kBK) of a row-major (nrows, ld) matrix into
// dst[k][row] (k-major) as acc_t; zeros outside the matrix.
// vec: 16-byte loads allowed (ld % (16 / sizeof(T)) == 0 and src 16-byte aligned).
template <typename T, typename acc_t, int ROWS>
__device__ __forceinline__ void load_tile_kmajor(acc_t* __restrict__ dst, const T* __restrict__ src,
                                                 int64_t nrows, int64_t ld, int64_t row0, int64_t k0, bool vec) {
  constexpr int LDS = ROWS + kPad;
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;
  if (vec) {
    constexpr int VEC = Vec16<T>::N;
    static_assert(kBK % VEC == 0, "vector width must divide kBK");
    constexpr int VPR = kBK / VEC;
    for (int t = tid; t < ROWS * VPR; t += kThreads) {
      const int r = t / VPR;
      const int kk = (t % VPR) * VEC;
      const int64_t row = row0 + r;
      const int64_t k = k0 + kk;
      if (row < nrows && k < ld) {  // ld % VEC == 0: the vector is entirely inside or outside
        const Vec16<T> q = *reinterpret_cast<const Vec16<T>*>(src + row * ld + k);
#pragma unroll
        for (int e = 0; e < VEC; ++e) dst[(kk + e) * LDS + r] = to_acc<acc_t>(q.v[e]);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) dst[(kk + e) * LDS + r] = acc_t(0);
      }
    }
  } else {
    for (int t = tid; t < ROWS * kBK; t += kThreads) {
      const int r = t / kBK;
      const int kk = t % kBK;
      const int64_t row = row0 + r;
      const int64_t k = k0 + kk;
      dst[kk * LDS + r] = (row < nrows && k < ld) ? to_acc<acc_t>(src[row * ld + k]) : acc_t(0);
    }
  }
}

// For the thread's TM x TN pairs (A row row0a + ty + 16 r, B row row0b + tx + 16 c), over features
// k < kdim ascending from 0 in acc_t with fma:
//   DIFF = false: out = sum_k a_k b_k          (dot products)
//   DIFF = true:  out = sum_k (a_k - b_k)^2    (squared distances from coordinate differences)
// Ends with __syncthreads(), so the caller may reuse the staging memory (the first kDotBytes of smem).
template <bool DIFF, typename T, typename acc_t>
__device__ __forceinline__ void tile_pairs(acc_t (&out)[Tile<acc_t>::TM][Tile<acc_t>::TN], acc_t* smem,
                                           const T* __restrict__ A, int64_t na, int64_t row0a, bool vec_a,
                                           const T* __restrict__ B, int64_t nb, int64_t row0b, bool vec_b,
                                           int64_t kdim) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN, BM = TL::BM, BN = TL::BN;
  constexpr int LDA = BM + kPad, LDB = BN + kPad;
  acc_t* As = smem;
  acc_t* Bs = smem + kBK * LDA;
  const int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c) out[r][c] = acc_t(0);
  for (int64_t k0 = 0; k0 < kdim; k0 += kBK) {
    load_tile_kmajor<T, acc_t, BM>(As, A, na, kdim, row0a, k0, vec_a);
    load_tile_kmajor<T, acc_t, BN>(Bs, B, nb, kdim, row0b, k0, vec_b);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      if (k0 + kk >= kdim) break;  // small d: skip the zero padding of the last stage (uniform branch)
      acc_t a[TM], b[TN];
#pragma unroll
      for (int r = 0; r < TM; ++r) a[r] = As[kk * LDA + ty + kThreadsY * r];
#pragma unroll
      for (int c = 0; c < TN; ++c) b[c] = Bs[kk * LDB + tx + kThreadsX * c];
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) {
          if constexpr (DIFF) {
            out[r][c] = add_squared_difference(out[r][c], a[r], b[c]);
          } else {
            out[r][c] = fma(a[r], b[c], out[r][c]);
          }
        }
    }
    __syncthreads();
  }
}

// Squared distances of the thread's TM x TN pairs of the tile (rows row0a.., columns row0b..), by the
// expansion with the precomputed norms or, when the tile is lossy, from coordinate differences.
template <typename T, typename acc_t>
__device__ __forceinline__ void tile_r2(acc_t (&r2)[Tile<acc_t>::TM][Tile<acc_t>::TN], acc_t* smem, bool lossy,
                                        const T* __restrict__ A, int64_t na, int64_t row0a,
                                        const acc_t* __restrict__ anorm, bool vec_a, const T* __restrict__ B,
                                        int64_t nb, int64_t row0b, const acc_t* __restrict__ bnorm, bool vec_b,
                                        int64_t d) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN;
  if (lossy) {
    tile_pairs<true, T, acc_t>(r2, smem, A, na, row0a, vec_a, B, nb, row0b, vec_b, d);
    return;
  }
  tile_pairs<false, T, acc_t>(r2, smem, A, na, row0a, vec_a, B, nb, row0b, vec_b, d);
  acc_t an[TM], bn[TN];
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = row0a + threadIdx.y + kThreadsY * r;
    an[r] = i < na ? anorm[i] : acc_t(0);
  }
#pragma unroll
  for (int c = 0; c < TN; ++c) {
    const int64_t j = row0b + threadIdx.x + kThreadsX * c;
    bn[c] = j < nb ? bnorm[j] : acc_t(0);
  }
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c) r2[r][c] = squared_distance(an[r], bn[c], r2[r][c]);
}

// The argument of the family's kernel for the thread's TM x TN pairs of the tile (rows row0a.., columns
// row0b..): r2 (RULE: the expansion, or coordinate differences on a lossy tile; DIFF: coordinate
// differences) or x.y (DOT). amax / bmax: the per-row-block maxima of the squared norms, read by RULE
// only (the drivers compute norms for RULE only; anorm, bnorm, amax, bmax are not read otherwise).
template <Family F, typename T, typename acc_t>
__device__ __forceinline__ void tile_arg(acc_t (&arg)[Tile<acc_t>::TM][Tile<acc_t>::TN], acc_t* smem,
                                         const DeviceKernel<acc_t>& kern, const T* __restrict__ A, int64_t na,
                                         int64_t row0a, const acc_t* __restrict__ anorm,
                                         const acc_t* __restrict__ amax, bool vec_a, const T* __restrict__ B,
                                         int64_t nb, int64_t row0b, const acc_t* __restrict__ bnorm,
                                         const acc_t* __restrict__ bmax, bool vec_b, int64_t d) {
  if constexpr (F == Family::DOT) {
    tile_pairs<false, T, acc_t>(arg, smem, A, na, row0a, vec_a, B, nb, row0b, vec_b, d);
  } else if constexpr (F == Family::DIFF) {
    tile_pairs<true, T, acc_t>(arg, smem, A, na, row0a, vec_a, B, nb, row0b, vec_b, d);
  } else {
    const bool lossy = tile_is_lossy(kern, amax[row0a / Tile<acc_t>::BM], bmax[row0b / Tile<acc_t>::BN]);
    tile_r2<T, acc_t>(arg, smem, lossy, A, na, row0a, anorm, vec_a, B, nb, row0b, bnorm, vec_b, d);
  }
}

// ---- kernels ----

// norms[i] = |x_i|^2 accumulated as tile_pairs accumulates a dot product (acc_t, fma, k ascending), so
// that |x_i|^2 + |x_i|^2 - 2 x_i.x_i == 0 exactly; tile_max[I] = max of norms over rows
// [I * BM, (I + 1) * BM). One thread per row, BM threads per block; x (batch, n, d), norms (batch, n),
// tile_max (batch, row_blocks(n)).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(Tile<acc_t>::BM)
    row_norms_kernel(const T* __restrict__ x, int64_t n, int64_t d, acc_t* __restrict__ norms,
                     acc_t* __restrict__ tile_max) {
  constexpr int BM = Tile<acc_t>::BM;
  __shared__ acc_t red[BM];
  const int64_t b = problem_index();
  x += b * n * d;
  norms += b * n;
  tile_max += b * row_blocks<acc_t>(n);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * BM + threadIdx.x;
  acc_t s = acc_t(0);
  if (row < n) {
    const T* xr = x + row * d;
    for (int64_t k = 0; k < d; ++k) {
      const acc_t v = to_acc<acc_t>(xr[k]);
      s = fma(v, v, s);
    }
    norms[row] = s;
  }
  red[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t m = red[0];
    for (int t = 1; t < BM; ++t) m = red[t] > m ? red[t] : m;
    tile_max[blockIdx.x] = m;
  }
}

// gram: out[i][j] = k_ij, or when derivative g_ij (distance kernels) / h_ij (DOT), written in T.
// grid (ceil(M/BN), ceil(N/BM), batch); the norms and maxima as row_norms_kernel writes them.
template <typename T, typename acc_t, Family F>
__global__ void __launch_bounds__(kThreads)
    gram_kernel(const T* __restrict__ x, const T* __restrict__ y, int64_t N, int64_t M, int64_t d,
                const acc_t* __restrict__ xnorm, const acc_t* __restrict__ ynorm, const acc_t* __restrict__ xmax,
                const acc_t* __restrict__ ymax, KernelKind kind, const double* __restrict__ params,
                int n_scales, bool derivative, bool vec_x, bool vec_y, T* __restrict__ out) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN;
  __shared__ __align__(16) unsigned char smem_raw[TL::kDotBytes];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  __shared__ DeviceKernel<acc_t> kern;
  const int64_t b = problem_index();
  x += b * N * d, y += b * M * d;
  xnorm += b * N, ynorm += b * M;
  xmax += b * row_blocks<acc_t>(N), ymax += b * row_blocks<acc_t>(M);
  params += b * n_scales;
  out += b * N * M;
  load_kernel(kern, kind, params, n_scales);
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * TL::BM;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * TL::BN;
  acc_t r2[TM][TN];  // or x.y (DOT)
  tile_arg<F, T, acc_t>(r2, smem, kern, x, N, row0, xnorm, xmax, vec_x, y, M, col0, ynorm, ymax, vec_y, d);
  const int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = row0 + ty + kThreadsY * r;
    if (i >= N) continue;
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      const int64_t j = col0 + tx + kThreadsX * c;
      if (j >= M) continue;
      acc_t kv, gv;
      k_and_g_of<F>(kern, r2[r][c], kv, gv);
      const acc_t v = derivative ? gv : kv;
      if constexpr (sizeof(acc_t) == sizeof(double)) {
        out[i * M + j] = from_acc_d(v);
      } else {
        out[i * M + j] = from_acc<T>(v);
      }
    }
  }
}

// pair_reduce. Per row block of X (BM rows; blockIdx.x) and split of Y (blockIdx.y: Y tiles
// [blockIdx.y * tiles_per_split, +tiles_per_split)), one sweep over those Y tiles in tiles of BN:
//   S_i += sum_j k_ij v_j                       (p columns)
//   G_i += sum_j g_ij (a_i . v_j) (x_i - y_j)   (d columns, only when a != nullptr)
//   DOT: G_i += -sum_j h_ij (a_i . v_j) y_j     (the same loop without the x_i term)
// S with p <= kNarrow (MMD: p = 1) skips shared memory: each thread sums its TN pairs per row, the 16
// threads of a row (one half-warp) combine by a fixed xor-shuffle tree, and thread tx = q keeps column
// q's float64 accumulator. Otherwise, and for G, outputs go through column chunks (below).
// Per tile each output is a partial sum over the tile's BN pairs in acc_t (float for half/bf16/float),
// added to a float64 accumulator owned by this block: the first NREG column chunks in registers, the
// others in the (zero-initialised) output rows of this split's slab (S + split * N * p,
// G + split * N * d), which no other block touches. Slabs are summed in split order by
// sum_slabs_kernel when there is more than one split.
// Batch: grid.z; problem b's slabs are [b][split] of S and G ([batch][splits][N][p], [batch][splits][N][d]),
// its norms and maxima in shared memory (ProblemNorms).
template <typename T, typename acc_t, Family F>
__global__ void __launch_bounds__(kThreads, 2)
    pair_reduce_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ v,
                       const T* __restrict__ a, int64_t N, int64_t M, int64_t d, int64_t p,
                       const acc_t* __restrict__ xnorm, const acc_t* __restrict__ ynorm,
                       const acc_t* __restrict__ xmax, const acc_t* __restrict__ ymax, KernelKind kind,
                       const double* __restrict__ params, int n_scales, bool exclude_diagonal, bool vec_x,
                       bool vec_y, bool vec_a, bool vec_v, int64_t tiles_per_split, double* __restrict__ S,
                       double* __restrict__ G) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN, TC = TL::TC, NREG = TL::NREG;
  constexpr int BM = TL::BM, BN = TL::BN, BC = TL::BC;
  constexpr int LDP = TL::LDP, LDC = BC + kPad;
  __shared__ __align__(16) unsigned char smem_raw[TL::kSmemBytes];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* Ps = smem;                 // [BM][LDP] kernel values
  acc_t* Qs = smem + BM * LDP;      // [BM][LDP] g_ij (a_i . v_j)
  acc_t* Cs = smem + 2 * BM * LDP;  // [BN][LDC] chunk of V or Y

  __shared__ DeviceKernel<acc_t> kern;
  __shared__ ProblemNorms<acc_t> norms;
  const bool has_a = a != nullptr;
  const int64_t b = problem_index();
  const int64_t split = blockIdx.y;
  const int64_t slab = b * gridDim.y + split;  // S, G: [batch][splits] slabs
  if (threadIdx.x == 0 && threadIdx.y == 0)
    norms = {xnorm + b * N, ynorm + b * M, xmax + b * row_blocks<acc_t>(N), ymax + b * row_blocks<acc_t>(M)};
  x += b * N * d, y += b * M * d, v += b * M * p;
  S += slab * N * p;
  if (has_a) {
    a += b * N * p;
    G += slab * N * d;
  }
  load_kernel(kern, kind, params + b * n_scales, n_scales);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t col_begin = split * tiles_per_split * BN;
  const int64_t col_end = col_begin + tiles_per_split * BN < M ? col_begin + tiles_per_split * BN : M;
  const bool narrow_s = p <= kNarrow;
  const int64_t n_s_chunks = narrow_s ? 0 : (p + BC - 1) / BC;
  const int64_t n_chunks = n_s_chunks + (has_a ? (d + BC - 1) / BC : 0);

  double acc[NREG][TM][TC];
#pragma unroll
  for (int q = 0; q < NREG; ++q)
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TC; ++c) acc[q][r][c] = 0.0;

  double nacc[TM];  // narrow S: column tx of rows ty + 16 r (threads tx < p)
#pragma unroll
  for (int r = 0; r < TM; ++r) nacc[r] = 0.0;

  for (int64_t col0 = col_begin; col0 < col_end; col0 += BN) {
    // Phase 1: distances (and a . v) for the BM x BN tile -> P, Q in shared memory.
    acc_t r2[TM][TN];  // or x.y (DOT)
    tile_arg<F, T, acc_t>(r2, smem, kern, x, N, row0, norms.xnorm, norms.xmax, vec_x, y, M, col0, norms.ynorm,
                          norms.ymax, vec_y, d);
    acc_t av[TM][TN];
    if (has_a) {
      tile_pairs<false, T, acc_t>(av, smem, a, N, row0, vec_a, v, M, col0, vec_v, p);
    }
    acc_t kreg[TM][TN];
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int64_t i = row0 + ty + kThreadsY * r;
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        const int64_t j = col0 + tx + kThreadsX * c;
        acc_t kv = acc_t(0), gv = acc_t(0);
        if (i < N && j < M && !(exclude_diagonal && i == j)) {
          if (has_a) {
            k_and_g_of<F>(kern, r2[r][c], kv, gv);
            gv *= av[r][c];
          } else {
            kv = k_of<F>(kern, r2[r][c]);
          }
        }
        const int li = ty + kThreadsY * r, lj = tx + kThreadsX * c;
        kreg[r][c] = kv;
        if (!narrow_s) Ps[li * LDP + lj] = kv;
        Qs[li * LDP + lj] = gv;
      }
    }
    if (narrow_s) {
#pragma unroll
      for (int q = 0; q < kNarrow; ++q) {
        if (q >= p) break;  // uniform
        acc_t vv[TN];
#pragma unroll
        for (int c = 0; c < TN; ++c) {
          const int64_t j = col0 + tx + kThreadsX * c;
          vv[c] = j < M ? to_acc<acc_t>(v[j * p + q]) : acc_t(0);
        }
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          acc_t t = acc_t(0);
#pragma unroll
          for (int c = 0; c < TN; ++c) t = fma(kreg[r][c], vv[c], t);
#pragma unroll
          for (int off = kThreadsX / 2; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
          if (tx == q) nacc[r] += static_cast<double>(t);
        }
      }
    }
    __syncthreads();

    // Phase 2: output column chunks.
    for (int64_t ch = 0; ch < n_chunks; ++ch) {
      const bool is_s = ch < n_s_chunks;
      const int64_t c0 = (is_s ? ch : ch - n_s_chunks) * BC;
      const int64_t width = is_s ? p : d;
      const T* src = is_s ? v : y;
      for (int t = ty * kThreadsX + tx; t < BN * BC; t += kThreads) {
        const int jj = t / BC, cc = t % BC;
        const int64_t j = col0 + jj, col = c0 + cc;
        Cs[jj * LDC + cc] = (j < M && col < width) ? to_acc<acc_t>(src[j * width + col]) : acc_t(0);
      }
      __syncthreads();
      acc_t part[TM][TC];
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TC; ++c) part[r][c] = acc_t(0);
      if (is_s) {
        add_tile_product<TM, TC, BN, LDP, LDC>(Ps, Cs, ty, tx, part);
      } else if constexpr (F == Family::DOT) {
        add_tile_product<TM, TC, BN, LDP, LDC, true>(Qs, Cs, ty, tx, part);
      } else {
        acc_t xv[TM][TC];
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          const int64_t i = row0 + ty + kThreadsY * r;
#pragma unroll
          for (int c = 0; c < TC; ++c) {
            const int64_t col = c0 + tx + kThreadsX * c;
            xv[r][c] = (i < N && col < d) ? to_acc<acc_t>(x[i * d + col]) : acc_t(0);
          }
        }
#pragma unroll 4
        for (int jj = 0; jj < BN; ++jj) {
          acc_t qv[TM], cv[TC];
#pragma unroll
          for (int r = 0; r < TM; ++r) qv[r] = Qs[(ty + kThreadsY * r) * LDP + jj];
#pragma unroll
          for (int c = 0; c < TC; ++c) cv[c] = Cs[jj * LDC + tx + kThreadsX * c];
#pragma unroll
          for (int r = 0; r < TM; ++r)
#pragma unroll
            for (int c = 0; c < TC; ++c) part[r][c] = fma(qv[r], xv[r][c] - cv[c], part[r][c]);
        }
      }
      if (ch < NREG) {
#pragma unroll
        for (int q = 0; q < NREG; ++q) {
          if (q != ch) continue;
#pragma unroll
          for (int r = 0; r < TM; ++r)
#pragma unroll
            for (int c = 0; c < TC; ++c) acc[q][r][c] += static_cast<double>(part[r][c]);
        }
      } else {
        double* out = is_s ? S : G;
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          const int64_t i = row0 + ty + kThreadsY * r;
          if (i >= N) continue;
#pragma unroll
          for (int c = 0; c < TC; ++c) {
            const int64_t col = c0 + tx + kThreadsX * c;
            if (col < width) out[i * width + col] += static_cast<double>(part[r][c]);
          }
        }
      }
      __syncthreads();  // Cs is rewritten by the next chunk; Ps/Qs/smem by the next tile
    }
  }

  if (narrow_s && tx < p) {
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int64_t i = row0 + ty + kThreadsY * r;
      if (i < N) S[i * p + tx] = nacc[r];
    }
  }
  // Register-held chunks -> output.
#pragma unroll
  for (int q = 0; q < NREG; ++q) {
    if (q >= n_chunks) break;
    const bool is_s = q < n_s_chunks;
    const int64_t c0 = (is_s ? q : q - n_s_chunks) * BC;
    const int64_t width = is_s ? p : d;
    double* out = is_s ? S : G;
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int64_t i = row0 + ty + kThreadsY * r;
      if (i >= N) continue;
#pragma unroll
      for (int c = 0; c < TC; ++c) {
        const int64_t col = c0 + tx + kThreadsX * c;
        if (col < width) out[i * width + col] = acc[q][r][c];
      }
    }
  }
}

// ---- quad_form: one symmetric sweep ----
//
// Row blocks I = 0..nb-1 of BM rows of z. The unordered block pairs {I, J} are enumerated by circulant
// rounds: round t = 0..nb/2 holds the tiles (I, (I + t) mod nb); round 0 the diagonal tiles, and when nb
// is even the last round t = nb/2 only I < nb/2 (its other half would repeat the same pairs). Each
// unordered pair of rows {i, j} lies in exactly one tile, so it is evaluated once.
// The rounds of row block I are cut into `chunks` runs of `tps` consecutive rounds (plan_quad_form; a
// function of N only). Per tile (I, J) of round t, chunk k = t / tps:
//   q:  the partial sum_{i in I, j in J} w_ip k_ij w_jp (acc_t, fixed order), times 2 off the diagonal,
//       added in float64 to qslab[I * chunks + k];
//   S:  the row part sum_{j in J} k_ij w_j to the rows of I of a "row" copy; off the diagonal, the
//       column part sum_{i in I} k_ij w_i to the rows of J of a "column" copy;
//   G:  the row part sum_j g_ij (a_i . w_j)(z_i - z_j) likewise; off the diagonal, the column part
//       sum_i g_ij (a_j . w_i)(z_j - z_i). DOT: -sum_j h_ij (a_i . w_j) z_j and -sum_i h_ij (a_j . w_i) z_i
//       (k is symmetric, so the symmetric sweep is the same; exclude_diagonal matters: k(z_i, z_i) is
//       not a constant).
// Value only (no S, no G): one launch, grid (nb, chunks); block (I, k) walks the rounds of chunk k in
// ascending order, accumulating q in its own qslab entry.
// With S or G, grouped (the default): `tps` launches, grid (nb, chunks); launch j gives block (I, k) the
//   round t = k * tps + j and copy k (Sbuf/Gbuf hold 2 * chunks copies: row copies, then column copies).
//   In a launch the blocks (I, k) are the only writers of the row copy k at rows of I and, t -> (I + t)
//   mod nb being a bijection, of the column copy k at rows of J; launches are stream-ordered.
// Per round (when 2 * chunks copies would exceed max_copy_bytes): one launch per round t, grid the blocks
//   of that round, copy 0 (2 copies).
// Either way every qslab entry receives the same tile partials in the same (ascending round) order as in
// the value-only launch, and those partials are computed by the same code from the same kernel values:
// q is bitwise the same with and without S/G. Finally S = sum of the 2 * copies copies of S in a fixed
// order (sum_slabs_kernel), G likewise, q = sum of the qslab entries in I, k order.

// Every array has a leading batch axis (the sizes below are one problem's); quad_problem moves the
// pointers to one problem.
template <typename T, typename acc_t>
struct QuadArgs {
  const T* z;
  const T* w;
  const T* a;  // nullptr: no G
  int64_t batch, N, d, P;
  const acc_t* znorm;
  const acc_t* zmax;  // per row block
  KernelKind kind;
  const double* params;  // [n_scales] per problem
  int n_scales;
  bool exclude_diagonal, vec_z, vec_w, vec_a;
  int64_t nb, tps, chunks, copies;
  double* qslab;  // [nb * chunks][P], zero-initialised
  double* Sbuf;   // [2 * copies][N][P], zero-initialised; nullptr: no S
  double* Gbuf;   // [2 * copies][N][d], zero-initialised; nullptr (a == nullptr): no G
};

// A with its pointers at problem b of the batch.
template <typename T, typename acc_t>
__device__ __forceinline__ QuadArgs<T, acc_t> quad_problem(QuadArgs<T, acc_t> A, int64_t b) {
  const int64_t N = A.N;
  A.z += b * N * A.d, A.w += b * N * A.P;
  if (A.a != nullptr) A.a += b * N * A.P;
  A.znorm += b * N, A.zmax += b * A.nb;
  A.params += b * A.n_scales;
  A.qslab += b * A.nb * A.chunks * A.P;
  if (A.Sbuf != nullptr) A.Sbuf += b * 2 * A.copies * N * A.P;
  if (A.Gbuf != nullptr) A.Gbuf += b * 2 * A.copies * N * A.d;
  return A;
}

// Where one tile's results go.
struct QuadOut {
  double* q;     // qslab entry (P)
  double* Srow;  // [N][P] row copy, Scol the matching column copy (ROWS)
  double* Scol;
  double* Grow;  // [N][d] (GRAD)
  double* Gcol;
};

// Rounds of row block I: t = 0..nb/2, the last one only for I < nb/2 when nb is even.
__host__ __device__ __forceinline__ int64_t quad_rounds_of(int64_t nb, int64_t I) {
  return nb / 2 + ((nb % 2 == 1 || I < nb / 2) ? 1 : 0);
}
// Blocks of the launch of round t (per-round mode).
__host__ __device__ __forceinline__ int64_t quad_blocks_of_round(int64_t nb, int64_t t) {
  return (t > 0 && 2 * t == nb) ? nb / 2 : nb;
}

// Stages columns [c0, c0 + kQC) of a row-major (N, ld) matrix for one quad_form tile: the rows of block J
// (from col0) into Cj, those of block I (from row0) into Ci, zero past N and ld (tiles are square).
template <typename T, typename acc_t, int BN, int LDC>
__device__ __forceinline__ void stage_column_chunk(acc_t* Cj, acc_t* Ci, const T* src, int64_t N, int64_t ld,
                                                   int64_t c0, int64_t row0, int64_t col0) {
  for (int t = threadIdx.y * kThreadsX + threadIdx.x; t < BN * kQC; t += kThreads) {
    const int rr = t / kQC, cc = t % kQC;
    const int64_t col = c0 + cc, j = col0 + rr, i = row0 + rr;
    Cj[rr * LDC + cc] = (j < N && col < ld) ? to_acc<acc_t>(src[j * ld + col]) : acc_t(0);
    Ci[rr * LDC + cc] = (i < N && col < ld) ? to_acc<acc_t>(src[i * ld + col]) : acc_t(0);
  }
}

// Phase 2 of a quad_form tile (and of stein_form's): from the tile's pair values v_ij in Ps ([BM][LDP]),
// over column chunks of w staged in Cj / Ci ([BN][kQC + kPad]) with Red ([16][kQC]):
//   q_p += mult sum_i w_ip sum_j v_ij w_jp   (the row part in acc_t, fixed order; mult 2 off the diagonal)
//   ROWS: S row copy += sum_j v_ij w_j; off the diagonal S column copy += sum_i v_ij w_i.
// Ends with __syncthreads(): Ps, Cj, Ci, Red may be rewritten next.
template <typename T, typename acc_t, bool ROWS>
__device__ __forceinline__ void quad_tile_form(const T* __restrict__ w, int64_t N, int64_t P, int64_t row0,
                                               int64_t col0, bool diag, const acc_t* Ps, acc_t* Cj, acc_t* Ci,
                                               acc_t* Red, const QuadOut& out) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN, BM = TL::BM, BN = TL::BN, LDP = TL::LDP;
  constexpr int LDC = kQC + kPad;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const double mult = diag ? 1.0 : 2.0;  // a power of two: mult * partial is exact
  for (int64_t c0 = 0; c0 < P; c0 += kQC) {
    stage_column_chunk<T, acc_t, BN, LDC>(Cj, Ci, w, N, P, c0, row0, col0);
    __syncthreads();
    const int64_t col = c0 + tx;
    // row part: (K W_J)_i for the thread's rows i = ty + 16 r, column col
    acc_t part[TM];
#pragma unroll
    for (int r = 0; r < TM; ++r) part[r] = acc_t(0);
#pragma unroll 4
    for (int jj = 0; jj < BN; ++jj) {
      const acc_t wj = Cj[jj * LDC + tx];
#pragma unroll
      for (int r = 0; r < TM; ++r) part[r] = fma(Ps[(ty + kThreadsY * r) * LDP + jj], wj, part[r]);
    }
    acc_t s = acc_t(0);
#pragma unroll
    for (int r = 0; r < TM; ++r) s = fma(Ci[(ty + kThreadsY * r) * LDC + tx], part[r], s);
    Red[ty * kQC + tx] = s;
    if constexpr (ROWS) {
      if (col < P) {
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          const int64_t i = row0 + ty + kThreadsY * r;
          if (i < N) out.Srow[i * P + col] += static_cast<double>(part[r]);
        }
      }
      if (!diag) {
        // column part: (K^T W_I)_j for the thread's columns j = ty + 16 r of the tile
        acc_t cpart[TN];
#pragma unroll
        for (int r = 0; r < TN; ++r) cpart[r] = acc_t(0);
#pragma unroll 4
        for (int ii = 0; ii < BM; ++ii) {
          const acc_t wi = Ci[ii * LDC + tx];
#pragma unroll
          for (int r = 0; r < TN; ++r) cpart[r] = fma(Ps[ii * LDP + ty + kThreadsY * r], wi, cpart[r]);
        }
        if (col < P) {
#pragma unroll
          for (int r = 0; r < TN; ++r) {
            const int64_t j = col0 + ty + kThreadsY * r;
            if (j < N) out.Scol[j * P + col] += static_cast<double>(cpart[r]);
          }
        }
      }
    }
    __syncthreads();
    if (ty == 0 && col < P) {
      acc_t sum = acc_t(0);
#pragma unroll
      for (int yy = 0; yy < kThreadsY; ++yy) sum += Red[yy * kQC + tx];
      out.q[col] += mult * static_cast<double>(sum);
    }
    __syncthreads();  // Cj, Ci, Red are rewritten by the next chunk; Ps by the next tile or phase
  }
}

template <typename T, typename acc_t, Family F, bool ROWS, bool GRAD>
__device__ __forceinline__ void quad_tile(const QuadArgs<T, acc_t>& A, const DeviceKernel<acc_t>& kern,
                                          int64_t I, int64_t J, const QuadOut& out, acc_t* smem) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN, BM = TL::BM, BN = TL::BN, LDP = TL::LDP;
  constexpr int LDC = kQC + kPad;
  acc_t* Ps = smem;                    // [BM][LDP] k, then g_ij (a_i . w_j)  (operand staging overlaps Ps, P2s)
  acc_t* P2s = Ps + BM * LDP;          // [BM][LDP] g_ij (a_j . w_i)
  acc_t* Cj = P2s + BM * LDP;          // [BN][LDC] chunk of rows of J (w, then z)
  acc_t* Ci = Cj + BN * LDC;           // [BM][LDC] chunk of rows of I
  acc_t* Red = Ci + BM * LDC;          // [16][kQC]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t N = A.N, P = A.P, d = A.d;
  const bool diag = I == J;
  const int64_t row0 = I * BM, col0 = J * BN;

  // Phase 1: r2 (or z_i . z_j for DOT), k (and g or h) of the tile's pairs.
  acc_t r2[TM][TN];
  tile_arg<F, T, acc_t>(r2, smem, kern, A.z, N, row0, A.znorm, A.zmax, A.vec_z, A.z, N, col0, A.znorm, A.zmax,
                        A.vec_z, d);
  acc_t greg[TM][TN];
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = row0 + ty + kThreadsY * r;
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      const int64_t j = col0 + tx + kThreadsX * c;
      acc_t kv = acc_t(0), gv = acc_t(0);
      if (i < N && j < N && !(A.exclude_diagonal && i == j)) {
        // distance kernels: r2 = 0 for i == j whatever the rounding; DOT: the computed z_i . z_i
        const acc_t d2 = (F != Family::DOT && i == j) ? acc_t(0) : r2[r][c];
        if constexpr (GRAD) {
          k_and_g_of<F>(kern, d2, kv, gv);
        } else {
          kv = k_of<F>(kern, d2);
        }
      }
      Ps[(ty + kThreadsY * r) * LDP + tx + kThreadsX * c] = kv;
      greg[r][c] = gv;
    }
  }
  __syncthreads();

  // Phase 2: q (and S) over column chunks of w.
  quad_tile_form<T, acc_t, ROWS>(A.w, N, P, row0, col0, diag, Ps, Cj, Ci, Red, out);

  if constexpr (GRAD) {
    // Phase 3: G. Q_ij = g_ij (a_i . w_j) -> Ps; off the diagonal Q'_ij = g_ij (w_i . a_j) -> P2s.
    acc_t aw[TM][TN];
    tile_pairs<false, T, acc_t>(aw, smem, A.a, N, row0, A.vec_a, A.w, N, col0, A.vec_w, P);
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TN; ++c) aw[r][c] *= greg[r][c];
    if (!diag) {
      acc_t wa[TM][TN];
      tile_pairs<false, T, acc_t>(wa, smem, A.w, N, row0, A.vec_w, A.a, N, col0, A.vec_a, P);
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) P2s[(ty + kThreadsY * r) * LDP + tx + kThreadsX * c] = greg[r][c] * wa[r][c];
    }
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TN; ++c) Ps[(ty + kThreadsY * r) * LDP + tx + kThreadsX * c] = aw[r][c];
    __syncthreads();
    for (int64_t c0 = 0; c0 < d; c0 += kQC) {
      stage_column_chunk<T, acc_t, BN, LDC>(Cj, Ci, A.z, N, d, c0, row0, col0);
      __syncthreads();
      const int64_t col = c0 + tx;
      acc_t part[TM];
      acc_t zi[TM];
#pragma unroll
      for (int r = 0; r < TM; ++r) {
        part[r] = acc_t(0);
        zi[r] = F == Family::DOT ? acc_t(0) : Ci[(ty + kThreadsY * r) * LDC + tx];  // DOT: 0 - z_j
      }
#pragma unroll 4
      for (int jj = 0; jj < BN; ++jj) {
        const acc_t zj = Cj[jj * LDC + tx];
#pragma unroll
        for (int r = 0; r < TM; ++r) part[r] = fma(Ps[(ty + kThreadsY * r) * LDP + jj], zi[r] - zj, part[r]);
      }
      if (col < d) {
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          const int64_t i = row0 + ty + kThreadsY * r;
          if (i < N) out.Grow[i * d + col] += static_cast<double>(part[r]);
        }
      }
      if (!diag) {
        acc_t cpart[TN], zj[TN];
#pragma unroll
        for (int r = 0; r < TN; ++r) {
          cpart[r] = acc_t(0);
          zj[r] = F == Family::DOT ? acc_t(0) : Cj[(ty + kThreadsY * r) * LDC + tx];  // DOT: 0 - z_i
        }
#pragma unroll 4
        for (int ii = 0; ii < BM; ++ii) {
          const acc_t zv = Ci[ii * LDC + tx];
#pragma unroll
          for (int r = 0; r < TN; ++r) cpart[r] = fma(P2s[ii * LDP + ty + kThreadsY * r], zj[r] - zv, cpart[r]);
        }
        if (col < d) {
#pragma unroll
          for (int r = 0; r < TN; ++r) {
            const int64_t j = col0 + ty + kThreadsY * r;
            if (j < N) out.Gcol[j * d + col] += static_cast<double>(cpart[r]);
          }
        }
      }
      __syncthreads();
    }
  }
}

// Value only: grid (nb, chunks, batch); block (I, k) takes the rounds t in [k * tps, (k + 1) * tps) of I.
template <typename T, typename acc_t, Family F>
__global__ void __launch_bounds__(kThreads, 2) quad_form_value_kernel(QuadArgs<T, acc_t> batch_args) {
  const QuadArgs<T, acc_t> A = quad_problem(batch_args, problem_index());
  __shared__ __align__(16) unsigned char smem_raw[Tile<acc_t>::kQuadBytes];
  __shared__ DeviceKernel<acc_t> kern;
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t I = blockIdx.x, k = blockIdx.y;
  const int64_t t_begin = k * A.tps;
  const int64_t t_last = quad_rounds_of(A.nb, I);
  const int64_t t_end = t_begin + A.tps < t_last ? t_begin + A.tps : t_last;
  if (t_begin >= t_end) return;  // uniform over the block
  load_kernel(kern, A.kind, A.params, A.n_scales);
  const QuadOut out{A.qslab + (I * A.chunks + k) * A.P, nullptr, nullptr, nullptr, nullptr};
  for (int64_t t = t_begin; t < t_end; ++t) {
    quad_tile<T, acc_t, F, false, false>(A, kern, I, (I + t) % A.nb, out, smem);
  }
}

// With S and/or G: block (I, blockIdx.y) takes the tile of round t = t_base + blockIdx.y * t_stride and
// writes copy blockIdx.y (grouped: t_base = j, t_stride = tps, grid (nb, chunks); per round: t_base = t,
// grid (blocks of round t, 1)); grid.z = batch.
template <typename T, typename acc_t, Family F, bool ROWS, bool GRAD>
__global__ void __launch_bounds__(kThreads, 2)
    quad_form_round_kernel(QuadArgs<T, acc_t> batch_args, int64_t t_base, int64_t t_stride) {
  const QuadArgs<T, acc_t> A = quad_problem(batch_args, problem_index());
  __shared__ __align__(16) unsigned char smem_raw[Tile<acc_t>::kQuadBytes];
  __shared__ DeviceKernel<acc_t> kern;
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t I = blockIdx.x, copy = blockIdx.y;
  const int64_t t = t_base + copy * t_stride;
  if (t >= quad_rounds_of(A.nb, I)) return;  // uniform over the block
  load_kernel(kern, A.kind, A.params, A.n_scales);
  const int64_t N = A.N, C = A.copies;
  QuadOut out{A.qslab + (I * A.chunks + t / A.tps) * A.P, nullptr, nullptr, nullptr, nullptr};
  if (ROWS) {
    out.Srow = A.Sbuf + copy * N * A.P;
    out.Scol = A.Sbuf + (C + copy) * N * A.P;
  }
  if (GRAD) {
    out.Grow = A.Gbuf + copy * N * A.d;
    out.Gcol = A.Gbuf + (C + copy) * N * A.d;
  }
  quad_tile<T, acc_t, F, ROWS, GRAD>(A, kern, I, (I + t) % A.nb, out, smem);
}

// ---- stein_form: quad_form's symmetric sweep with the Stein kernel's values ----
//
// q_p = sum_ij w_ip u_ij w_jp, u the Langevin Stein kernel of the points x with their scores s
// (pair_math.h, "Stein kernels"; u is symmetric). The schedule, slabs and final sum are quad_form's
// value-only ones (plan_quad_form, the rounds of row block I, grid (nb, chunks), qslab, sum_slabs); per tile
// (I, J) one pass over the features of x and s gives r2, s_i.s_j and the cross term of every pair
// (stein_tile_products), the pair's u goes to Ps, and quad_tile_form adds the tile's q.

template <typename T>
struct SteinArgs {
  const T* x;
  const T* s;
  const T* w;
  int64_t N, d, P;
  SteinBase base;
  const double* params;  // [beta, c, sigma_1, ...] on the device
  int n_params;
  bool exclude_diagonal, vec_x, vec_s;
  // stein_form: plan_quad_form's nb / tps / chunks, slab = qslab [nb * chunks][P] zero-initialised;
  // stein_moments: run_stein_moments'
  int64_t nb, tps, chunks;
  double* slab;
};

// For the thread's TM x TN pairs (i = row0 + ty + 16 r, j = col0 + tx + 16 c), over features k ascending in
// acc_t: r2 = sum_k (x_ik - x_jk)^2, ss = sum_k s_ik s_jk, cross = sum_k (s_jk - s_ik)(x_ik - x_jk).
// Coordinate differences: r2 and cross are exactly 0 for i == j and carry no cancellation (no norms, no
// lossy rule). Stages four k-major operands at smem (4 kBK (BM + kPad) acc_t); ends with __syncthreads().
template <typename T, typename acc_t>
__device__ __forceinline__ void stein_tile_products(acc_t (&r2)[Tile<acc_t>::TM][Tile<acc_t>::TN],
                                                    acc_t (&ss)[Tile<acc_t>::TM][Tile<acc_t>::TN],
                                                    acc_t (&cross)[Tile<acc_t>::TM][Tile<acc_t>::TN], acc_t* smem,
                                                    const SteinArgs<T>& A, int64_t row0, int64_t col0) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN, BM = TL::BM, BN = TL::BN;
  constexpr int LDA = BM + kPad, LDB = BN + kPad;
  acc_t* Xi = smem;
  acc_t* Si = Xi + kBK * LDA;
  acc_t* Xj = Si + kBK * LDA;
  acc_t* Sj = Xj + kBK * LDB;
  const int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c) r2[r][c] = ss[r][c] = cross[r][c] = acc_t(0);
  for (int64_t k0 = 0; k0 < A.d; k0 += kBK) {
    load_tile_kmajor<T, acc_t, BM>(Xi, A.x, A.N, A.d, row0, k0, A.vec_x);
    load_tile_kmajor<T, acc_t, BM>(Si, A.s, A.N, A.d, row0, k0, A.vec_s);
    load_tile_kmajor<T, acc_t, BN>(Xj, A.x, A.N, A.d, col0, k0, A.vec_x);
    load_tile_kmajor<T, acc_t, BN>(Sj, A.s, A.N, A.d, col0, k0, A.vec_s);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      if (k0 + kk >= A.d) break;  // uniform
      acc_t xi[TM], si[TM], xj[TN], sj[TN];
#pragma unroll
      for (int r = 0; r < TM; ++r) xi[r] = Xi[kk * LDA + ty + kThreadsY * r], si[r] = Si[kk * LDA + ty + kThreadsY * r];
#pragma unroll
      for (int c = 0; c < TN; ++c) xj[c] = Xj[kk * LDB + tx + kThreadsX * c], sj[c] = Sj[kk * LDB + tx + kThreadsX * c];
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) {
          const acc_t t = xi[r] - xj[c];
          r2[r][c] = fma(t, t, r2[r][c]);
          ss[r][c] = fma(si[r], sj[c], ss[r][c]);
          cross[r][c] = fma(sj[c] - si[r], t, cross[r][c]);
        }
    }
    __syncthreads();
  }
}

// The Stein parameters of a launch, built by thread 0 of every block from the float64 params on the device
// (as load_kernel). Every thread of the block must call it (it ends with a barrier).
template <typename acc_t>
__device__ __forceinline__ void load_stein(SteinParams<acc_t>& sp, SteinBase base, const double* __restrict__ params,
                                           int n_params) {
  if (threadIdx.x == 0 && threadIdx.y == 0) sp = make_stein_params<acc_t>(base, params, n_params);
  __syncthreads();
}

template <typename T, typename acc_t>
__device__ __forceinline__ void stein_tile(const SteinArgs<T>& A, const SteinParams<acc_t>& sp, int64_t I, int64_t J,
                                           const QuadOut& out, acc_t* smem) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN, BM = TL::BM, BN = TL::BN, LDP = TL::LDP;
  constexpr int LDC = kQC + kPad;
  static_assert(4 * kBK * (BM + kPad) * int(sizeof(acc_t)) <= TL::kQuadBytes, "operand staging fits the tile's smem");
  acc_t* Ps = smem;                  // [BM][LDP] u (operand staging overlaps Ps and what follows)
  acc_t* Cj = Ps + 2 * BM * LDP;     // quad_tile's layout
  acc_t* Ci = Cj + BN * LDC;
  acc_t* Red = Ci + BM * LDC;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t N = A.N, row0 = I * BM, col0 = J * BN;
  acc_t r2[TM][TN], ss[TM][TN], cross[TM][TN];
  stein_tile_products<T, acc_t>(r2, ss, cross, smem, A, row0, col0);
  const acc_t two_d = static_cast<acc_t>(2 * A.d);
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = row0 + ty + kThreadsY * r;
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      const int64_t j = col0 + tx + kThreadsX * c;
      acc_t u = acc_t(0);
      if (i < N && j < N && !(A.exclude_diagonal && i == j)) {
        acc_t rad[3];
        stein_radial<2>(sp, r2[r][c], CudaExp{}, rad);
        u = stein_value(rad, r2[r][c], ss[r][c], cross[r][c], two_d);
      }
      Ps[(ty + kThreadsY * r) * LDP + tx + kThreadsX * c] = u;
    }
  }
  __syncthreads();
  quad_tile_form<T, acc_t, false>(A.w, N, A.P, row0, col0, I == J, Ps, Cj, Ci, Red, out);
}

// grid (nb, chunks); block (I, k) takes the rounds t in [k * tps, (k + 1) * tps) of I (quad_form_value_kernel).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads, 2) stein_form_kernel(SteinArgs<T> A) {
  __shared__ __align__(16) unsigned char smem_raw[Tile<acc_t>::kQuadBytes];
  __shared__ SteinParams<acc_t> sp;
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t I = blockIdx.x, k = blockIdx.y;
  const int64_t t_begin = k * A.tps;
  const int64_t t_last = quad_rounds_of(A.nb, I);
  const int64_t t_end = t_begin + A.tps < t_last ? t_begin + A.tps : t_last;
  if (t_begin >= t_end) return;  // uniform over the block
  load_stein(sp, A.base, A.params, A.n_params);
  const QuadOut out{A.slab + (I * A.chunks + k) * A.P, nullptr, nullptr, nullptr, nullptr};
  for (int64_t t = t_begin; t < t_end; ++t) stein_tile<T, acc_t>(A, sp, I, (I + t) % A.nb, out, smem);
}

// ---- stein_moments: pair_reduce's full sweep with the four Stein matrices ----
//
// R[i][k][c] = sum_j M^k_ij Rhs_jc, M^k = U, phi, phi', A (pair_math.h, "Stein kernels"), Rhs_j = [w_j,
// w_j x_j, w_j s_j] (Q = 1 + 2d columns), in the columns [first_k, end_k) the gradient reads (U: w; phi:
// w s; phi': all; A: w and w x; the others stay 0): csrc/cpu/stein.cpp's run_moments. Block (I, split)
// sweeps the column tiles of its split (plan_pair_reduce's schedule): per tile the four matrices in
// registers, then one at a time through Ps against column chunks of Rhs staged in Cs (built from w, x, s),
// each tile's row part (acc_t) added in float64 to the block's rows of its own slab; slabs summed in split
// order. Every pair is evaluated from both sides (no column parts: no transposed products to schedule).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads, 2) stein_moments_kernel(SteinArgs<T> A) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN, TC = TL::TC, BM = TL::BM, BN = TL::BN, BC = TL::BC, LDP = TL::LDP;
  constexpr int LDC = BC + kPad;
  static_assert(4 * kBK * (BM + kPad) * int(sizeof(acc_t)) <= TL::kSmemBytes, "operand staging fits the smem");
  __shared__ __align__(16) unsigned char smem_raw[TL::kSmemBytes];
  __shared__ SteinParams<acc_t> sp;
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* Ps = smem;                 // [BM][LDP] one of the four matrices (pair_reduce's layout)
  acc_t* Cs = smem + 2 * BM * LDP;  // [BN][LDC] chunk of Rhs
  load_stein(sp, A.base, A.params, A.n_params);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t N = A.N, d = A.d, Q = 1 + 2 * d;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM, split = blockIdx.y;
  const int64_t col_begin = split * A.tps * BN;
  const int64_t col_end = col_begin + A.tps * BN < N ? col_begin + A.tps * BN : N;
  double* R = A.slab + split * N * 4 * Q;
  const acc_t two_d = static_cast<acc_t>(2 * d);
  for (int64_t col0 = col_begin; col0 < col_end; col0 += BN) {
    acc_t r2[TM][TN], ss[TM][TN], cross[TM][TN];
    stein_tile_products<T, acc_t>(r2, ss, cross, smem, A, row0, col0);
    acc_t m[4][TM][TN];
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int64_t i = row0 + ty + kThreadsY * r;
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        const int64_t j = col0 + tx + kThreadsX * c;
        m[0][r][c] = m[1][r][c] = m[2][r][c] = m[3][r][c] = acc_t(0);
        if (i < N && j < N && !(A.exclude_diagonal && i == j)) {
          acc_t rad[4];
          stein_radial<3>(sp, r2[r][c], CudaExp{}, rad);
          m[0][r][c] = stein_value(rad, r2[r][c], ss[r][c], cross[r][c], two_d);
          m[1][r][c] = rad[0];
          m[2][r][c] = rad[1];
          m[3][r][c] = stein_moment_weight(rad, r2[r][c], ss[r][c], cross[r][c], two_d);
        }
      }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) Ps[(ty + kThreadsY * r) * LDP + tx + kThreadsX * c] = m[k][r][c];
      const int64_t first = k == 1 ? 1 + d : 0, end = k == 0 ? 1 : k == 3 ? 1 + d : Q;
      for (int64_t c0 = first; c0 < end; c0 += BC) {
        for (int t = ty * kThreadsX + tx; t < BN * BC; t += kThreads) {
          const int jj = t / BC, cc = t % BC;
          const int64_t j = col0 + jj, col = c0 + cc;
          acc_t v = acc_t(0);
          if (j < N && col < end) {
            acc_t f = acc_t(1);
            if (col > 0) f = to_acc<acc_t>(col <= d ? A.x[j * d + col - 1] : A.s[j * d + col - 1 - d]);
            v = to_acc<acc_t>(A.w[j]) * f;
          }
          Cs[jj * LDC + cc] = v;
        }
        __syncthreads();  // also orders the writes of Ps before the first chunk
        acc_t part[TM][TC];
#pragma unroll
        for (int r = 0; r < TM; ++r)
#pragma unroll
          for (int c = 0; c < TC; ++c) part[r][c] = acc_t(0);
        add_tile_product<TM, TC, BN, LDP, LDC>(Ps, Cs, ty, tx, part);
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          const int64_t i = row0 + ty + kThreadsY * r;
          if (i >= N) continue;
#pragma unroll
          for (int c = 0; c < TC; ++c) {
            const int64_t col = c0 + tx + kThreadsX * c;
            if (col < end) R[(i * 4 + k) * Q + col] += static_cast<double>(part[r][c]);
          }
        }
        __syncthreads();  // Cs is rewritten by the next chunk, Ps by the next matrix or tile
      }
    }
  }
}

// out[e] = sum_s slabs[s * n + e] for e < n, s ascending; per problem b of grid.z, slabs [b][n_slabs][n]
// and out [b][n]. (Templates, like every kernel here, so that the header can be included by several
// translation units without duplicate host stubs.)
template <int = 0>
__global__ void __launch_bounds__(256) sum_slabs_kernel(const double* __restrict__ slabs, int64_t n_slabs,
                                                        int64_t n, double* __restrict__ out) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const int64_t b = problem_index();
  slabs += b * n_slabs * n;
  out += b * n;
  double s = 0.0;
  for (int64_t k = 0; k < n_slabs; ++k) s += slabs[k * n + e];
  out[e] = s;
}

// ---- host side: grid planning and launch sequences (torch-free; ops_cuda.cu allocates) ----

// Grid shaping. One block per row block alone leaves most SMs idle below N of about 17k (H100: 132
// SMs x 2 resident blocks of 64 rows), so sweeps are split until about kTargetBlocks blocks exist, each
// split covering at least kMinTilesPerSplit tiles. The split depends on the problem size only, never on
// the device, so results are bitwise identical run to run and GPU to GPU.
constexpr int64_t kTargetBlocks = 528;
constexpr int64_t kMinTilesPerSplit = 4;
constexpr int64_t kMaxSlabBytes = int64_t(256) << 20;  // cap on the float64 split slabs (pair_reduce)

// Tiles per split for row_blocks blocks sweeping col_tiles tiles; max_splits caps the split count.
inline int64_t tiles_per_split(int64_t row_blocks, int64_t col_tiles, int64_t max_splits) {
  int64_t splits = ceil_div(kTargetBlocks, row_blocks);
  const int64_t by_work = ceil_div(col_tiles, kMinTilesPerSplit);
  splits = splits < by_work ? splits : by_work;
  splits = splits < max_splits ? splits : max_splits;
  splits = splits < 1 ? 1 : splits;
  const int64_t tps = ceil_div(col_tiles, splits);
  return tps < 1 ? 1 : tps;
}

template <typename F, typename... Args>
inline void launch(F* kernel, dim3 grid, dim3 block, cudaStream_t stream, Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
#ifdef INFOVAE_CUDA_EMULATION
  (void)stream;
  emu::launch(grid, block, [&] { kernel(args...); });
#else
  kernel<<<grid, block, 0, stream>>>(args...);
  INFOVAE_CHECK_LAUNCH();
#endif
}

inline dim3 tile_block() { return dim3(kThreadsX, kThreadsY); }

// A launch's grid: the 2-D call's blocks (x, y) for each problem of the batch (z).
inline dim3 batch_grid(int64_t blocks_x, int64_t blocks_y, int64_t batch) {
  return dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y), static_cast<unsigned>(batch));
}

// norms (batch, n) and tile_max (batch, row_blocks(n)) of the rows of x (batch, n, d).
template <typename T, typename acc_t>
inline void run_row_norms(const T* x, int64_t batch, int64_t n, int64_t d, acc_t* norms, acc_t* tile_max,
                          cudaStream_t s) {
  launch(&row_norms_kernel<T, acc_t>, batch_grid(row_blocks<acc_t>(n), 1, batch), dim3(Tile<acc_t>::BM), s, x, n,
         d, norms, tile_max);
}

// out (batch, n) = the sum of slabs (batch, n_slabs, n) over its slabs.
inline void run_sum_slabs(const double* slabs, int64_t batch, int64_t n_slabs, int64_t n, double* out,
                          cudaStream_t s) {
  launch(&sum_slabs_kernel<>, batch_grid(ceil_div(n, 256), 1, batch), dim3(256), s, slabs, n_slabs, n, out);
}

// batch: the number of problems (a 2-D call: 1); N, M, d are one problem's sizes.
struct GramArgs {
  int64_t batch, N, M, d;
  KernelKind kind;
  const double* params;
  int n_scales;
  bool derivative, vec_x, vec_y;
};

// The squared norms and their per-row-block maxima are read by the RULE family only (rbf, imq).
inline bool needs_norms(KernelKind kind) { return family_of(kind) == Family::RULE; }

// x (batch, N, d), y (batch, M, d), params (batch, n_scales), out (batch, N, M). Scratch: xnorm (batch, N),
// ynorm (batch, M), xmax (batch, row_blocks(N)), ymax (batch, row_blocks(M)) (written and read for rbf and
// imq only: needs_norms).
template <typename T, typename acc_t>
void run_gram(const T* x, const T* y, const GramArgs& g, acc_t* xnorm, acc_t* ynorm, acc_t* xmax,
                     acc_t* ymax, T* out, cudaStream_t s) {
  if (g.batch == 0 || g.N == 0 || g.M == 0) return;
  if (needs_norms(g.kind)) {
    run_row_norms<T, acc_t>(x, g.batch, g.N, g.d, xnorm, xmax, s);
    run_row_norms<T, acc_t>(y, g.batch, g.M, g.d, ynorm, ymax, s);
  }
  const dim3 grid = batch_grid(row_blocks<acc_t>(g.M), row_blocks<acc_t>(g.N), g.batch);
  const Family f = family_of(g.kind);
  auto* kernel = f == Family::DOT    ? &gram_kernel<T, acc_t, Family::DOT>
                 : f == Family::DIFF ? &gram_kernel<T, acc_t, Family::DIFF>
                                     : &gram_kernel<T, acc_t, Family::RULE>;
  launch(kernel, grid, tile_block(), s, x, y, g.N, g.M, g.d, (const acc_t*)xnorm, (const acc_t*)ynorm,
         (const acc_t*)xmax, (const acc_t*)ymax, g.kind, g.params, g.n_scales, g.derivative, g.vec_x, g.vec_y, out);
}

struct PairReducePlan {
  int64_t blocks, tps, splits;
};

template <typename acc_t>
inline PairReducePlan plan_pair_reduce(int64_t N, int64_t M, int64_t d, int64_t p, bool has_a) {
  PairReducePlan pl;
  pl.blocks = row_blocks<acc_t>(N);
  const int64_t col_tiles = row_blocks<acc_t>(M);
  const int64_t width = p + (has_a ? d : 0);
  int64_t max_splits = kMaxSlabBytes / (N * width * 8 > 1 ? N * width * 8 : 1);
  max_splits = max_splits < 1 ? 1 : max_splits;
  pl.tps = tiles_per_split(pl.blocks, col_tiles, max_splits);
  pl.splits = ceil_div(col_tiles, pl.tps);
  return pl;
}

// batch: the number of problems (a 2-D call: 1); N, M, d, p are one problem's sizes.
struct PairReduceArgs {
  int64_t batch, N, M, d, p;
  KernelKind kind;
  const double* params;
  int n_scales;
  bool exclude_diagonal, vec_x, vec_y, vec_a, vec_v;
};

// Inputs and params with a leading batch axis (as run_gram). S (batch, N, p) and G (batch, N, d)
// zero-initialised; with plan.splits > 1, S_slabs (batch, splits, N, p) and G_slabs (batch, splits, N, d)
// zero-initialised scratch (else unused). Scratch norms/max as run_gram.
template <typename T, typename acc_t>
void run_pair_reduce(const T* x, const T* y, const T* v, const T* a, const PairReduceArgs& r,
                            const PairReducePlan& pl, acc_t* xnorm, acc_t* ynorm, acc_t* xmax, acc_t* ymax,
                            double* S_slabs, double* G_slabs, double* S, double* G, cudaStream_t s) {
  if (r.batch == 0 || r.N == 0 || r.M == 0 || r.p == 0) return;
  if (needs_norms(r.kind)) {
    run_row_norms<T, acc_t>(x, r.batch, r.N, r.d, xnorm, xmax, s);
    run_row_norms<T, acc_t>(y, r.batch, r.M, r.d, ynorm, ymax, s);
  }
  double* S_acc = pl.splits == 1 ? S : S_slabs;
  double* G_acc = a == nullptr ? nullptr : (pl.splits == 1 ? G : G_slabs);
  const Family f = family_of(r.kind);
  auto* kernel = f == Family::DOT    ? &pair_reduce_kernel<T, acc_t, Family::DOT>
                 : f == Family::DIFF ? &pair_reduce_kernel<T, acc_t, Family::DIFF>
                                     : &pair_reduce_kernel<T, acc_t, Family::RULE>;
  launch(kernel, batch_grid(pl.blocks, pl.splits, r.batch), tile_block(), s, x, y, v, a, r.N, r.M, r.d, r.p, (const acc_t*)xnorm, (const acc_t*)ynorm,
         (const acc_t*)xmax, (const acc_t*)ymax, r.kind, r.params, r.n_scales, r.exclude_diagonal, r.vec_x,
         r.vec_y, r.vec_a, r.vec_v, pl.tps, S_acc, G_acc);
  if (pl.splits > 1) {
    run_sum_slabs(S_slabs, r.batch, pl.splits, r.N * r.p, S, s);
    if (a != nullptr) run_sum_slabs(G_slabs, r.batch, pl.splits, r.N * r.d, G, s);
  }
}

struct QuadPlan {
  int64_t nb, rounds, tps, chunks;
  int64_t copies;  // of S and of G, each (row and column): chunks (grouped launches) or 1 (per round)
  bool grouped;
};

// nb, tps and chunks depend on N only (q's summation order); the S/G mode on the size of the copies.
template <typename acc_t>
inline QuadPlan plan_quad_form(int64_t N, int64_t d, int64_t P, bool row_sums, bool grad,
                               int64_t max_copy_bytes = kMaxSlabBytes) {
  QuadPlan pl;
  pl.nb = row_blocks<acc_t>(N);
  pl.rounds = pl.nb / 2 + 1;
  pl.tps = tiles_per_split(pl.nb, pl.rounds, pl.rounds);
  pl.chunks = ceil_div(pl.rounds, pl.tps);
  const int64_t width = (row_sums ? P : 0) + (grad ? d : 0);
  pl.grouped = 2 * pl.chunks * N * width * 8 <= max_copy_bytes;
  pl.copies = pl.grouped ? pl.chunks : 1;
  return pl;
}

template <typename T, typename acc_t, Family F>
void run_quad_form_family(const QuadArgs<T, acc_t>& B, const QuadPlan& pl, cudaStream_t s) {
  const bool rows = B.Sbuf != nullptr, grad = B.Gbuf != nullptr;
  if (!rows && !grad) {
    launch(&quad_form_value_kernel<T, acc_t, F>, batch_grid(B.nb, B.chunks, B.batch), tile_block(), s, B);
    return;
  }
  auto* kernel = rows ? (grad ? &quad_form_round_kernel<T, acc_t, F, true, true>
                              : &quad_form_round_kernel<T, acc_t, F, true, false>)
                      : &quad_form_round_kernel<T, acc_t, F, false, true>;
  if (pl.grouped) {
    for (int64_t j = 0; j < B.tps; ++j)
      launch(kernel, batch_grid(B.nb, B.chunks, B.batch), tile_block(), s, B, j, B.tps);
  } else {
    for (int64_t t = 0; t < pl.rounds; ++t)
      launch(kernel, batch_grid(quad_blocks_of_round(B.nb, t), 1, B.batch), tile_block(), s, B, t, int64_t(0));
  }
}

// A holds the plan's nb/tps/chunks/copies and zero-initialised qslab, Sbuf (row_sums) and Gbuf (a
// given), each with a leading batch axis as the inputs and params; znorm (batch, N) and zmax (batch, nb)
// are scratch (rbf, imq only). Results: q (batch, P), and S (batch, N, P) / G (batch, N, d) when Sbuf /
// Gbuf are given.
template <typename T, typename acc_t>
void run_quad_form(const QuadArgs<T, acc_t>& A, const QuadPlan& pl, acc_t* znorm, acc_t* zmax, double* q,
                   double* S, double* G, cudaStream_t s) {
  if (A.batch == 0 || A.N == 0 || A.P == 0) return;
  if (needs_norms(A.kind)) run_row_norms<T, acc_t>(A.z, A.batch, A.N, A.d, znorm, zmax, s);
  QuadArgs<T, acc_t> B = A;
  B.znorm = znorm;
  B.zmax = zmax;
  switch (family_of(A.kind)) {
    case Family::DOT: run_quad_form_family<T, acc_t, Family::DOT>(B, pl, s); break;
    case Family::DIFF: run_quad_form_family<T, acc_t, Family::DIFF>(B, pl, s); break;
    default: run_quad_form_family<T, acc_t, Family::RULE>(B, pl, s); break;
  }
  if (A.Sbuf != nullptr) run_sum_slabs(A.Sbuf, A.batch, 2 * A.copies, A.N * A.P, S, s);
  if (A.Gbuf != nullptr) run_sum_slabs(A.Gbuf, A.batch, 2 * A.copies, A.N * A.d, G, s);
  run_sum_slabs(A.qslab, A.batch, A.nb * A.chunks, A.P, q, s);
}

// A holds plan_quad_form<acc_t>(N, d, P, false, false)'s nb / tps / chunks and a zero-initialised qslab
// (A.slab). Result: q (P).
template <typename T, typename acc_t>
void run_stein_form(const SteinArgs<T>& A, double* q, cudaStream_t s) {
  if (A.N == 0 || A.P == 0) return;
  launch(&stein_form_kernel<T, acc_t>, dim3(static_cast<unsigned>(A.nb), static_cast<unsigned>(A.chunks)),
         tile_block(), s, A);
  run_sum_slabs(A.slab, 1, A.nb * A.chunks, A.P, q, s);
}


// A holds plan_pair_reduce<acc_t>(N, N, 0, 4 (1 + 2d), false)'s blocks / tps / splits as nb / tps / chunks,
// and, when splits > 1, A.slab: [splits][N][4][1 + 2d] zero-initialised. R (N, 4, 1 + 2d) zero-initialised.
template <typename T, typename acc_t>
void run_stein_moments(const SteinArgs<T>& A, double* R, cudaStream_t s) {
  if (A.N == 0) return;
  SteinArgs<T> B = A;
  if (A.chunks == 1) B.slab = R;
  launch(&stein_moments_kernel<T, acc_t>, dim3(static_cast<unsigned>(A.nb), static_cast<unsigned>(A.chunks)),
         tile_block(), s, B);
  if (A.chunks > 1) run_sum_slabs(A.slab, 1, A.chunks, A.N * 4 * (1 + 2 * A.d), R, s);
}

}  // namespace cuda_kernels
}  // namespace infovae

// The drivers of one element type T (compute type A), for explicit instantiation (PREFIX empty: one
// kernels_<type>.cu each, so the four compile in parallel) and `extern` declaration (ops_cuda.cu).
#define INFOVAE_CUDA_DRIVERS(PREFIX, T, A)                                                                     \
  namespace infovae {                                                                                         \
  namespace cuda_kernels {                                                                                    \
  PREFIX template void run_gram<T, A>(const T*, const T*, const GramArgs&, A*, A*, A*, A*, T*, cudaStream_t); \
  PREFIX template void run_pair_reduce<T, A>(const T*, const T*, const T*, const T*, const PairReduceArgs&,   \
                                             const PairReducePlan&, A*, A*, A*, A*, double*, double*, double*, \
                                             double*, cudaStream_t);                                          \
  PREFIX template void run_quad_form<T, A>(const QuadArgs<T, A>&, const QuadPlan&, A*, A*, double*, double*,  \
                                           double*, cudaStream_t);                                            \
  PREFIX template void run_stein_form<T, A>(const SteinArgs<T>&, double*, cudaStream_t);                    \
  PREFIX template void run_stein_moments<T, A>(const SteinArgs<T>&, double*, cudaStream_t);                 \
  }                                                                                                           \
  }

#define INFOVAE_CUDA_DRIVERS_ALL_TYPES(PREFIX)    \
  INFOVAE_CUDA_DRIVERS(PREFIX, float, float)      \
  INFOVAE_CUDA_DRIVERS(PREFIX, double, double)    \
  INFOVAE_CUDA_DRIVERS(PREFIX, __half, float)     \
  INFOVAE_CUDA_DRIVERS(PREFIX, __nv_bfloat16, float)
