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
// matrices per tile (U, phi, phi', A; pair_pass) against [w, w x, w s] (run_moments).
//
// The points arrive centred by the op layer (u is translation invariant). params (float64):
// [beta, c, sigma_1, ..., sigma_S]; kernel "imq": phi = sum_s (c^2 + r2 / sigma_s^2)^beta, "rbf": phi =
// sum_s exp(-r2 / (2 sigma_s^2)) (beta and c unused).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "blas_tiles.h"
#include "engine_api.h"
#include "simd.h"
#include "variant.h"
#include "vmath.h"
#include "infovae/pair_math.h"

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

// The checked params and base of a call; of<T>() is pair_math.h's per-scale constants in the compute type.
struct SteinArgs {
  SteinBase base;
  std::vector<double> params;  // [beta, c, sigma_1, ...]
  template <typename T>
  SteinParams<T> of() const {
    return make_stein_params<T>(base, params.data(), static_cast<int>(params.size()));
  }
};

// rad[k] = phi^(k)(r2) on a vector, k <= ORDER (pair_math.h's stein_radial with the vector policies).
template <int ORDER, typename T, typename V>
inline void radial(const SteinParams<T>& sp, V r2, V (&rad)[ORDER + 1]) {
  stein_radial<ORDER>(sp, r2, engine::VExp{}, rad, engine::VPow{}, engine::VRsqrt{});
}

// The per-pair values of a tile from its products Gxx (x_i.x_j), Gss (s_i.s_j) and Gc (x_i.s_j + s_i.x_j),
// [rows][ld]: U into M (it may be Gxx itself, read before written); with Grad also, in blocks of rows
// k * bstride, phi, phi' and A = phi' s_i.s_j + 2 phi'' cross - 2 d phi'' - 4 phi''' r2 - 4 phi'', so that
// du_ij/dx_i = 2 (x_i - x_j) A_ij + 2 phi'_ij (s_j - s_i) and du_ij/ds_i = phi_ij s_j - 2 phi'_ij (x_i - x_j)
// (stein_moments). Pairs i == j (diag tiles): r2 = 0, and every value 0 with exclude. Lanes j >= cols hold
// garbage that no GEMM reads.
template <typename T, bool Grad>
__attribute__((noinline)) void pair_pass(const SteinParams<T>& sp, int64_t d, const T* Gxx, const T* Gss, const T* Gc,
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
      V rad[Grad ? 4 : 3];
      radial<Grad ? 3 : 2>(sp, r2, rad);
      const V ss = vload(Gss + o);
      const V cross = vload(Gc + o) - xsi - vload(xs_j + j);
      const V u = stein_value(rad, r2, ss, cross, two_d);
      const VI drop = exclude ? self : VI{};
      vstore(M + o, drop ? zero : u);
      if constexpr (Grad) {
        const V a = stein_moment_weight(rad, r2, ss, cross, two_d);
        vstore(M + bstride + o, drop ? zero : rad[0]);
        vstore(M + 2 * bstride + o, drop ? zero : rad[1]);
        vstore(M + 3 * bstride + o, drop ? zero : a);
      }
    }
  }
}

// The points of a sweep in the compute type T, and per tile (I, J) of B x B pairs its three products (x.x,
// s.s and [x, s].[s, x], GEMMs into the worker's buffers) turned into per-pair values by pair_pass.
template <typename T>
struct Sweep {
  struct Tile {
    int64_t i0, j0, ni, nj;
  };
  int64_t n, d, B, nb, ld;
  at::Tensor X, S, XS, SX;
  at::Tensor norms;  // |x_i|^2 and x_i.s_i, zero padded for whole-vector loads past the last point

  Sweep(const at::Tensor& x, const at::Tensor& s)
      : n(x.size(0)), d(x.size(1)), B(block_size(n)), nb(divup(n, B)), ld(roundup(B, Dims<T>::L)), X(rows_of<T>(x)),
        S(rows_of<T>(s)), XS(at::cat({X, S}, 1)), SX(at::cat({S, X}, 1)),
        norms(at::zeros({2, roundup(n, Dims<T>::L) + Dims<T>::L}, X.options())) {
    norms[0].narrow(0, 0, n).copy_(X.square().sum(1));
    norms[1].narrow(0, 0, n).copy_((X * S).sum(1));
  }

  // buffers of one worker: the three products (B x ld each)
  at::Tensor buffer() const { return at::empty({3 * B, ld}, X.options()); }

  // The tile's values into M (U; with Grad also phi, phi', A at rows k * bstride); M may be the buffer.
  template <bool Grad>
  Tile pairs(const SteinParams<T>& sp, int64_t I, int64_t J, at::Tensor& buf, T* M, int64_t bstride, bool exclude) const {
    const Tile t{I * B, J * B, std::min(B, n - I * B), std::min(B, n - J * B)};
    at::Tensor gxx = buf.narrow(0, 0, B), gss = buf.narrow(0, B, B), gc = buf.narrow(0, 2 * B, B);
    tile_dots(gxx, X, t.i0, t.ni, X, t.j0, t.nj);
    tile_dots(gss, S, t.i0, t.ni, S, t.j0, t.nj);
    tile_dots(gc, XS, t.i0, t.ni, SX, t.j0, t.nj);
    const T* xn = norms[0].data_ptr<T>();
    const T* xs = norms[1].data_ptr<T>();
    pair_pass<T, Grad>(sp, d, gxx.data_ptr<T>(), gss.data_ptr<T>(), gc.data_ptr<T>(), M, bstride, ld, t.ni, t.nj,
                       xn + t.i0, xs + t.i0, xn + t.j0, xs + t.j0, I == J, exclude);
    return t;
  }
};

template <typename T>
at::Tensor run(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const SteinArgs& args, bool exclude) {
  const SteinParams<T> sp = args.of<T>();
  const Sweep<T> sw(x, s);
  const int64_t nb = sw.nb, P = w.size(1);
  const at::Tensor W = rows_of<T>(w);
  // Row block I owns the tiles (I, (I + t) mod nb), t = 0 .. nb/2 (t = nb/2 only for I < nb/2 when nb is
  // even): each unordered pair of blocks once, the same work per row block, q partials per row block.
  std::vector<double> partial(nb * P, 0.0);
  const T* wp = W.data_ptr<T>();
  parallel_items(nb, [&](int64_t b, int64_t e) {
    at::Tensor buf = sw.buffer(), R = at::empty({sw.B, P}, sw.X.options());
    T* u = buf.data_ptr<T>();  // u in place of x_i.x_j
    for (int64_t I = b; I < e; ++I) {
      for (int64_t t = 0; t <= nb / 2; ++t) {
        if (nb % 2 == 0 && t > 0 && t == nb / 2 && I >= nb / 2) break;
        const int64_t J = (I + t) % nb;
        const auto [i0, j0, ni, nj] = sw.template pairs<false>(sp, I, J, buf, u, 0, exclude);
        at::Tensor r = R.narrow(0, 0, ni);
        at::cpu::mm_out(r, buf.narrow(0, 0, ni).narrow(1, 0, nj), W.narrow(0, j0, nj));
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

// R (n, 4, 1 + 2d) float64: R[i][k] = sum_j M^k_ij [w_j, w_j x_j, w_j s_j] for the four matrices of
// pair_pass<T, true>, over every j, in the columns the gradient reads (the others 0): U meets w, phi w s,
// phi' all of them, A w and w x. Symmetric tiles in rounds: tile (I, (I + t) mod nb) adds its row side to
// block I of one accumulator and, off the diagonal, the transposed products to block J of another; no two
// tiles of a round share a block of either accumulator, and the rounds run in order (no atomics,
// thread-count independent). Every product is computed transposed, [columns][points] = Rhs^T M^T (row side)
// or Rhs^T M (column side): MKL runs (B x B) x (B x c) at 13 GFLOP/s for c = 8 or 9 and the transposed
// (c x B) x (B x B) at 60, so the accumulators are [4][Q][n] and R their permutation.
template <typename T>
at::Tensor run_moments(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const SteinArgs& args,
                       bool exclude) {
  const SteinParams<T> sp = args.of<T>();
  const Sweep<T> sw(x, s);
  const int64_t n = sw.n, d = sw.d, B = sw.B, nb = sw.nb, ld = sw.ld, Q = 1 + 2 * d;
  const at::Tensor Wv = rows_of<T>(w).reshape({n, 1});
  const at::Tensor RhsT = at::cat({Wv, Wv * sw.X, Wv * sw.S}, 1).t().contiguous();  // (Q, n)
  const int64_t first[4] = {0, 1 + d, 0, 0}, width[4] = {1, d, Q, 1 + d};  // columns of Rhs per matrix
  at::Tensor row_acc = at::zeros({4, Q, n}, x.options().dtype(at::kDouble));
  at::Tensor col_acc = at::zeros({4, Q, n}, x.options().dtype(at::kDouble));
  for (int64_t t = 0; t <= nb / 2; ++t) {
    const int64_t count = (nb % 2 == 0 && t == nb / 2 && t > 0) ? nb / 2 : nb;
    parallel_items(count, [&](int64_t b, int64_t e) {
      at::Tensor buf = sw.buffer(), M = at::empty({4 * B, ld}, sw.X.options());
      at::Tensor out = at::empty({Q, B}, sw.X.options());
      for (int64_t I = b; I < e; ++I) {
        const int64_t J = (I + t) % nb;
        const auto [i0, j0, ni, nj] = sw.template pairs<true>(sp, I, J, buf, M.data_ptr<T>(), B * ld, exclude);
        for (int64_t k = 0; k < 4; ++k) {
          const int64_t c0 = first[k], nc = width[k];
          const at::Tensor Mk = M.narrow(0, k * B, ni).narrow(1, 0, nj);
          const at::Tensor Rt = RhsT.narrow(0, c0, nc);
          at::Tensor o = out.narrow(0, 0, nc).narrow(1, 0, ni);  // row side: block I
          at::cpu::mm_out(o, Rt.narrow(1, j0, nj), Mk.t());
          row_acc[k].narrow(0, c0, nc).narrow(1, i0, ni).add_(o);
          if (I != J) {  // column side: block J, the transposed tile
            at::Tensor oc = out.narrow(0, 0, nc).narrow(1, 0, nj);
            at::cpu::mm_out(oc, Rt.narrow(1, i0, ni), Mk);
            col_acc[k].narrow(0, c0, nc).narrow(1, j0, nj).add_(oc);
          }
        }
      }
    });
  }
  return row_acc.add_(col_acc).permute({2, 0, 1}).contiguous();
}

// stein_thin: m steps of the greedy selection of ops/stein_thinning.py in one call. Each step picks the
// argmin j of the objective (the first of the smallest) and adds 2 u(x_i, x_j) to every entry i. The points
// are transposed ([d][n_pad], a vector holds one coordinate of L points): 4d multiply-adds a point (x.x_j,
// s.s_j and x.s_j + s.x_j), and the pass that adds column j also finds the next argmin (per worker the
// lowest index among the smallest values, the workers' results combined in index order). Elementwise
// updates and an exact minimum: the selection does not depend on the thread count. Padding lanes hold +inf.
template <typename T>
std::tuple<at::Tensor, at::Tensor> run_thin(const at::Tensor& x, const at::Tensor& s, const at::Tensor& start,
                                            const SteinArgs& args, int64_t m) {
  const SteinParams<T> sp = args.of<T>();
  using V = typename VecT<T>::V;
  using VI = typename VecT<T>::VI;
  using I = typename VecT<T>::I;
  constexpr int L = Dims<T>::L;
  static const Iota<T> iota;
  const int64_t n = x.size(0), d = x.size(1), np = roundup(n, L), nv = np / L;
  const at::Tensor X = rows_of<T>(x), S = rows_of<T>(s);
  // [x^T; s^T; |x|^2; x.s], zero padded, in one plain loop (ATen's transposed copies and short-row sums
  // cost tens of milliseconds at n = 10^5, several steps' worth)
  at::Tensor packed = at::zeros({2 * d + 2, np}, X.options());
  T *xt = packed.data_ptr<T>(), *st = xt + d * np, *xn = st + d * np, *xs = xn + np;
  const T *xrows = X.data_ptr<T>(), *srows = S.data_ptr<T>();
  for (int64_t i = 0; i < n; ++i) {
    T nn = 0, ns = 0;
    for (int64_t k = 0; k < d; ++k) {
      const T a = xrows[i * d + k], b = srows[i * d + k];
      xt[k * np + i] = a;
      st[k * np + i] = b;
      nn += a * a;
      ns += a * b;
    }
    xn[i] = nn;
    xs[i] = ns;
  }
  at::Tensor objective = at::full({np}, std::numeric_limits<T>::infinity(), X.options());
  objective.narrow(0, 0, n).copy_(start);
  T* obj = objective.data_ptr<T>();
  at::Tensor chosen = at::empty({m}, x.options().dtype(at::kLong));
  int64_t* out = chosen.data_ptr<int64_t>();
  const auto first = objective.min(0);
  TORCH_CHECK(std::isfinite(std::get<0>(first).item<double>()), "infovae::stein_thin: the objective is not finite");
  int64_t j = std::get<1>(first).item<int64_t>();  // torch's min: the first of the smallest
  const int workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nv));
  const int64_t per = divup(nv, workers);
  std::vector<T> best(workers);
  std::vector<int64_t> where(workers);
  const T two_d = static_cast<T>(2 * d);
  for (int64_t t = 0; t < m; ++t) {
    out[t] = j;
    const T* xj = xrows + j * d;
    const T* sj = srows + j * d;
    const V xnj = vset<T>(xn[j]), xsj = vset<T>(xs[j]);
    at::parallel_for(0, workers, 1, [&](int64_t b, int64_t e) {
      for (int64_t w = b; w < e; ++w) {
        V low = vset<T>(std::numeric_limits<T>::infinity());
        VI at_ = VI{};
        for (int64_t v = w * per; v < std::min(nv, (w + 1) * per); ++v) {
          const int64_t i = v * L;
          V gxx{}, gss{}, gc{};
          for (int64_t k = 0; k < d; ++k) {
            const V xv = vload(xt + k * np + i), sv = vload(st + k * np + i);
            const V xjk = vset<T>(xj[k]), sjk = vset<T>(sj[k]);
            gxx += xv * xjk;
            gss += sv * sjk;
            gc += xv * sjk + sv * xjk;
          }
          const VI idx = iota.v + static_cast<I>(i);
          const VI self = idx == static_cast<I>(j);
          V r2 = vload(xn + i) + xnj - gxx * T(2);
          r2 = r2 < V{} ? V{} : r2;
          r2 = self ? V{} : r2;
          const V cross = self ? V{} : gc - vload(xs + i) - xsj;
          V rad[3];
          radial<2>(sp, r2, rad);
          const V u = stein_value(rad, r2, gss, cross, two_d);
          const VI real = idx < static_cast<I>(n);
          const V o = real ? vload(obj + i) + T(2) * u : vload(obj + i);
          vstore(obj + i, o);
          const VI lower = o < low;
          low = lower ? o : low;
          at_ = lower ? idx : at_;
        }
        T lanes[L];
        I ids[L];
        std::memcpy(lanes, &low, sizeof(low));
        std::memcpy(ids, &at_, sizeof(at_));
        best[w] = std::numeric_limits<T>::infinity();
        where[w] = -1;
        for (int l = 0; l < L; ++l)
          if (lanes[l] < best[w] || (lanes[l] == best[w] && ids[l] < where[w])) best[w] = lanes[l], where[w] = ids[l];
      }
    });
    int64_t pick = -1;
    T value = std::numeric_limits<T>::infinity();
    for (int w = 0; w < workers; ++w)
      if (where[w] >= 0 && (pick < 0 || best[w] < value)) value = best[w], pick = where[w];
    TORCH_CHECK(pick >= 0, "infovae::stein_thin: the objective is not finite");
    j = pick;
  }
  return {chosen, objective.narrow(0, 0, n)};
}

// [beta, c, sigma_1, ...] (float64, CPU) and the kernel's name as SteinArgs, the sigmas checked.
SteinArgs stein_params(const char* op, const at::Tensor& params, c10::string_view kernel) {
  TORCH_CHECK(kernel == "imq" || kernel == "rbf", "infovae::", op, ": kernel must be 'imq' or 'rbf', got '",
              std::string(kernel), "'");
  TORCH_CHECK(params.dim() == 1 && valid_stein_param_count(params.size(0)) && params.scalar_type() == at::kDouble &&
                  params.device().is_cpu(),
              "infovae::", op, ": params must be float64 [beta, c, sigma_1, ...] with 1 to ", kMaxScales,
              " sigmas, got ", params.sizes());
  const at::Tensor pc = params.contiguous();
  const double* pv = pc.data_ptr<double>();
  SteinArgs args{kernel == "rbf" ? SteinBase::RBF : SteinBase::IMQ, std::vector<double>(pv, pv + pc.size(0))};
  for (int64_t k = 2; k < pc.size(0); ++k)
    TORCH_CHECK(std::isfinite(pv[k]) && pv[k] > 0, "infovae::", op, ": sigmas must be positive, got ", pv[k]);
  return args;
}

}  // namespace

at::Tensor stein_moments(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                         c10::string_view kernel, bool exclude_diagonal) {
  TORCH_CHECK(x.dim() == 2 && s.sizes() == x.sizes() && w.dim() == 1 && w.size(0) == x.size(0),
              "infovae::stein_moments: x, s (N, d) and w (N,) expected, got ", x.sizes(), ", ", s.sizes(), ", ",
              w.sizes());
  TORCH_CHECK(x.scalar_type() == s.scalar_type() && x.scalar_type() == w.scalar_type() && x.is_floating_point() &&
                  x.device().is_cpu() && s.device().is_cpu() && w.device().is_cpu(),
              "infovae::stein_moments: x, s and w must be CPU tensors of one floating dtype");
  const SteinArgs sp = stein_params("stein_moments", params, kernel);
  if (x.size(0) == 0) return at::zeros({0, 4, 1 + 2 * x.size(1)}, x.options().dtype(at::kDouble));
  return x.scalar_type() == at::kDouble ? run_moments<double>(x, s, w, sp, exclude_diagonal)
                                        : run_moments<float>(x, s, w, sp, exclude_diagonal);
}

at::Tensor stein_form(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                      c10::string_view kernel, bool exclude_diagonal) {
  TORCH_CHECK(x.dim() == 2 && s.sizes() == x.sizes(), "infovae::stein_form: x and s must be (N, d) of one shape, got ",
              x.sizes(), " and ", s.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(0), "infovae::stein_form: w must be (N, P), got ", w.sizes());
  TORCH_CHECK(x.scalar_type() == s.scalar_type() && x.scalar_type() == w.scalar_type() && x.is_floating_point(),
              "infovae::stein_form: x, s and w must share one floating dtype");
  TORCH_CHECK(x.device().is_cpu() && s.device().is_cpu() && w.device().is_cpu() && params.device().is_cpu(),
              "infovae::stein_form: CPU tensors expected");
  const SteinArgs sp = stein_params("stein_form", params, kernel);
  if (x.size(0) == 0 || w.size(1) == 0) return at::zeros({w.size(1)}, x.options().dtype(at::kDouble));
  return x.scalar_type() == at::kDouble ? run<double>(x, s, w, sp, exclude_diagonal)
                                        : run<float>(x, s, w, sp, exclude_diagonal);
}

std::tuple<at::Tensor, at::Tensor> stein_thin(const at::Tensor& x, const at::Tensor& s, const at::Tensor& objective,
                                              const at::Tensor& params, c10::string_view kernel, int64_t steps) {
  TORCH_CHECK(x.dim() == 2 && s.sizes() == x.sizes() && x.size(0) >= 1 && objective.dim() == 1 &&
                  objective.size(0) == x.size(0),
              "infovae::stein_thin: x, s (N, d) and objective (N,) expected, N >= 1, got ", x.sizes(), ", ", s.sizes(),
              ", ", objective.sizes());
  TORCH_CHECK(x.scalar_type() == s.scalar_type() && x.scalar_type() == objective.scalar_type() &&
                  x.is_floating_point() && x.device().is_cpu() && s.device().is_cpu() && objective.device().is_cpu(),
              "infovae::stein_thin: x, s and objective must be CPU tensors of one floating dtype");
  TORCH_CHECK(steps >= 0, "infovae::stein_thin: steps must be >= 0, got ", steps);
  const SteinArgs sp = stein_params("stein_thin", params, kernel);
  return x.scalar_type() == at::kDouble ? run_thin<double>(x, s, objective, sp, steps)
                                        : run_thin<float>(x, s, objective, sp, steps);
}

}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae
