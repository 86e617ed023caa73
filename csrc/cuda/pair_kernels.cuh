// CUDA kernels of the infovae:: ops. Torch-free: raw pointers, cuda_fp16/cuda_bf16 element types, the
// per-pair math of csrc/include/infovae/pair_math.h. The launches (and every launch check) live in
// ops_cuda.cu; tests/cpp/cuda_kernels_compile.cu instantiates these templates without torch headers.
//
// Tiling (one CUDA block = 16 x 16 threads):
//   BM x BN pair tile, BM = 16*TM rows of X, BN = 16*TN rows of Y; thread (ty, tx) owns the TM x TN pairs
//   (ty + 16 r, tx + 16 c): TM*TN independent dot-product accumulators in registers. Both operands are
//   staged in shared memory, k-major ([BK][rows]), BK = 16 features at a time, loaded with 16-byte
//   vector loads when the row length and base pointer allow it.
//   float/half/bf16 -> acc_t float, TM = TN = 4 (64 x 64 tile); double -> acc_t double, TM = TN = 2 (32 x 32).
// Reductions over j (pair_reduce: S = K V, G = (g w)-weighted differences; quad_form: K W) go through
// shared memory: the tile's kernel values P (and weights Q) are written to shared memory, then output
// columns are produced in chunks of BC = 16*TC columns, each thread owning TM x TC outputs.
// Every sum has a fixed order and no atomics are used: results are bitwise reproducible.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "infovae/pair_math.h"

namespace infovae {
namespace cuda_kernels {

constexpr int kThreadsX = 16;
constexpr int kThreadsY = 16;
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kBK = 16;   // features per shared-memory stage
constexpr int kPad = 4;   // shared-memory row padding (keeps 16-byte alignment of rows)
constexpr int kNarrow = 4;  // pair_reduce: S = K v with p <= kNarrow is reduced in registers

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
  // Shared memory, as a union of the two phases of a tile.
  static constexpr int kDotBytes = 2 * kBK * (BM + kPad) * int(sizeof(acc_t));  // Xs, Ys (BM == BN)
  static constexpr int kPBytes = BM * (BN + 1) * int(sizeof(acc_t));           // P or Q
  static constexpr int kCBytes = BN * (BC + kPad) * int(sizeof(acc_t));        // chunk of V / Y / W
  static constexpr int kRedBytes = kThreadsY * BC * int(sizeof(acc_t));
  static constexpr int kReduceBytes = 2 * kPBytes + kCBytes;                    // pair_reduce phase 2
  static constexpr int kQuadBytes = kPBytes + kCBytes + kRedBytes;              // quad_form phase 2
  static constexpr int cmax(int a, int b) { return a > b ? a : b; }
  static constexpr int kSmemBytes = cmax(kDotBytes, cmax(kReduceBytes, kQuadBytes));
  static_assert(BM == BN, "square tiles (quad_form walks the upper triangle of tiles)");
  static_assert(kSmemBytes <= 48 * 1024, "static shared memory limit");
};

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
// dst[k][row] (k-major), as acc_t, minus mean[k] when mean != nullptr; zeros outside the matrix.
// vec: 16-byte loads allowed (ld % (16 / sizeof(T)) == 0 and src 16-byte aligned).
template <typename T, typename acc_t, int ROWS>
__device__ __forceinline__ void load_tile_kmajor(acc_t* __restrict__ dst, const T* __restrict__ src,
                                                 int64_t nrows, int64_t ld, int64_t row0, int64_t k0,
                                                 const acc_t* __restrict__ mean, bool vec) {
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
        for (int e = 0; e < VEC; ++e) {
          const acc_t m = mean != nullptr ? mean[k + e] : acc_t(0);
          dst[(kk + e) * LDS + r] = to_acc<acc_t>(q.v[e]) - m;
        }
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
      acc_t val = acc_t(0);
      if (row < nrows && k < ld) {
        val = to_acc<acc_t>(src[row * ld + k]);
        if (mean != nullptr) val -= mean[k];
      }
      dst[kk * LDS + r] = val;
    }
  }
}

// dot[r][c] = sum_k A[row0a + ty + 16 r][k] * B[row0b + tx + 16 c][k] over k < kdim (both centered by
// their mean when given). Ends with __syncthreads(), so the caller may reuse the shared memory.
template <typename T, typename acc_t>
__device__ __forceinline__ void tile_dots(acc_t (&dot)[Tile<acc_t>::TM][Tile<acc_t>::TN], acc_t* smem,
                                          const T* __restrict__ A, int64_t na, int64_t row0a,
                                          const acc_t* __restrict__ mean_a, bool vec_a,
                                          const T* __restrict__ B, int64_t nb, int64_t row0b,
                                          const acc_t* __restrict__ mean_b, bool vec_b, int64_t kdim) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN, BM = TL::BM, BN = TL::BN;
  constexpr int LDA = BM + kPad, LDB = BN + kPad;
  acc_t* As = smem;
  acc_t* Bs = smem + kBK * LDA;
  const int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c) dot[r][c] = acc_t(0);
  for (int64_t k0 = 0; k0 < kdim; k0 += kBK) {
    load_tile_kmajor<T, acc_t, BM>(As, A, na, kdim, row0a, k0, mean_a, vec_a);
    load_tile_kmajor<T, acc_t, BN>(Bs, B, nb, kdim, row0b, k0, mean_b, vec_b);
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
        for (int c = 0; c < TN; ++c) dot[r][c] = fma(a[r], b[c], dot[r][c]);
    }
    __syncthreads();
  }
}

// Squared norms of the centered rows: out[i] = |x_i - mean|^2, one warp per row, fixed-order reduction.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(256) row_norms_kernel(const T* __restrict__ x, int64_t n, int64_t d,
                                                        const acc_t* __restrict__ mean,
                                                        acc_t* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (row >= n) return;
  acc_t s0 = acc_t(0), s1 = acc_t(0);
  const T* xr = x + row * d;
  int64_t k = lane;
  for (; k + 32 < d; k += 64) {
    const acc_t a = to_acc<acc_t>(xr[k]) - mean[k];
    const acc_t b = to_acc<acc_t>(xr[k + 32]) - mean[k + 32];
    s0 = fma(a, a, s0);
    s1 = fma(b, b, s1);
  }
  if (k < d) {
    const acc_t a = to_acc<acc_t>(xr[k]) - mean[k];
    s0 = fma(a, a, s0);
  }
  acc_t s = s0 + s1;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) out[row] = s;
}

// K[i][j] = k(|x_i - y_j|^2), written in T. grid (ceil(M/BN), ceil(N/BM)).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    rbf_gram_kernel(const T* __restrict__ x, const T* __restrict__ y, int64_t N, int64_t M, int64_t d,
                    const acc_t* __restrict__ mean, const acc_t* __restrict__ xnorm,
                    const acc_t* __restrict__ ynorm, KernelParams<acc_t> params, bool vec_x, bool vec_y,
                    T* __restrict__ out) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN;
  __shared__ __align__(16) unsigned char smem_raw[TL::kDotBytes];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * TL::BM;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * TL::BN;
  acc_t dot[TM][TN];
  tile_dots<T, acc_t>(dot, smem, x, N, row0, mean, vec_x, y, M, col0, mean, vec_y, d);
  const int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = row0 + ty + kThreadsY * r;
    if (i >= N) continue;
    const acc_t xn = xnorm[i];
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      const int64_t j = col0 + tx + kThreadsX * c;
      if (j >= M) continue;
      const acc_t r2 = squared_distance(xn, ynorm[j], dot[r][c]);
      const acc_t kv = kernel_value(params, r2);
      if constexpr (sizeof(acc_t) == sizeof(double)) {
        out[i * M + j] = from_acc_d(kv);
      } else {
        out[i * M + j] = from_acc<T>(kv);
      }
    }
  }
}

// Per row block of X (BM rows; blockIdx.x) and split of Y (blockIdx.y: Y tiles
// [blockIdx.y * tiles_per_split, +tiles_per_split)), one sweep over those Y tiles in tiles of BN:
//   S_i += sum_j k_ij v_j                       (p columns)
//   G_i += sum_j g_ij (a_i . v_j) (x_i - y_j)   (d columns, only when a != nullptr)
// S with p <= kNarrow (MMD: p = 1) skips shared memory: each thread sums its TN pairs per row, the 16
// threads of a row (one half-warp) combine by a fixed xor-shuffle tree, and thread tx = q keeps column
// q's float64 accumulator. Otherwise, and for G, outputs go through column chunks (below).
// Per tile each output is a partial sum over the tile's BN pairs in acc_t (float for half/bf16/float),
// added to a float64 accumulator owned by this block: the first NREG column chunks in registers, the
// others in the (zero-initialised) output rows of this split's slab (S + split * N * p,
// G + split * N * d), which no other block touches. Slabs are summed in split order by
// sum_partials_kernel when there is more than one split.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads, 2)
    pair_reduce_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ v,
                       const T* __restrict__ a, int64_t N, int64_t M, int64_t d, int64_t p,
                       const acc_t* __restrict__ mean, const acc_t* __restrict__ xnorm,
                       const acc_t* __restrict__ ynorm, KernelParams<acc_t> params, bool exclude_diagonal,
                       bool vec_x, bool vec_y, bool vec_a, bool vec_v, int64_t tiles_per_split,
                       double* __restrict__ S, double* __restrict__ G) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN, TC = TL::TC, NREG = TL::NREG;
  constexpr int BM = TL::BM, BN = TL::BN, BC = TL::BC;
  constexpr int LDP = BN + 1, LDC = BC + kPad;
  __shared__ __align__(16) unsigned char smem_raw[TL::kSmemBytes];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* Ps = smem;                 // [BM][LDP] kernel values
  acc_t* Qs = smem + BM * LDP;      // [BM][LDP] g_ij (a_i . v_j)
  acc_t* Cs = smem + 2 * BM * LDP;  // [BN][LDC] chunk of V or Y

  const bool has_a = a != nullptr;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t split = blockIdx.y;
  const int64_t col_begin = split * tiles_per_split * BN;
  const int64_t col_end = col_begin + tiles_per_split * BN < M ? col_begin + tiles_per_split * BN : M;
  S += split * N * p;
  if (has_a) G += split * N * d;
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

  acc_t xn[TM];
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = row0 + ty + kThreadsY * r;
    xn[r] = i < N ? xnorm[i] : acc_t(0);
  }

  for (int64_t col0 = col_begin; col0 < col_end; col0 += BN) {
    // Phase 1: distances (and a . v) for the BM x BN tile -> P, Q in shared memory.
    acc_t dot[TM][TN];
    tile_dots<T, acc_t>(dot, smem, x, N, row0, mean, vec_x, y, M, col0, mean, vec_y, d);
    acc_t av[TM][TN];
    if (has_a) {
      tile_dots<T, acc_t>(av, smem, a, N, row0, nullptr, vec_a, v, M, col0, nullptr, vec_v, p);
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
          const acc_t r2 = squared_distance(xn[r], ynorm[j], dot[r][c]);
          if (has_a) {
            kernel_value_and_weight(params, r2, &kv, &gv);
            gv *= av[r][c];
          } else {
            kv = kernel_value(params, r2);
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
#pragma unroll 4
        for (int jj = 0; jj < BN; ++jj) {
          acc_t pv[TM], cv[TC];
#pragma unroll
          for (int r = 0; r < TM; ++r) pv[r] = Ps[(ty + kThreadsY * r) * LDP + jj];
#pragma unroll
          for (int c = 0; c < TC; ++c) cv[c] = Cs[jj * LDC + tx + kThreadsX * c];
#pragma unroll
          for (int r = 0; r < TM; ++r)
#pragma unroll
            for (int c = 0; c < TC; ++c) part[r][c] = fma(pv[r], cv[c], part[r][c]);
        }
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

// quad_form, pass 1. Row block I (blockIdx.x) visits the column tiles J >= I of the symmetric K(z, z),
// split into chunks: block (I, c) takes J in [I + c * tiles_per_split, +tiles_per_split) (possibly
// none); an off-diagonal tile counts twice. Per tile and column p of W: the partial sum_ij w_ip k_ij w_jp over
// the tile's pairs in acc_t (rows reduced in a fixed order through shared memory), times the tile's
// multiplicity, added to partial[I * gridDim.y + c][p] in float64 (owned by this block;
// zero-initialised).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads, 2)
    quad_form_kernel(const T* __restrict__ z, const T* __restrict__ w, int64_t N, int64_t d, int64_t P,
                     const acc_t* __restrict__ mean, const acc_t* __restrict__ znorm,
                     KernelParams<acc_t> params, bool exclude_diagonal, bool vec_z,
                     int64_t tiles_per_split, double* __restrict__ partial) {
  using TL = Tile<acc_t>;
  constexpr int TM = TL::TM, TN = TL::TN, TC = TL::TC;
  constexpr int BM = TL::BM, BN = TL::BN, BC = TL::BC;
  constexpr int LDP = BN + 1, LDC = BC + kPad;
  __shared__ __align__(16) unsigned char smem_raw[TL::kSmemBytes];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* Ps = smem;                        // [BM][LDP]
  acc_t* Cs = smem + BM * LDP;             // [BN][LDC]
  acc_t* Red = Cs + BN * LDC;              // [16][BC]

  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t I = blockIdx.x;
  const int64_t row0 = I * BM;
  const int64_t n_tiles = (N + BN - 1) / BN;
  const int64_t J_begin = I + static_cast<int64_t>(blockIdx.y) * tiles_per_split;
  const int64_t J_end = J_begin + tiles_per_split < n_tiles ? J_begin + tiles_per_split : n_tiles;
  if (J_begin >= J_end) return;  // uniform over the block: no barrier is skipped by part of it
  partial += (I * gridDim.y + blockIdx.y) * P;
  acc_t zn[TM];
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = row0 + ty + kThreadsY * r;
    zn[r] = i < N ? znorm[i] : acc_t(0);
  }

  for (int64_t J = J_begin; J < J_end; ++J) {
    const int64_t col0 = J * BN;
    acc_t dot[TM][TN];
    tile_dots<T, acc_t>(dot, smem, z, N, row0, mean, vec_z, z, N, col0, mean, vec_z, d);
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int64_t i = row0 + ty + kThreadsY * r;
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        const int64_t j = col0 + tx + kThreadsX * c;
        acc_t kv = acc_t(0);
        if (i < N && j < N && !(exclude_diagonal && i == j)) {
          kv = kernel_value(params, squared_distance(zn[r], znorm[j], dot[r][c]));
        }
        Ps[(ty + kThreadsY * r) * LDP + tx + kThreadsX * c] = kv;
      }
    }
    __syncthreads();
    const double mult = J == I ? 1.0 : 2.0;

    for (int64_t c0 = 0; c0 < P; c0 += BC) {
      for (int t = ty * kThreadsX + tx; t < BN * BC; t += kThreads) {
        const int jj = t / BC, cc = t % BC;
        const int64_t j = col0 + jj, col = c0 + cc;
        Cs[jj * LDC + cc] = (j < N && col < P) ? to_acc<acc_t>(w[j * P + col]) : acc_t(0);
      }
      __syncthreads();
      acc_t part[TM][TC];
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TC; ++c) part[r][c] = acc_t(0);
#pragma unroll 4
      for (int jj = 0; jj < BN; ++jj) {
        acc_t pv[TM], cv[TC];
#pragma unroll
        for (int r = 0; r < TM; ++r) pv[r] = Ps[(ty + kThreadsY * r) * LDP + jj];
#pragma unroll
        for (int c = 0; c < TC; ++c) cv[c] = Cs[jj * LDC + tx + kThreadsX * c];
#pragma unroll
        for (int r = 0; r < TM; ++r)
#pragma unroll
          for (int c = 0; c < TC; ++c) part[r][c] = fma(pv[r], cv[c], part[r][c]);
      }
      // contrib_p = sum over this thread's rows of w_ip (K W_J)_ip
#pragma unroll
      for (int c = 0; c < TC; ++c) {
        const int64_t col = c0 + tx + kThreadsX * c;
        acc_t s = acc_t(0);
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          const int64_t i = row0 + ty + kThreadsY * r;
          const acc_t wi = (i < N && col < P) ? to_acc<acc_t>(w[i * P + col]) : acc_t(0);
          s = fma(wi, part[r][c], s);
        }
        Red[ty * BC + tx + kThreadsX * c] = s;
      }
      __syncthreads();
      if (ty == 0) {
#pragma unroll
        for (int c = 0; c < TC; ++c) {
          const int cc = tx + kThreadsX * c;
          const int64_t col = c0 + cc;
          acc_t s = acc_t(0);
#pragma unroll
          for (int yy = 0; yy < kThreadsY; ++yy) s += Red[yy * BC + cc];
          if (col < P) partial[col] += mult * static_cast<double>(s);
        }
      }
      __syncthreads();
    }
  }
}

// Fixed-order sum of slabs: q[e] = sum_I partial[I][e], I ascending (quad_form pass 2; pair_reduce
// splits).
__global__ void __launch_bounds__(256) sum_partials_kernel(const double* __restrict__ partial,
                                                           int64_t n_blocks, int64_t P,
                                                           double* __restrict__ q) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= P) return;
  double s = 0.0;
  for (int64_t I = 0; I < n_blocks; ++I) s += partial[I * P + col];
  q[col] = s;
}

}  // namespace cuda_kernels
}  // namespace infovae
