// The dot kernel (polynomial) at d >= kMinD on BLAS GEMMs: see dot_gemm.h.
//
// Per tile (row block I, column block J, B x B pairs, B a function of the row count only):
//   D = Z_I Z_J^T                          one GEMM (T), into a per-worker tile buffer
//   k, h = dot_kernel_value[_and_weight]   row pass (SIMD), masks the padding lanes and, with
//                                          exclude_diagonal, i == j; c_i = sum_j k_ij w_j (row sums, T)
//   S: column sums sum_i k_ij w_i          column pass (quad_form, off-diagonal tiles)
//   G: W = h (a_i . w_j), G_I -= W Z_J     GEMM; quad_form's column side G_J -= Wc^T Z_I,
//      Wc = h (w_i . a_j)                  GEMM
// Each tile's partials are added in float64 to accumulators that no two threads share, in a fixed order:
// pair_reduce: row blocks in parallel, each sweeping its column blocks in order. quad_form: the engine's
// symmetric schedule (engine_impl.h): row block I owns the tiles (I, (I + t) mod nb), t = 0 .. nb/2;
// value only: all tiles in parallel, q partials per tile summed in one canonical order; with S or G:
// rounds t in order, no two tiles of a round sharing a row block or a column block, row and column parts
// into separate accumulators, added at the end. The q partials come from the same row pass in both
// cases, so q is bitwise the same with and without S and G.
//
// Every GEMM runs single-threaded (inside at::parallel_for's region, and with MKL's thread-local count
// set to 1 where the BLAS is MKL: at::parallel_for runs a single chunk inline, outside an OpenMP region),
// on the same buffers (views at the same offsets, tile buffers from the allocator) whatever the thread
// count: the results do not depend on it (bitwise; tests/test_cpu_kernels.py checks 1, 2, 3 threads).
#include "dot_gemm.h"

#include <ATen/Parallel.h>
#include <ATen/ops/mm_cpu_dispatch.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "blas_tiles.h"
#include "engine_api.h"
#include "simd.h"

namespace infovae {
namespace cpu {
inline namespace INFOVAE_CPU_CAPABILITY {
namespace dotgemm {
namespace {

using engine::Dims;
using engine::divup;
using engine::hsum;
using engine::Iota;
using engine::roundup;
using engine::VecT;
using engine::vload;
using engine::vset;
using engine::vstore;

using namespace tiles;  // SerialBlas, parallel_items, block_size, rows_of, transposed, tile_dots

// Row pass over one tile: D [rows][ld] (dot products, first cols columns) -> k in place, h into H (when
// given); lanes j >= cols and, with diag, j == i get k = h = 0. c[i * P + p] = sum_j k_ij wT[p][j]: one
// vector accumulator over j ascending, then the lane tree (the same code with and without H: q reads c).
template <typename T>
__attribute__((noinline)) void row_pass(const KernelParams<T>& kp, T* D, T* H, int64_t ld, int64_t rows, int64_t cols,
                                        bool diag, const T* wT, int64_t ldw, int64_t P, T* c) {
  using V = typename VecT<T>::V;
  using VI = typename VecT<T>::VI;
  using I = typename VecT<T>::I;
  constexpr int L = Dims<T>::L;
  static const Iota<T> iota;
  const int64_t colsL = roundup(cols, L);
  const V zero = {};
  const VI ncols = VI{} + static_cast<I>(cols);
  for (int64_t i = 0; i < rows; ++i) {
    T* drow = D + i * ld;
    const VI ii = VI{} + static_cast<I>(i);
    for (int64_t j = 0; j < colsL; j += L) {
      const V dot = vload(drow + j);
      const VI idx = iota.v + static_cast<I>(j);
      VI keep = idx < ncols;
      if (diag) keep = keep & (idx != ii);
      V k, h;
      if (H) {
        dot_kernel_value_and_weight(kp, dot, k, h);
        vstore(H + i * ld + j, keep ? h : zero);
      } else {
        k = dot_kernel_value(kp, dot);
      }
      vstore(drow + j, keep ? k : zero);
    }
    for (int64_t p = 0; p < P; ++p) {
      const T* wp = wT + p * ldw;
      V acc = {};
      for (int64_t j = 0; j < colsL; j += L) acc += vload(drow + j) * vload(wp + j);
      c[i * P + p] = hsum<T>(acc);
    }
  }
}

// cs[p * ld + j] = sum_i K_ij wr[i][p] (i ascending), for j < roundup(cols, L).
template <typename T>
void col_pass(const T* K, int64_t ld, int64_t rows, int64_t cols, const T* wr, int64_t P, T* cs) {
  using V = typename VecT<T>::V;
  constexpr int L = Dims<T>::L;
  const int64_t colsL = roundup(cols, L);
  for (int64_t p = 0; p < P; ++p) std::fill(cs + p * ld, cs + p * ld + colsL, T(0));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t p = 0; p < P; ++p) {
      const V wb = vset<T>(wr[i * P + p]);
      T* cp = cs + p * ld;
      for (int64_t j = 0; j < colsL; j += L) vstore(cp + j, vload(cp + j) + vload(K + i * ld + j) * wb);
    }
}

// Gradient weights from h (H [rows][ld]): column side first, Wc_ij = h_ij (sum_p cr[i][p] cT[p][j]) (when
// Wc), then the row side in place, H_ij = h_ij (sum_p ar[i][p] bT[p][j]) (when row_side).
template <typename T>
void weight_pass(T* H, T* Wc, int64_t ld, int64_t rows, int64_t cols, bool row_side, const T* ar, const T* bT,
                 const T* cr, const T* cT, int64_t ldt, int64_t P) {
  using V = typename VecT<T>::V;
  constexpr int L = Dims<T>::L;
  const int64_t colsL = roundup(cols, L);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < colsL; j += L) {
      const V h = vload(H + i * ld + j);
      if (Wc) {
        V s = {};
        for (int64_t p = 0; p < P; ++p) s += vset<T>(cr[i * P + p]) * vload(cT + p * ldt + j);
        vstore(Wc + i * ld + j, h * s);
      }
      if (row_side) {
        V s = {};
        for (int64_t p = 0; p < P; ++p) s += vset<T>(ar[i * P + p]) * vload(bT + p * ldt + j);
        vstore(H + i * ld + j, h * s);
      }
    }
}

// acc[i][k] (float64, row stride d) += src[i][k] (T, row stride d), rows x d
template <typename T>
void add_rows(double* acc, const T* src, int64_t rows, int64_t d) {
  for (int64_t i = 0; i < rows; ++i) {
    double* a = acc + i * d;
    const T* s = src + i * d;
    for (int64_t k = 0; k < d; ++k) a[k] += static_cast<double>(s[k]);
  }
}

// Blocks of rows on which a is zero (their gradient rows are 0: no weights, no GEMM).
template <typename T>
std::vector<char> zero_blocks(const at::Tensor& ar, int64_t B) {
  const int64_t n = ar.size(0), P = ar.size(1), nb = divup(n, B);
  const T* a = ar.data_ptr<T>();
  std::vector<char> z(nb, 1);
  for (int64_t I = 0; I < nb; ++I)
    for (int64_t i = I * B; i < std::min(n, (I + 1) * B) && z[I]; ++i)
      for (int64_t p = 0; p < P; ++p) z[I] = z[I] && a[i * P + p] == T(0);
  return z;
}

template <typename T>
KernelParams<T> poly_params(const std::vector<double>& params) {
  return make_kernel_params<T>(KernelKind::POLYNOMIAL, params.data(), static_cast<int>(params.size()));
}

// ---- gram --------------------------------------------------------------------------------------------
template <typename T>
at::Tensor gram_t(const at::Tensor& x, const at::Tensor& y, const std::vector<double>& params, bool derivative) {
  using V = typename VecT<T>::V;
  constexpr int L = Dims<T>::L;
  const at::Tensor xc = rows_of<T>(x), yc = rows_of<T>(y);
  const int64_t N = xc.size(0), M = yc.size(0), B = block_size(N);
  const int64_t nbr = divup(N, B), nbc = divup(M, B);
  const KernelParams<T> kp = poly_params<T>(params);
  at::Tensor K = at::empty({N, M}, xc.options());
  T* k = K.data_ptr<T>();
  parallel_items(nbr * nbc, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t I = t / nbc, J = t % nbc, i0 = I * B, j0 = J * B;
      const int64_t rows = std::min(B, N - i0), cols = std::min(B, M - j0);
      at::Tensor out = K.narrow(0, i0, rows).narrow(1, j0, cols);
      at::cpu::mm_out(out, xc.narrow(0, i0, rows), yc.narrow(0, j0, cols).t());
      for (int64_t i = 0; i < rows; ++i) {
        T* r = k + (i0 + i) * M + j0;
        int64_t j = 0;
        for (; j + L <= cols; j += L) {
          V kv, hv;
          const V dot = vload(r + j);
          if (derivative)
            dot_kernel_value_and_weight(kp, dot, kv, hv), kv = hv;
          else
            kv = dot_kernel_value(kp, dot);
          vstore(r + j, kv);
        }
        for (; j < cols; ++j) {
          T kv, hv;
          if (derivative)
            dot_kernel_value_and_weight(kp, r[j], kv, hv), kv = hv;
          else
            kv = dot_kernel_value(kp, r[j]);
          r[j] = kv;
        }
      }
    }
  });
  return K;
}

// ---- pair_reduce -------------------------------------------------------------------------------------
template <typename T>
void pair_reduce_t(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v, const std::optional<at::Tensor>& a,
                   const std::vector<double>& params, bool excl, at::Tensor& S, at::Tensor& G) {
  const at::Tensor xc = rows_of<T>(x), yc = rows_of<T>(y);
  const int64_t N = xc.size(0), M = yc.size(0), d = xc.size(1), p = v.size(1), B = block_size(N);
  const int64_t nbr = divup(N, B), nbc = divup(M, B), M_pad = nbc * B;
  const bool grad = a.has_value();
  const KernelParams<T> kp = poly_params<T>(params);
  const at::Tensor vT = transposed<T>(v, M_pad);
  at::Tensor ar;
  std::vector<char> a_zero;
  if (grad) ar = rows_of<T>(*a), a_zero = zero_blocks<T>(ar, B);
  double* s = S.data_ptr<double>();
  double* g = grad ? G.data_ptr<double>() : nullptr;
  const auto opt = xc.options();
  parallel_items(nbr, [&](int64_t b, int64_t e) {
    at::Tensor D = at::zeros({B, B}, opt), H, out;
    std::vector<T> c(B * p);
    if (grad) H = at::zeros({B, B}, opt), out = at::empty({B, d}, opt);
    for (int64_t I = b; I < e; ++I) {
      const int64_t i0 = I * B, rows = std::min(B, N - i0);
      const bool rg = grad && !a_zero[I];
      for (int64_t J = 0; J < nbc; ++J) {
        const int64_t j0 = J * B, cols = std::min(B, M - j0);
        tile_dots(D, xc, i0, rows, yc, j0, cols);
        row_pass<T>(kp, D.data_ptr<T>(), rg ? H.data_ptr<T>() : nullptr, B, rows, cols, excl && I == J,
                    vT.data_ptr<T>() + j0, M_pad, p, c.data());
        for (int64_t i = 0; i < rows * p; ++i) s[i0 * p + i] += static_cast<double>(c[i]);
        if (rg) {
          weight_pass<T>(H.data_ptr<T>(), nullptr, B, rows, cols, true, ar.data_ptr<T>() + i0 * p,
                         vT.data_ptr<T>() + j0, nullptr, nullptr, M_pad, p);
          at::Tensor o = out.narrow(0, 0, rows);
          at::cpu::mm_out(o, H.narrow(0, 0, rows).narrow(1, 0, cols), yc.narrow(0, j0, cols));
          add_rows<T>(g + i0 * d, out.data_ptr<T>(), rows, d);
        }
      }
    }
  });
  if (grad) G.neg_();
}

// ---- quad_form ---------------------------------------------------------------------------------------
template <typename T>
void quad_form_t(const at::Tensor& z, const at::Tensor& w, const std::optional<at::Tensor>& a,
                 const std::vector<double>& params, bool excl, at::Tensor& q, at::Tensor& S, at::Tensor& G) {
  const at::Tensor zc = rows_of<T>(z), wr = rows_of<T>(w);
  const int64_t N = zc.size(0), d = zc.size(1), P = wr.size(1), B = block_size(N);
  const int64_t nb = divup(N, B), N_pad = nb * B, half = nb / 2, ntile = half + 1;
  const bool even = nb % 2 == 0, grad = a.has_value(), rows_S = S.size(0) > 0;
  const KernelParams<T> kp = poly_params<T>(params);
  const at::Tensor wT = transposed<T>(w, N_pad);
  at::Tensor ar, aT;
  std::vector<char> a_zero;
  if (grad) ar = rows_of<T>(*a), aT = transposed<T>(*a, N_pad), a_zero = zero_blocks<T>(ar, B);
  const T* w_r = wr.data_ptr<T>();
  std::vector<double> qt(nb * ntile * P, 0.0), Scol(rows_S ? N * P : 0);
  double* Srow = rows_S ? S.data_ptr<double>() : nullptr;
  double* Grow = grad ? G.data_ptr<double>() : nullptr;
  at::Tensor Gcol = grad ? at::zeros({N, d}, G.options()) : at::Tensor();
  double* gcol = grad ? Gcol.data_ptr<double>() : nullptr;
  const auto opt = zc.options();

  struct Scratch {
    at::Tensor D, H, Wc, out;
    std::vector<T> c, cs;
  };
  auto scratch = [&]() {
    Scratch ws;
    ws.D = at::zeros({B, B}, opt);
    ws.c.resize(B * P);
    if (rows_S) ws.cs.resize(P * B);
    if (grad) ws.H = at::zeros({B, B}, opt), ws.Wc = at::zeros({B, B}, opt), ws.out = at::empty({B, d}, opt);
    return ws;
  };
  auto tile = [&](int64_t I, int64_t t, Scratch& ws) {
    const int64_t J = (I + t) % nb, i0 = I * B, j0 = J * B;
    const int64_t rows = std::min(B, N - i0), cols = std::min(B, N - j0);
    const bool diag = t == 0;
    const bool rg = grad && !a_zero[I], cg = grad && !diag && !a_zero[J];
    tile_dots(ws.D, zc, i0, rows, zc, j0, cols);
    T* D = ptr<T>(ws.D);
    row_pass<T>(kp, D, rg || cg ? ptr<T>(ws.H) : nullptr, B, rows, cols, excl && diag, wT.data_ptr<T>() + j0,
                N_pad, P, ws.c.data());
    double* qp = qt.data() + (I * ntile + t) * P;
    for (int64_t p = 0; p < P; ++p) {
      double acc = 0.0;
      for (int64_t i = 0; i < rows; ++i)
        acc += static_cast<double>(w_r[(i0 + i) * P + p]) * static_cast<double>(ws.c[i * P + p]);
      qp[p] = acc;
    }
    if (rows_S) {
      for (int64_t i = 0; i < rows * P; ++i) Srow[i0 * P + i] += static_cast<double>(ws.c[i]);
      if (!diag) {
        col_pass<T>(D, B, rows, cols, w_r + i0 * P, P, ws.cs.data());
        for (int64_t j = 0; j < cols; ++j)
          for (int64_t p = 0; p < P; ++p) Scol[(j0 + j) * P + p] += static_cast<double>(ws.cs[p * B + j]);
      }
    }
    if (rg || cg) {
      T* H = ptr<T>(ws.H);
      weight_pass<T>(H, cg ? ptr<T>(ws.Wc) : nullptr, B, rows, cols, rg, ar.data_ptr<T>() + i0 * P,
                     wT.data_ptr<T>() + j0, w_r + i0 * P, aT.data_ptr<T>() + j0, N_pad, P);
      if (rg) {
        at::Tensor o = ws.out.narrow(0, 0, rows);
        at::cpu::mm_out(o, ws.H.narrow(0, 0, rows).narrow(1, 0, cols), zc.narrow(0, j0, cols));
        add_rows<T>(Grow + i0 * d, ptr<T>(ws.out), rows, d);
      }
      if (cg) {
        at::Tensor o = ws.out.narrow(0, 0, cols);
        at::cpu::mm_out(o, ws.Wc.narrow(0, 0, rows).narrow(1, 0, cols).t(), zc.narrow(0, i0, rows));
        add_rows<T>(gcol + j0 * d, ptr<T>(ws.out), cols, d);
      }
    }
  };
  auto tiles_of_round = [&](int64_t t) { return t == 0 ? nb : (even && t == half ? half : nb); };

  if (!grad && !rows_S) {
    std::vector<std::pair<int64_t, int64_t>> items;
    for (int64_t I = 0; I < nb; ++I)
      for (int64_t t = 0; t <= half; ++t)
        if (I < tiles_of_round(t)) items.emplace_back(I, t);
    parallel_items(static_cast<int64_t>(items.size()), [&](int64_t b, int64_t e) {
      Scratch ws = scratch();
      for (int64_t it = b; it < e; ++it) tile(items[it].first, items[it].second, ws);
    });
  } else {
    for (int64_t t = 0; t <= half; ++t)
      parallel_items(tiles_of_round(t), [&](int64_t b, int64_t e) {
        Scratch ws = scratch();
        for (int64_t I = b; I < e; ++I) tile(I, t, ws);
      });
  }

  double* qo = q.data_ptr<double>();
  for (int64_t p = 0; p < P; ++p) {
    double s = 0.0;
    for (int64_t I = 0; I < nb; ++I)
      for (int64_t t = 0; t <= half; ++t)
        if (I < tiles_of_round(t)) s += (t == 0 ? 1.0 : 2.0) * qt[(I * ntile + t) * P + p];
    qo[p] = s;
  }
  if (rows_S)
    for (int64_t i = 0; i < N * P; ++i) Srow[i] += Scol[i];
  if (grad)
    at::parallel_for(0, N * d, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) Grow[i] = -(Grow[i] + gcol[i]);
    });
}

}  // namespace

at::Tensor gram(const at::Tensor& x, const at::Tensor& y, const std::vector<double>& params, bool derivative) {
  return x.scalar_type() == at::kDouble ? gram_t<double>(x, y, params, derivative)
                                        : gram_t<float>(x, y, params, derivative);
}

void pair_reduce(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v, const std::optional<at::Tensor>& a,
                 const std::vector<double>& params, bool exclude_diagonal, at::Tensor& S, at::Tensor& G) {
  if (x.scalar_type() == at::kDouble)
    pair_reduce_t<double>(x, y, v, a, params, exclude_diagonal, S, G);
  else
    pair_reduce_t<float>(x, y, v, a, params, exclude_diagonal, S, G);
}

void quad_form(const at::Tensor& z, const at::Tensor& w, const std::optional<at::Tensor>& a,
               const std::vector<double>& params, bool exclude_diagonal, at::Tensor& q, at::Tensor& S, at::Tensor& G) {
  if (z.scalar_type() == at::kDouble)
    quad_form_t<double>(z, w, a, params, exclude_diagonal, q, S, G);
  else
    quad_form_t<float>(z, w, a, params, exclude_diagonal, q, S, G);
}

}  // namespace dotgemm
}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae
