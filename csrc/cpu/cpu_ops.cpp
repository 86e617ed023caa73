// infovae::cpu ops: argument checks (written once, below, for all three ops), packing into the
// engine's layouts (engine_api.h), dispatch on the compute type (float64 for float64 inputs, float32
// otherwise). The points arrive centred and scaled and the params clamped (the op layer does both);
// nothing here changes the data.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "dot_gemm.h"
#include "engine_api.h"
#include "checks.h"
#include "variant.h"

namespace infovae {
namespace cpu {
inline namespace INFOVAE_CPU_CAPABILITY {
namespace {

using engine::Dims;
using engine::divup;
using engine::roundup;

// params' values, read on the host for free here. Distance kernels: finite and > 0 (the op layer clamps
// them). polynomial [gamma, coef, degree]: gamma and coef finite (any sign), degree an integer in
// 1..kMaxDegree.
std::vector<double> param_values(const char* op, const at::Tensor& params, KernelKind kind) {
  const at::Tensor pc = params.contiguous();
  std::vector<double> out(pc.data_ptr<double>(), pc.data_ptr<double>() + pc.size(0));
  if (kind == KernelKind::POLYNOMIAL) {  // checks::params made sure there are 3
    TORCH_CHECK(std::isfinite(out[0]) && std::isfinite(out[1]), "infovae::", op,
                ": params [gamma, coef, degree] of the polynomial kernel must have a finite gamma and coef, got [",
                out[0], ", ", out[1], ", ", out[2], "]");
    TORCH_CHECK(valid_degree(out[2]), "infovae::", op,
                ": params [gamma, coef, degree] of the polynomial kernel must have an integer degree in 1..",
                kMaxDegree, ", got ", out[2]);
    return out;
  }
  for (double v : out)
    TORCH_CHECK(std::isfinite(v) && v > 0.0, "infovae::", op, ": every entry of params must be finite and > 0, got ",
                v);
  return out;
}

// ---- packing ----------------------------------------------------------------------------------------
template <typename T>
at::ScalarType scalar_of() {
  return sizeof(T) == 8 ? at::kDouble : at::kFloat;
}

// Rows of src (n x q, any strides), optionally times scale_col[i] (a T column), in T: [n_pad][q_pad],
// zero padded.
template <typename T>
at::Tensor to_rows(const at::Tensor& src, int64_t n_pad, int64_t q_pad, const T* scale_col = nullptr) {
  const int64_t n = src.size(0), q = src.size(1);
  at::Tensor out = at::zeros({n_pad, q_pad}, src.options().dtype(scalar_of<T>()));
  T* o = out.data_ptr<T>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "infovae_rows", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    const int64_t s0 = src.stride(0), s1 = src.stride(1);
    at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t k = 0; k < q; ++k) {
          const T x = static_cast<T>(s[i * s0 + k * s1]);
          o[i * q_pad + k] = scale_col ? scale_col[i] * x : x;
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

// s + a * b as one lane of the engine's vector code computes it: -ffp-contract=fast fuses it where the
// capability has FMA (avx2, avx512, aarch64), and it is two roundings where it has none (the x86-64
// baseline), where std::fma would be exact in software and differ.
template <typename T>
inline T lane_madd(T a, T b, T s) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return std::fma(a, b, s);
#else
  return a * b + s;
#endif
}

// |row|^2 of rows [n_pad][ld] (first q columns), accumulated exactly like one lane of the engine's dot
// micro-kernel (T, lane_madd, k ascending), so that r2 = |x|^2 + |x|^2 - 2 x.x is exactly 0 for a point
// paired with itself.
template <typename T>
at::Tensor norms(const at::Tensor& rows, int64_t q) {
  const int64_t n_pad = rows.size(0), ld = rows.size(1);
  at::Tensor out = at::empty({n_pad}, rows.options());
  const T* r = rows.data_ptr<T>();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, n_pad, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T s = T(0);
      for (int64_t k = 0; k < q; ++k) s = lane_madd(r[i * ld + k], r[i * ld + k], s);
      o[i] = s;
    }
  });
  return out;
}

// A point set in every layout the engine may read; the tensors keep the buffers alive.
template <typename T>
struct Packed {
  at::Tensor rows, rp, cp, nrm;
  engine::PointSet<T> ps;
  Packed(const at::Tensor& x, bool row_panels, bool col_panels) {
    constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR;
    const int64_t n = x.size(0), d = x.size(1), n_pad = roundup(n, NR), d_pad = roundup(d, L);
    rows = to_rows<T>(x, n_pad, d_pad);
    nrm = norms<T>(rows, d);
    ps.n = n, ps.d = d, ps.d_pad = d_pad;
    ps.rows = rows.data_ptr<T>(), ps.norms = nrm.data_ptr<T>();
    if (row_panels) rp = to_panels<T>(rows, d, MR), ps.rp = rp.data_ptr<T>();
    if (col_panels) cp = to_panels<T>(rows, d, NR), ps.cp = cp.data_ptr<T>();
  }
};

engine::KernelArg kernel_arg(KernelKind kind, const std::vector<double>& params) {
  engine::KernelArg ka;
  ka.kind = kind, ka.n_scales = static_cast<int>(params.size()), ka.params = params.data();
  return ka;
}

template <typename T>
at::Tensor gram_typed(const at::Tensor& x, const at::Tensor& y, const engine::KernelArg& ka, bool derivative) {
  const Packed<T> px(x, true, false), py(y, false, true);
  at::Tensor K = at::empty({x.size(0), y.size(0)}, x.options().dtype(scalar_of<T>()));
  engine::GramProblem<T> pb;
  pb.x = px.ps, pb.y = py.ps, pb.kernel = ka, pb.derivative = derivative;
  pb.K = K.data_ptr<T>();
  engine::run_gram<T>(pb);
  return K;
}

template <typename T>
void pair_reduce_typed(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v,
                       const std::optional<at::Tensor>& a, const engine::KernelArg& ka, bool exclude_diagonal,
                       at::Tensor& S, at::Tensor& G) {
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t N = x.size(0), M = y.size(0), p = v.size(1);
  const bool grad = a.has_value();
  const int64_t N_pad = roundup(N, NR), M_pad = roundup(M, NR);
  const Packed<T> px(x, true, false), py(y, false, true);
  engine::PairProblem<T> pb;
  pb.x = px.ps, pb.y = py.ps, pb.p = p, pb.p_pad = roundup(p, L);
  at::Tensor vr, vp, acol, ap, vy;
  if (p == 1) {
    vr = to_rows<T>(v, M_pad, 1);
    pb.vcol = vr.data_ptr<T>();
  } else {
    vr = to_rows<T>(v, M_pad, pb.p_pad);
    pb.vr = vr.data_ptr<T>();
    if (grad || p <= Dims<T>::LaneD) {  // GradPG; the lane-form S stage (not p = thousands of permutations)
      vp = to_panels<T>(vr, p, NR);
      pb.vp = vp.data_ptr<T>();
    }
  }
  if (grad) {
    if (p == 1) {
      acol = to_rows<T>(*a, N_pad, 1);
      pb.acol = acol.data_ptr<T>();
      if (y.size(1) > Dims<T>::LaneD) {  // the broadcast-form stage's rows (the lane form reads y's panels)
        vy = to_rows<T>(y, M_pad, pb.y.d_pad, pb.vcol);
        pb.vy = vy.data_ptr<T>();
      }
    } else {
      ap = to_panels<T>(to_rows<T>(*a, N_pad, p), p, MR);
      pb.ap = ap.data_ptr<T>();
    }
    pb.G = G.data_ptr<double>();
  }
  pb.kernel = ka;
  pb.exclude_diagonal = exclude_diagonal;
  pb.S = S.data_ptr<double>();
  engine::run_pair_reduce<T>(pb);
}

template <typename T>
void quad_form_typed(const at::Tensor& z, const at::Tensor& w, const std::optional<at::Tensor>& a,
                     const engine::KernelArg& ka, bool exclude_diagonal, at::Tensor& q, at::Tensor& S, at::Tensor& G) {
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t N = z.size(0), P = w.size(1);
  const int64_t N_pad = roundup(N, NR);
  const bool grad = a.has_value();
  const Packed<T> pz(z, true, true);
  engine::QuadProblem<T> pb;
  pb.z = pz.ps, pb.P = P, pb.P_pad = roundup(P, L);
  at::Tensor wr, acol, wz, wrp, wcp, arp, acp;
  wr = to_rows<T>(w, N_pad, P == 1 ? 1 : pb.P_pad);
  (P == 1 ? pb.wcol : pb.wr) = wr.data_ptr<T>();
  if (grad) {
    if (P == 1) {
      acol = to_rows<T>(*a, N_pad, 1);
      pb.acol = acol.data_ptr<T>();
      wz = to_rows<T>(z, N_pad, pb.z.d_pad, pb.wcol);
      pb.wz = wz.data_ptr<T>();
    } else {
      const at::Tensor ar = to_rows<T>(*a, N_pad, P);
      wrp = to_panels<T>(wr, P, MR), wcp = to_panels<T>(wr, P, NR);
      arp = to_panels<T>(ar, P, MR), acp = to_panels<T>(ar, P, NR);
      pb.wrp = wrp.data_ptr<T>(), pb.wcp = wcp.data_ptr<T>(), pb.arp = arp.data_ptr<T>(), pb.acp = acp.data_ptr<T>();
    }
    pb.G = G.data_ptr<double>();
  }
  if (S.size(0) > 0) pb.S = S.data_ptr<double>();
  pb.kernel = ka;
  pb.exclude_diagonal = exclude_diagonal;
  pb.q = q.data_ptr<double>();
  engine::run_quad_form<T>(pb);
}

// Problem b of a batch is the 2-D op on the rows b of every tensor, and its result does not depend on the
// thread count: the problems are the parallel items when there are enough to keep every thread busy or
// they are small (`pairs` per problem), else they run in order, each over all threads. Bitwise the same
// results either way.
template <class F>
void for_each_problem(int64_t B, int64_t pairs, F&& f) {
  const int64_t nt = std::max(1, at::get_num_threads());
  if (B >= 4 * nt || pairs < (int64_t{1} << 22))
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) f(b);
    });
  else
    for (int64_t b = 0; b < B; ++b) f(b);
}

at::Tensor gram_2d(const at::Tensor& x, const at::Tensor& y, const at::Tensor& params, c10::string_view kernel,
                   bool derivative) {
  const KernelKind kind = checks::gram_args(x, y, params, kernel, c10::DeviceType::CPU);
  const auto prm = param_values("gram", params, kind);  // kernel_arg points into it
  const auto ka = kernel_arg(kind, prm);
  const int64_t N = x.size(0), M = y.size(0);
  if (N == 0 || M == 0) return at::zeros({N, M}, x.options());
  if (x.scalar_type() == at::kDouble)
    return dotgemm::applies(kind, x.size(1)) ? dotgemm::gram(x, y, prm, derivative)
                                             : gram_typed<double>(x, y, ka, derivative);
  at::Tensor K = dotgemm::applies(kind, x.size(1)) ? dotgemm::gram(x, y, prm, derivative)
                                                   : gram_typed<float>(x, y, ka, derivative);
  return x.scalar_type() == at::kFloat ? K : K.to(x.scalar_type());
}

// The 2-D op, adding into S and G (zeros; G empty when a is None).
void pair_reduce_into(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v, const std::optional<at::Tensor>& a,
                      const at::Tensor& params, c10::string_view kernel, bool exclude_diagonal, at::Tensor S,
                      at::Tensor G) {
  const KernelKind kind = checks::pair_reduce_args(x, y, v, a, params, kernel, exclude_diagonal, c10::DeviceType::CPU);
  const auto prm = param_values("pair_reduce", params, kind);  // kernel_arg points into it
  const auto ka = kernel_arg(kind, prm);
  const int64_t N = x.size(0), M = y.size(0), d = x.size(1), p = v.size(1);
  if (N == 0 || M == 0 || p == 0) return;
  if (dotgemm::applies(kind, d))
    dotgemm::pair_reduce(x, y, v, a, prm, exclude_diagonal, S, G);
  else if (x.scalar_type() == at::kDouble)
    pair_reduce_typed<double>(x, y, v, a, ka, exclude_diagonal, S, G);
  else
    pair_reduce_typed<float>(x, y, v, a, ka, exclude_diagonal, S, G);
}

// The 2-D op, adding into q, S (zeros, or empty without row sums) and G (zeros, or empty when a is None).
void quad_form_into(const at::Tensor& z, const at::Tensor& w, const std::optional<at::Tensor>& a,
                    const at::Tensor& params, c10::string_view kernel, bool exclude_diagonal, at::Tensor q,
                    at::Tensor S, at::Tensor G) {
  const KernelKind kind = checks::quad_form_args(z, w, a, params, kernel, c10::DeviceType::CPU);
  const auto prm = param_values("quad_form", params, kind);  // kernel_arg points into it
  const auto ka = kernel_arg(kind, prm);
  const int64_t N = z.size(0), d = z.size(1), P = w.size(1);
  if (N == 0 || P == 0) return;
  if (dotgemm::applies(kind, d))
    dotgemm::quad_form(z, w, a, prm, exclude_diagonal, q, S, G);
  else if (z.scalar_type() == at::kDouble)
    quad_form_typed<double>(z, w, a, ka, exclude_diagonal, q, S, G);
  else
    quad_form_typed<float>(z, w, a, ka, exclude_diagonal, q, S, G);
}

std::optional<at::Tensor> select(const std::optional<at::Tensor>& t, int64_t b) {
  return t.has_value() ? std::optional<at::Tensor>((*t)[b]) : std::nullopt;
}

}  // namespace

// Each op takes 2-D arguments (one problem) or 3-D ones with a leading batch dim B and params (B, S')
// (for_each_problem above).
at::Tensor gram(const at::Tensor& x, const at::Tensor& y, const at::Tensor& params, c10::string_view kernel,
                bool derivative) {
  if (x.dim() != 3) return gram_2d(x, y, params, kernel, derivative);
  const int64_t B = checks::batch("gram", {{"x", &x}, {"y", &y}}, params);
  at::Tensor K = at::empty({B, x.size(1), y.size(1)}, x.options());
  for_each_problem(B, x.size(1) * y.size(1), [&](int64_t b) {
    K[b].copy_(gram_2d(x[b], y[b], params[b], kernel, derivative));
  });
  return K;
}

std::tuple<at::Tensor, at::Tensor> pair_reduce(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v,
                                               const std::optional<at::Tensor>& a, const at::Tensor& params,
                                               c10::string_view kernel, bool exclude_diagonal) {
  const auto dopt = x.options().dtype(at::kDouble);
  if (x.dim() != 3) {
    checks::pair_reduce_args(x, y, v, a, params, kernel, exclude_diagonal, c10::DeviceType::CPU);
    at::Tensor S = at::zeros({x.size(0), v.size(1)}, dopt);
    at::Tensor G = at::zeros({a.has_value() ? x.size(0) : 0, x.size(1)}, dopt);
    pair_reduce_into(x, y, v, a, params, kernel, exclude_diagonal, S, G);
    return {S, G};
  }
  const int64_t B = checks::batch("pair_reduce", {{"x", &x}, {"y", &y}, {"v", &v}, {"a", a ? &*a : nullptr}}, params);
  at::Tensor S = at::zeros({B, x.size(1), v.size(2)}, dopt);
  at::Tensor G = at::zeros({B, a.has_value() ? x.size(1) : 0, x.size(2)}, dopt);
  for_each_problem(B, x.size(1) * y.size(1), [&](int64_t b) {
    pair_reduce_into(x[b], y[b], v[b], select(a, b), params[b], kernel, exclude_diagonal, S[b], G[b]);
  });
  return {S, G};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quad_form(const at::Tensor& z, const at::Tensor& w,
                                                         const std::optional<at::Tensor>& a, const at::Tensor& params,
                                                         c10::string_view kernel, bool exclude_diagonal,
                                                         bool row_sums) {
  const auto dopt = z.options().dtype(at::kDouble);
  if (z.dim() != 3) {
    checks::quad_form_args(z, w, a, params, kernel, c10::DeviceType::CPU);
    const int64_t N = z.size(0);
    at::Tensor q = at::zeros({w.size(1)}, dopt);
    at::Tensor S = at::zeros({row_sums ? N : 0, w.size(1)}, dopt);
    at::Tensor G = at::zeros({a.has_value() ? N : 0, z.size(1)}, dopt);
    quad_form_into(z, w, a, params, kernel, exclude_diagonal, q, S, G);
    return {q, S, G};
  }
  const int64_t B = checks::batch("quad_form", {{"z", &z}, {"w", &w}, {"a", a ? &*a : nullptr}}, params);
  const int64_t N = z.size(1);
  at::Tensor q = at::zeros({B, w.size(2)}, dopt);
  at::Tensor S = at::zeros({B, row_sums ? N : 0, w.size(2)}, dopt);
  at::Tensor G = at::zeros({B, a.has_value() ? N : 0, z.size(2)}, dopt);
  for_each_problem(B, N * N / 2, [&](int64_t b) {
    quad_form_into(z[b], w[b], select(a, b), params[b], kernel, exclude_diagonal, q[b], S[b], G[b]);
  });
  return {q, S, G};
}

}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae
