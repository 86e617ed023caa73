// infovae::cpu ops: input checks, centering on the pooled mean, packing into the engine's layouts
// (engine_api.h), dispatch on the compute type (float64 for float64 inputs, float32 otherwise).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine_api.h"
#include "ops.h"

namespace infovae {
namespace cpu {
namespace {

using engine::Dims;
using engine::divup;
using engine::roundup;

void check_matrix(const char* op, const char* name, const at::Tensor& t, const char* shape) {
  TORCH_CHECK(t.dim() == 2, "infovae::", op, ": ", name, " must be a 2-D tensor ", shape, ", got ", t.dim(),
              "-D tensor of shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), "infovae::", op, ": ", name, " must be a CPU tensor, got ", t.device());
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, "infovae::", op,
              ": ", name, " must be float16, bfloat16, float32 or float64, got ", st);
}

void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "infovae::", op, ": ", name,
              " must have the same dtype as the first input (", ref.scalar_type(), "), got ", t.scalar_type());
}

KernelKind parse_kernel(const char* op, c10::string_view kernel) {
  if (kernel == "rbf") return KernelKind::RBF;
  if (kernel == "imq") return KernelKind::IMQ;
  TORCH_CHECK(false, "infovae::", op, ": kernel must be \"rbf\" or \"imq\", got \"", std::string(kernel), "\"");
}

KernelSpec build_spec(const char* op, KernelKind kind, at::ArrayRef<double> sigmas, int64_t d) {
  TORCH_CHECK(!sigmas.empty() && static_cast<int64_t>(sigmas.size()) <= kMaxScales, "infovae::", op,
              ": sigmas must hold 1 to ", kMaxScales, " bandwidths, got ", sigmas.size());
  for (double s : sigmas)
    TORCH_CHECK(std::isfinite(s) && s > 0.0, "infovae::", op, ": every sigma must be finite and > 0, got ", s);
  KernelSpec spec{};
  const bool ok = make_kernel_spec(kind, sigmas.data(), static_cast<int>(sigmas.size()), d, &spec);
  TORCH_CHECK(ok, "infovae::", op, ": could not build the kernel from ", sigmas.size(), " sigmas");
  return spec;
}

template <typename T>
at::ScalarType scalar_of() {
  return sizeof(T) == 8 ? at::kDouble : at::kFloat;
}

// Column means of the rows of a and b together (float64, fixed order).
std::vector<double> pooled_mean(const at::Tensor& a, const at::Tensor& b) {
  const int64_t d = a.size(1);
  std::vector<double> mu(d, 0.0);
  int64_t n = 0;
  for (const at::Tensor* t : {&a, &b}) {
    if (!t->defined()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t->scalar_type(), "infovae_mean", [&] {
      const scalar_t* p = t->data_ptr<scalar_t>();
      for (int64_t i = 0; i < t->size(0); ++i)
        for (int64_t k = 0; k < d; ++k) mu[k] += static_cast<double>(p[i * d + k]);
    });
    n += t->size(0);
  }
  if (n > 0)
    for (auto& m : mu) m /= static_cast<double>(n);
  return mu;
}

// Rows of src (contiguous, n x q), minus mu (if given), in T: [n_pad][q_pad], zero padded.
template <typename T>
at::Tensor to_rows(const at::Tensor& src, const double* mu, int64_t n_pad, int64_t q_pad) {
  const int64_t n = src.size(0), q = src.size(1);
  at::Tensor out = at::zeros({n_pad, q_pad}, src.options().dtype(scalar_of<T>()));
  T* o = out.data_ptr<T>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "infovae_rows", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t k = 0; k < q; ++k) {
          const double x = static_cast<double>(s[i * q + k]);
          o[i * q_pad + k] = static_cast<T>(mu ? x - mu[k] : x);
        }
    });
  });
  return out;
}

// Panels of P rows: [n_pad / P][q][P] from rows [n_pad][ld] (first q columns).
template <typename T>
at::Tensor to_panels(const at::Tensor& rows, int64_t q, int64_t P) {
  const int64_t n_pad = rows.size(0), ld = rows.size(1);
  at::Tensor out = at::empty({n_pad * q}, rows.options());
  const T* r = rows.data_ptr<T>();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, n_pad / P, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t k = 0; k < q; ++k)
        for (int64_t i = 0; i < P; ++i) o[(b * q + k) * P + i] = r[(b * P + i) * ld + k];
  });
  return out;
}

// |row|^2 of rows [n_pad][ld] (first q columns), accumulated exactly like one lane of the engine's dot
// micro-kernel (T, fused multiply-add, k ascending), so that r2 = |x|^2 + |x|^2 - 2 x.x is exactly 0
// for a point paired with itself.
template <typename T>
at::Tensor norms(const at::Tensor& rows, int64_t q) {
  const int64_t n_pad = rows.size(0), ld = rows.size(1);
  at::Tensor out = at::empty({n_pad}, rows.options());
  const T* r = rows.data_ptr<T>();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, n_pad, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T s = T(0);
      for (int64_t k = 0; k < q; ++k) s = std::fma(r[i * ld + k], r[i * ld + k], s);
      o[i] = s;
    }
  });
  return out;
}

template <typename T>
void pair_reduce_typed(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v,
                       const std::optional<at::Tensor>& a, const KernelSpec& spec, bool exclude_diagonal,
                       at::Tensor& S, at::Tensor& G) {
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t N = x.size(0), M = y.size(0), d = x.size(1), p = v.size(1);
  const bool grad = a.has_value();
  const int64_t N_pad = roundup(N, NR), M_pad = roundup(M, NR);
  const auto mu = pooled_mean(x, y);
  at::Tensor xr = to_rows<T>(x, mu.data(), N_pad, d), yr0 = to_rows<T>(y, mu.data(), M_pad, d);
  at::Tensor xp = to_panels<T>(xr, d, MR), yp = to_panels<T>(yr0, d, NR);
  at::Tensor xn = norms<T>(xr, d), yn = norms<T>(yr0, d);
  engine::PairProblem<T> pb;
  pb.N = N, pb.M = M, pb.d = d, pb.p = p;
  pb.d_pad = roundup(d, L), pb.p_pad = roundup(p, L);
  pb.xp = xp.data_ptr<T>(), pb.xn = xn.data_ptr<T>(), pb.yp = yp.data_ptr<T>(), pb.yn = yn.data_ptr<T>();
  at::Tensor vr, vp, acol, ap, yr;
  if (p == 1) {
    vr = to_rows<T>(v, nullptr, M_pad, 1);
    pb.vcol = vr.data_ptr<T>();
  } else {
    vr = to_rows<T>(v, nullptr, M_pad, pb.p_pad);
    pb.vr = vr.data_ptr<T>();
  }
  if (grad) {
    const at::Tensor ac = a->contiguous();
    if (p == 1) {
      acol = to_rows<T>(ac, nullptr, N_pad, 1);
      pb.acol = acol.data_ptr<T>();
    } else {
      at::Tensor arows = to_rows<T>(ac, nullptr, N_pad, p);
      ap = to_panels<T>(arows, p, MR);
      vp = to_panels<T>(vr, p, NR);
      pb.ap = ap.data_ptr<T>(), pb.vp = vp.data_ptr<T>();
    }
    yr = pb.d_pad == d ? yr0 : to_rows<T>(y, mu.data(), M_pad, pb.d_pad);
    pb.yr = yr.data_ptr<T>();
    pb.xr = xr.data_ptr<T>();
    pb.G = G.data_ptr<double>();
  }
  pb.spec = spec;
  pb.exclude_diagonal = exclude_diagonal;
  pb.S = S.data_ptr<double>();
  engine::run_pair_reduce<T>(pb);
}

template <typename T>
at::Tensor quad_form_typed(const at::Tensor& z, const at::Tensor& w, const KernelSpec& spec, bool exclude_diagonal) {
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t N = z.size(0), d = z.size(1), P = w.size(1);
  const int64_t N_pad = roundup(N, NR);
  const auto mu = pooled_mean(z, at::Tensor());
  at::Tensor zr = to_rows<T>(z, mu.data(), N_pad, d);
  at::Tensor zp = to_panels<T>(zr, d, MR), zq = to_panels<T>(zr, d, NR), zn = norms<T>(zr, d);
  engine::QuadProblem<T> pb;
  pb.N = N, pb.d = d, pb.P = P, pb.P_pad = roundup(P, L);
  pb.zp = zp.data_ptr<T>(), pb.zq = zq.data_ptr<T>(), pb.zn = zn.data_ptr<T>();
  at::Tensor wr = to_rows<T>(w, nullptr, N_pad, P == 1 ? 1 : pb.P_pad);
  (P == 1 ? pb.wcol : pb.wr) = wr.data_ptr<T>();
  pb.spec = spec;
  pb.exclude_diagonal = exclude_diagonal;
  at::Tensor q = at::empty({P}, z.options().dtype(at::kDouble));
  pb.q = q.data_ptr<double>();
  engine::run_quad_form<T>(pb);
  return q;
}

template <typename T>
at::Tensor gram_typed(const at::Tensor& x, const at::Tensor& y, const KernelSpec& spec) {
  constexpr int MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t N = x.size(0), M = y.size(0), d = x.size(1);
  const int64_t N_pad = roundup(N, NR), M_pad = roundup(M, NR);
  const auto mu = pooled_mean(x, y);
  at::Tensor xr = to_rows<T>(x, mu.data(), N_pad, d), yr = to_rows<T>(y, mu.data(), M_pad, d);
  at::Tensor xp = to_panels<T>(xr, d, MR), yp = to_panels<T>(yr, d, NR);
  at::Tensor xn = norms<T>(xr, d), yn = norms<T>(yr, d);
  at::Tensor K = at::empty({N, M}, x.options().dtype(scalar_of<T>()));
  engine::GramProblem<T> pb;
  pb.N = N, pb.M = M, pb.d = d;
  pb.xp = xp.data_ptr<T>(), pb.xn = xn.data_ptr<T>(), pb.yp = yp.data_ptr<T>(), pb.yn = yn.data_ptr<T>();
  pb.spec = spec;
  pb.K = K.data_ptr<T>();
  engine::run_gram<T>(pb);
  return K;
}

}  // namespace

at::Tensor rbf_gram(const at::Tensor& x, const at::Tensor& y, at::ArrayRef<double> sigmas) {
  const char* op = "rbf_gram";
  check_matrix(op, "x", x, "(N, d)");
  check_matrix(op, "y", y, "(M, d)");
  check_same_dtype(op, "y", y, x);
  TORCH_CHECK(x.size(1) == y.size(1), "infovae::rbf_gram: x and y must have the same number of columns d, got ",
              x.size(1), " and ", y.size(1));
  const KernelSpec spec = build_spec(op, KernelKind::RBF, sigmas, x.size(1));
  const int64_t N = x.size(0), M = y.size(0);
  if (N == 0 || M == 0) return at::zeros({N, M}, x.options());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  if (x.scalar_type() == at::kDouble) return gram_typed<double>(xc, yc, spec);
  at::Tensor K = gram_typed<float>(xc, yc, spec);
  return x.scalar_type() == at::kFloat ? K : K.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> pair_reduce(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v,
                                               const std::optional<at::Tensor>& a, at::ArrayRef<double> sigmas,
                                               c10::string_view kernel, bool exclude_diagonal) {
  const char* op = "pair_reduce";
  check_matrix(op, "x", x, "(N, d)");
  check_matrix(op, "y", y, "(M, d)");
  check_matrix(op, "v", v, "(M, p)");
  check_same_dtype(op, "y", y, x);
  check_same_dtype(op, "v", v, x);
  TORCH_CHECK(x.size(1) == y.size(1), "infovae::pair_reduce: x and y must have the same number of columns d, got ",
              x.size(1), " and ", y.size(1));
  TORCH_CHECK(v.size(0) == y.size(0), "infovae::pair_reduce: v must have one row per row of y (", y.size(0),
              "), got ", v.size(0));
  if (a.has_value()) {
    check_matrix(op, "a", *a, "(N, p)");
    check_same_dtype(op, "a", *a, x);
    TORCH_CHECK(a->size(0) == x.size(0) && a->size(1) == v.size(1), "infovae::pair_reduce: a must have shape (N, p) = (",
                x.size(0), ", ", v.size(1), "), got ", a->sizes());
  }
  TORCH_CHECK(!exclude_diagonal || x.size(0) == y.size(0),
              "infovae::pair_reduce: exclude_diagonal requires x and y with the same number of rows, got ", x.size(0),
              " and ", y.size(0));
  const KernelSpec spec = build_spec(op, parse_kernel(op, kernel), sigmas, x.size(1));
  const int64_t N = x.size(0), M = y.size(0), d = x.size(1), p = v.size(1);
  const auto dopt = x.options().dtype(at::kDouble);
  at::Tensor S = at::zeros({N, p}, dopt);
  at::Tensor G = a.has_value() ? at::zeros({N, d}, dopt) : at::zeros({0, d}, dopt);
  if (N == 0 || M == 0 || p == 0) return {S, G};
  const at::Tensor xc = x.contiguous(), yc = y.contiguous(), vc = v.contiguous();
  if (x.scalar_type() == at::kDouble)
    pair_reduce_typed<double>(xc, yc, vc, a, spec, exclude_diagonal, S, G);
  else
    pair_reduce_typed<float>(xc, yc, vc, a, spec, exclude_diagonal, S, G);
  return {S, G};
}

at::Tensor quad_form(const at::Tensor& z, const at::Tensor& w, at::ArrayRef<double> sigmas, c10::string_view kernel,
                     bool exclude_diagonal) {
  const char* op = "quad_form";
  check_matrix(op, "z", z, "(N, d)");
  check_matrix(op, "w", w, "(N, P)");
  check_same_dtype(op, "w", w, z);
  TORCH_CHECK(w.size(0) == z.size(0), "infovae::quad_form: w must have one row per row of z (", z.size(0), "), got ",
              w.size(0));
  const KernelSpec spec = build_spec(op, parse_kernel(op, kernel), sigmas, z.size(1));
  const int64_t N = z.size(0), P = w.size(1);
  if (N == 0 || P == 0) return at::zeros({P}, z.options().dtype(at::kDouble));
  const at::Tensor zc = z.contiguous(), wc = w.contiguous();
  if (z.scalar_type() == at::kDouble) return quad_form_typed<double>(zc, wc, spec, exclude_diagonal);
  return quad_form_typed<float>(zc, wc, spec, exclude_diagonal);
}

}  // namespace cpu
}  // namespace infovae
