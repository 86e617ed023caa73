// stein_form: quadratic forms of the Langevin Stein kernel, q_p = sum_ij w_ip u(x_i, x_j) w_jp, in one
// symmetric sweep over tiles of B x B pairs (B from tiles::block_size). For a radial base phi(r2) and
// points carrying their scores (x_i, s_i):
//
//   u_ij = phi s_i.s_j + 2 phi' (s_j - s_i).(x_i - x_j) - 2 d phi' - 4 phi'' r2
//
// (infovae_kernels/kernels.py's stein_kernel, the reference). Per tile three GEMMs give the products:
// x_i.x_j (r2 by the expansion |x_i|^2 + |x_j|^2 - 2 x_i.x_j), s_i.s_j, and [x_i, s_i].[s_j, x_j] =
// x_i.s_j + s_i.x_j (so (s_j - s_i).(x_i - x_j) = that - x_i.s_i - x_j.s_j): 4d multiply-adds per pair.
// A vectorised row pass turns them into u in place (phi and its derivatives per scale: vexp for rbf,
// one vsqrt for imq with beta = -1/2, std::pow lane by lane for another beta), then a fourth GEMM
// R = U W_J and q_p += sum_i w_ip R_ip, doubled for the tiles off the diagonal (u is symmetric).
// Row block I owns the tiles (I, (I + t) mod nb) of the symmetric schedule (engine_impl.h's), its q
// partial accumulated in float64 in t order, the partials summed in block order: O(n / B) memory beside
// the points, and a result that does not depend on the thread count (GEMMs single-threaded inside
// at::parallel_for).
//
// stein_moments: what the gradient of w^T U w in x, s and w is made of, from the same tiles with four
// matrices per tile (U, phi, phi', A; grad_pass) against [w, w x, w s] (run_moments).
//
// The points arrive centred by the op layer (u is translation invariant). params (float64):
// [beta, c, sigma_1, ..., sigma_S]; kernel "imq": phi = sum_s (c^2 + r2 / sigma_s^2)^beta, "rbf": phi =
// sum_s exp(-r2 / (2 sigma_s^2)) (beta and c unused).
#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

#include "blas_tiles.h"
#include "engine_api.h"
#include "simd.h"
#include "variant.h"
#include "vmath.h"

namespace infovae {
namespace cpu {
inline namespace INFOVAE_CPU_CAPABILITY {
namespace {

using engine::Dims;
using engine::divup;
using engine::Iota;
using engine::roundup;
using engine::VecT;
using engine::vload;
using engine::vset;
using engine::vstore;
using namespace tiles;

struct SteinParams {
  bool rbf = false;
  double beta = -0.5, c = 1.0;
  std::vector<double> sigmas;
};

// phi, phi', phi'' (and phi''' when Third) of the base at r2 (a vector), summed over the scales.
template <typename T, typename V, bool Third = false>
inline void radial(const SteinParams& sp, V r2, V& phi, V& d1, V& d2, V* d3 = nullptr) {
  constexpr int L = Dims<T>::L;
  phi = V{};
  d1 = V{};
  d2 = V{};
  if constexpr (Third) *d3 = V{};
  for (double sigma : sp.sigmas) {
    const T inv = static_cast<T>(1.0 / (sigma * sigma));
    if (sp.rbf) {
      const T a = static_cast<T>(0.5 / (sigma * sigma));
      const V e = engine::vexp(r2 * -a);
      phi += e;
      d1 -= e * a;
      d2 += e * (a * a);
      if constexpr (Third) *d3 -= e * (a * a * a);
    } else {
      const V b = r2 * inv + static_cast<T>(sp.c * sp.c);
      V p;  // b^(beta - 2), or b^(beta - 3) when Third
      if (sp.beta == -0.5) {
        const V r = vset<T>(1) / engine::vsqrt(b);
        p = Third ? r / (b * b * b) : r / (b * b);
      } else {
        T lanes[L];
        std::memcpy(lanes, &b, sizeof(b));
        const T e = static_cast<T>(sp.beta - (Third ? 3.0 : 2.0));
        for (int l = 0; l < L; ++l) lanes[l] = std::pow(lanes[l], e);
        std::memcpy(&p, lanes, sizeof(p));
      }
      const T beta = static_cast<T>(sp.beta);
      const V p2 = Third ? p * b : p;  // b^(beta - 2)
      phi += p2 * b * b;
      d1 += p2 * b * (beta * inv);
      d2 += p2 * (beta * (beta - 1) * inv * inv);
      if constexpr (Third) *d3 += p * (beta * (beta - 1) * (beta - 2) * inv * inv * inv);
    }
  }
}

// U [rows][ld] from the tile's products: Gxx (x_i.x_j, overwritten by u), Gss, Gc; lanes j >= cols get 0,
// the pairs i == j (diag tiles) r2 = 0, or u = 0 with exclude.
template <typename T>
__attribute__((noinline)) void stein_pass(const SteinParams& sp, int64_t d, T* Gxx, const T* Gss, const T* Gc,
                                          int64_t ld, int64_t rows, int64_t cols, const T* xn_i, const T* xs_i,
                                          const T* xn_j, const T* xs_j, bool diag, bool exclude) {
  using V = typename VecT<T>::V;
  using VI = typename VecT<T>::VI;
  using I = typename VecT<T>::I;
  constexpr int L = Dims<T>::L;
  static const Iota<T> iota;
  const int64_t colsL = roundup(cols, L);
  const V zero = {};
  const VI ncols = VI{} + static_cast<I>(cols);
  const T two_d = static_cast<T>(2 * d);
  for (int64_t i = 0; i < rows; ++i) {
    const VI ii = VI{} + static_cast<I>(i);
    const V xni = vset<T>(xn_i[i]), xsi = vset<T>(xs_i[i]);
    for (int64_t j = 0; j < colsL; j += L) {
      const int64_t o = i * ld + j;
      const VI idx = iota.v + static_cast<I>(j);
      const VI inside = idx < ncols;
      const VI self = diag ? (idx == ii) : VI{};
      V r2 = xni + vload(xn_j + j) - vload(Gxx + o) * T(2);
      r2 = r2 < zero ? zero : r2;
      r2 = self ? zero : r2;
      V phi, d1, d2;
      radial<T, V>(sp, r2, phi, d1, d2);
      const V cross = vload(Gc + o) - xsi - vload(xs_j + j);
      const V u = phi * vload(Gss + o) + T(2) * d1 * cross - two_d * d1 - T(4) * d2 * r2;
      const VI keep = exclude ? (inside & ~self) : inside;
      vstore(Gxx + o, keep ? u : zero);
    }
  }
}

// The four matrices of the gradient (stein_moments) into M, block k at rows k * bstride: U, phi, phi' and
// A = phi' s_i.s_j + 2 phi'' cross - 2 d phi'' - 4 phi''' r2 - 4 phi'', so that du_ij/dx_i = 2 (x_i - x_j)
// A_ij + 2 phi'_ij (s_j - s_i) and du_ij/ds_i = phi_ij s_j - 2 phi'_ij (x_i - x_j). Pairs i == j: r2 = 0,
// and all four 0 with exclude.
template <typename T>
__attribute__((noinline)) void grad_pass(const SteinParams& sp, int64_t d, const T* Gxx, const T* Gss, const T* Gc,
                                         T* M, int64_t bstride, int64_t ld, int64_t rows, int64_t cols, const T* xn_i,
                                         const T* xs_i, const T* xn_j, const T* xs_j, bool diag, bool exclude) {
  using V = typename VecT<T>::V;
  using VI = typename VecT<T>::VI;
  using I = typename VecT<T>::I;
  constexpr int L = Dims<T>::L;
  static const Iota<T> iota;
  const int64_t colsL = roundup(cols, L);
  const V zero = {};
  const T two_d = static_cast<T>(2 * d);
  for (int64_t i = 0; i < rows; ++i) {
    const VI ii = VI{} + static_cast<I>(i);
    const V xni = vset<T>(xn_i[i]), xsi = vset<T>(xs_i[i]);
    for (int64_t j = 0; j < colsL; j += L) {
      const int64_t o = i * ld + j;
      const VI idx = iota.v + static_cast<I>(j);
      const VI self = diag ? (idx == ii) : VI{};
      V r2 = xni + vload(xn_j + j) - vload(Gxx + o) * T(2);
      r2 = r2 < zero ? zero : r2;
      r2 = self ? zero : r2;
      V phi, d1, d2, d3;
      radial<T, V, true>(sp, r2, phi, d1, d2, &d3);
      const V ss = vload(Gss + o);
      const V cross = vload(Gc + o) - xsi - vload(xs_j + j);
      const V u = phi * ss + T(2) * d1 * cross - two_d * d1 - T(4) * d2 * r2;
      const V a = d1 * ss + T(2) * d2 * cross - two_d * d2 - T(4) * d3 * r2 - T(4) * d2;
      const VI drop = exclude ? self : VI{};
      vstore(M + o, drop ? zero : u);
      vstore(M + bstride + o, drop ? zero : phi);
      vstore(M + 2 * bstride + o, drop ? zero : d1);
      vstore(M + 3 * bstride + o, drop ? zero : a);
    }
  }
}

template <typename T>
at::Tensor run(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const SteinParams& sp, bool exclude) {
  constexpr int L = Dims<T>::L;
  const int64_t n = x.size(0), d = x.size(1), P = w.size(1);
  const at::Tensor X = rows_of<T>(x), S = rows_of<T>(s), W = rows_of<T>(w);
  const at::Tensor XS = at::cat({X, S}, 1), SX = at::cat({S, X}, 1);
  const int64_t B = block_size(n), nb = divup(n, B), ld = roundup(B, L);
  // |x_i|^2 and x_i.s_i, zero padded for whole-vector loads past the last point
  at::Tensor norms = at::zeros({2, roundup(n, L) + L}, X.options());
  norms[0].narrow(0, 0, n).copy_(X.square().sum(1));
  norms[1].narrow(0, 0, n).copy_((X * S).sum(1));
  const T* xn = norms[0].data_ptr<T>();
  const T* xs = norms[1].data_ptr<T>();
  // Row block I owns the tiles (I, (I + t) mod nb), t = 0 .. nb/2 (t = nb/2 only for I < nb/2 when nb is
  // even): each unordered pair of blocks once, the same work per row block, q partials per row block.
  std::vector<double> partial(nb * P, 0.0);
  const T* wp = W.data_ptr<T>();
  parallel_items(nb, [&](int64_t b, int64_t e) {
    at::Tensor gxx = at::empty({B, ld}, X.options()), gss = at::empty({B, ld}, X.options());
    at::Tensor gc = at::empty({B, ld}, X.options()), R = at::empty({B, P}, X.options());
    for (int64_t I = b; I < e; ++I) {
      for (int64_t t = 0; t <= nb / 2; ++t) {
        if (nb % 2 == 0 && t > 0 && t == nb / 2 && I >= nb / 2) break;
        const int64_t J = (I + t) % nb;
        const int64_t i0 = I * B, j0 = J * B, ni = std::min(B, n - i0), nj = std::min(B, n - j0);
        tile_dots(gxx, X, i0, ni, X, j0, nj);
        tile_dots(gss, S, i0, ni, S, j0, nj);
        tile_dots(gc, XS, i0, ni, SX, j0, nj);
        stein_pass<T>(sp, d, gxx.data_ptr<T>(), gss.data_ptr<T>(), gc.data_ptr<T>(), ld, ni, nj, xn + i0, xs + i0,
                      xn + j0, xs + j0, I == J, exclude);
        at::Tensor r = R.narrow(0, 0, ni);
        at::cpu::mm_out(r, gxx.narrow(0, 0, ni).narrow(1, 0, nj), W.narrow(0, j0, nj));
        const T* rp = r.data_ptr<T>();
        const double factor = I == J ? 1.0 : 2.0;
        for (int64_t p = 0; p < P; ++p) {
          double acc = 0.0;
          for (int64_t i = 0; i < ni; ++i) acc += static_cast<double>(wp[(i0 + i) * P + p]) * rp[i * P + p];
          partial[I * P + p] += factor * acc;
        }
      }
    }
  });
  at::Tensor q = at::zeros({P}, x.options().dtype(at::kDouble));
  double* qp = q.data_ptr<double>();
  for (int64_t I = 0; I < nb; ++I)
    for (int64_t p = 0; p < P; ++p) qp[p] += partial[I * P + p];
  return q;
}

// The columns of [w, w x, w s] each matrix of grad_pass meets (what the gradient reads): {start, number of
// d-blocks, extra}: U: w; phi: w s (start 2 stands for 1 + d); phi': all; A: w and w x.
constexpr int64_t kColumns[4][3] = {{0, 0, 1}, {2, 1, 0}, {0, 2, 1}, {0, 1, 1}};

// R (n, 4, 1 + 2d) float64: R[i][k] = sum_j M^k_ij [w_j, w_j x_j, w_j s_j] for the four matrices of
// grad_pass, over every j, in the columns kColumns gives (the others 0). Symmetric tiles in rounds: tile (I, (I + t) mod nb) adds its row side to block I
// of one accumulator and, off the diagonal, the transposed products to block J of another; no two tiles of
// a round share a block of either accumulator, and the rounds run in order (no atomics, thread-count
// independent).
template <typename T>
at::Tensor run_moments(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const SteinParams& sp,
                       bool exclude) {
  constexpr int L = Dims<T>::L;
  const int64_t n = x.size(0), d = x.size(1), Q = 1 + 2 * d;
  const at::Tensor X = rows_of<T>(x), S = rows_of<T>(s), Wv = rows_of<T>(w).reshape({n, 1});
  const at::Tensor XS = at::cat({X, S}, 1), SX = at::cat({S, X}, 1);
  const at::Tensor Rhs = at::cat({Wv, Wv * X, Wv * S}, 1).contiguous();  // (n, Q)
  const int64_t B = block_size(n), nb = divup(n, B), ld = roundup(B, L);
  at::Tensor norms = at::zeros({2, roundup(n, L) + L}, X.options());
  norms[0].narrow(0, 0, n).copy_(X.square().sum(1));
  norms[1].narrow(0, 0, n).copy_((X * S).sum(1));
  const T* xn = norms[0].data_ptr<T>();
  const T* xs = norms[1].data_ptr<T>();
  at::Tensor row_acc = at::zeros({n, 4, Q}, x.options().dtype(at::kDouble));
  at::Tensor col_acc = at::zeros({n, 4, Q}, x.options().dtype(at::kDouble));
  for (int64_t t = 0; t <= nb / 2; ++t) {
    const int64_t count = (nb % 2 == 0 && t == nb / 2 && t > 0) ? nb / 2 : nb;
    parallel_items(count, [&](int64_t b, int64_t e) {
      at::Tensor gxx = at::empty({B, ld}, X.options()), gss = at::empty({B, ld}, X.options());
      at::Tensor gc = at::empty({B, ld}, X.options()), M = at::empty({4 * B, ld}, X.options());
      at::Tensor out = at::empty({B, Q}, X.options());
      for (int64_t I = b; I < e; ++I) {
        const int64_t J = (I + t) % nb;
        const int64_t i0 = I * B, j0 = J * B, ni = std::min(B, n - i0), nj = std::min(B, n - j0);
        tile_dots(gxx, X, i0, ni, X, j0, nj);
        tile_dots(gss, S, i0, ni, S, j0, nj);
        tile_dots(gc, XS, i0, ni, SX, j0, nj);
        grad_pass<T>(sp, d, gxx.data_ptr<T>(), gss.data_ptr<T>(), gc.data_ptr<T>(), M.data_ptr<T>(), B * ld, ld, ni,
                     nj, xn + i0, xs + i0, xn + j0, xs + j0, I == J, exclude);
        for (int64_t k = 0; k < 4; ++k) {
          const int64_t c0 = kColumns[k][0], nc = kColumns[k][1] * d + kColumns[k][2];
          const at::Tensor Mk = M.narrow(0, k * B, ni).narrow(1, 0, nj);
          at::Tensor o = out.narrow(0, 0, ni).narrow(1, 0, nc);  // row side: block I
          at::cpu::mm_out(o, Mk, Rhs.narrow(0, j0, nj).narrow(1, c0 == 2 ? 1 + d : c0, nc));
          row_acc.narrow(0, i0, ni).select(1, k).narrow(1, c0 == 2 ? 1 + d : c0, nc).add_(o);
          if (I != J) {  // column side: block J, the transposed tile
            at::Tensor oc = out.narrow(0, 0, nj).narrow(1, 0, nc);
            at::cpu::mm_out(oc, Mk.t(), Rhs.narrow(0, i0, ni).narrow(1, c0 == 2 ? 1 + d : c0, nc));
            col_acc.narrow(0, j0, nj).select(1, k).narrow(1, c0 == 2 ? 1 + d : c0, nc).add_(oc);
          }
        }
      }
    });
  }
  return row_acc.add_(col_acc);
}

// [beta, c, sigma_1, ...] (float64, CPU) as SteinParams, the sigmas checked.
SteinParams stein_params(const char* op, const at::Tensor& params, c10::string_view kernel) {
  TORCH_CHECK(params.dim() == 1 && params.size(0) >= 3 && params.scalar_type() == at::kDouble && params.device().is_cpu(),
              "infovae::", op, ": params must be float64 [beta, c, sigma_1, ...], got ", params.sizes());
  const at::Tensor pc = params.contiguous();
  const double* pv = pc.data_ptr<double>();
  SteinParams sp;
  sp.rbf = kernel == "rbf";
  sp.beta = pv[0];
  sp.c = pv[1];
  sp.sigmas.assign(pv + 2, pv + pc.size(0));
  for (double sigma : sp.sigmas)
    TORCH_CHECK(std::isfinite(sigma) && sigma > 0, "infovae::", op, ": sigmas must be positive, got ", sigma);
  return sp;
}

}  // namespace

at::Tensor stein_moments(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                         c10::string_view kernel, bool exclude_diagonal) {
  TORCH_CHECK(kernel == "imq" || kernel == "rbf", "infovae::stein_moments: kernel must be 'imq' or 'rbf', got '",
              std::string(kernel), "'");
  TORCH_CHECK(x.dim() == 2 && s.sizes() == x.sizes() && w.dim() == 1 && w.size(0) == x.size(0),
              "infovae::stein_moments: x, s (N, d) and w (N,) expected, got ", x.sizes(), ", ", s.sizes(), ", ",
              w.sizes());
  TORCH_CHECK(x.scalar_type() == s.scalar_type() && x.scalar_type() == w.scalar_type() && x.is_floating_point() &&
                  x.device().is_cpu() && s.device().is_cpu() && w.device().is_cpu(),
              "infovae::stein_moments: x, s and w must be CPU tensors of one floating dtype");
  const SteinParams sp = stein_params("stein_moments", params, kernel);
  if (x.size(0) == 0) return at::zeros({0, 4, 1 + 2 * x.size(1)}, x.options().dtype(at::kDouble));
  return x.scalar_type() == at::kDouble ? run_moments<double>(x, s, w, sp, exclude_diagonal)
                                        : run_moments<float>(x, s, w, sp, exclude_diagonal);
}

at::Tensor stein_form(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                      c10::string_view kernel, bool exclude_diagonal) {
  TORCH_CHECK(kernel == "imq" || kernel == "rbf", "infovae::stein_form: kernel must be 'imq' or 'rbf', got '",
              std::string(kernel), "'");
  TORCH_CHECK(x.dim() == 2 && s.sizes() == x.sizes(), "infovae::stein_form: x and s must be (N, d) of one shape, got ",
              x.sizes(), " and ", s.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(0), "infovae::stein_form: w must be (N, P), got ", w.sizes());
  TORCH_CHECK(x.scalar_type() == s.scalar_type() && x.scalar_type() == w.scalar_type() && x.is_floating_point(),
              "infovae::stein_form: x, s and w must share one floating dtype");
  TORCH_CHECK(x.device().is_cpu() && s.device().is_cpu() && w.device().is_cpu() && params.device().is_cpu(),
              "infovae::stein_form: CPU tensors expected");
  const SteinParams sp = stein_params("stein_form", params, kernel);
  if (x.size(0) == 0 || w.size(1) == 0) return at::zeros({w.size(1)}, x.options().dtype(at::kDouble));
  return x.scalar_type() == at::kDouble ? run<double>(x, s, w, sp, exclude_diagonal)
                                        : run<float>(x, s, w, sp, exclude_diagonal);
}

}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae
