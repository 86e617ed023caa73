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
std::vector<double> param_values(const char* op, const double* row, int64_t count, KernelKind kind) {
  std::vector<double> out(row, row + count);
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

std::vector<double> param_values(const char* op, const at::Tensor& params, KernelKind kind) {
  const at::Tensor pc = params.contiguous();
  return param_values(op, pc.data_ptr<double>(), pc.size(0), kind);
}

// The params rows of a batch (B, S'), each checked as above.
std::vector<std::vector<double>> param_rows(const char* op, const at::Tensor& params, KernelKind kind) {
  const at::Tensor pc = params.contiguous();
  std::vector<std::vector<double>> rows;
  for (int64_t b = 0; b < pc.size(0); ++b) rows.push_back(param_values(op, pc.data_ptr<double>() + b * pc.size(1), pc.size(1), kind));
  return rows;
}

// ---- packing ----------------------------------------------------------------------------------------
template <typename T>
at::ScalarType scalar_of() {
  return sizeof(T) == 8 ? at::kDouble : at::kFloat;
}

// Rows of src (n x q, or a batch B x n x q; any strides), optionally times scale_col (a T column over
// the output rows), in T: [B * n_pad][q_pad], problem b's rows from b * n_pad on, zero padded.
template <typename T>
at::Tensor to_rows(const at::Tensor& src, int64_t n_pad, int64_t q_pad, const T* scale_col = nullptr) {
  const bool batch = src.dim() == 3;
  const int64_t B = batch ? src.size(0) : 1, n = src.size(-2), q = src.size(-1);
  at::Tensor out = at::empty({B * n_pad, q_pad}, src.options().dtype(scalar_of<T>()));
  T* o = out.data_ptr<T>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "infovae_rows", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    const int64_t sb = batch ? src.stride(0) : 0, s0 = src.stride(-2), s1 = src.stride(-1);
    at::parallel_for(0, B * n_pad, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {  // each output row written once, its padding with zeros
        const int64_t b = row / n_pad, i = row % n_pad;
        T* orow = o + row * q_pad;
        if (i < n)
          for (int64_t k = 0; k < q; ++k) {
            const T x = static_cast<T>(s[b * sb + i * s0 + k * s1]);
            orow[k] = scale_col ? scale_col[row] * x : x;
          }
        std::fill(orow + (i < n ? q : 0), orow + q_pad, T(0));
      }
    });
  });
  return out;
}

// Panels of P rows: [n_pad / P][q][P] from rows [n_pad][ld] (first q columns). A batch's rows (B * n_pad,
// n_pad a multiple of P) give each problem's panels from b * n_pad * q on.
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

// A point set (n, d), or a batch of them (B, n, d), in every layout the engine may read, packed once for
// the batch; the tensors keep the buffers alive.
template <typename T>
struct Packed {
  at::Tensor rows, rp, cp, nrm;
  engine::PointSet<T> ps;  // problem 0
  int64_t n_pad = 0;
  Packed(const at::Tensor& x, bool row_panels, bool col_panels) {
    constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR;
    const int64_t n = x.size(-2), d = x.size(-1), d_pad = roundup(d, L);
    n_pad = roundup(n, NR);
    rows = to_rows<T>(x, n_pad, d_pad);
    nrm = norms<T>(rows, d);
    ps.n = n, ps.d = d, ps.d_pad = d_pad;
    ps.rows = rows.data_ptr<T>(), ps.norms = nrm.data_ptr<T>();
    if (row_panels) rp = to_panels<T>(rows, d, MR), ps.rp = rp.data_ptr<T>();
    if (col_panels) cp = to_panels<T>(rows, d, NR), ps.cp = cp.data_ptr<T>();
  }
  // Problem b's point set: its rows start at b * n_pad in every layout.
  engine::PointSet<T> at(int64_t b) const {
    engine::PointSet<T> p = ps;
    p.rows += b * n_pad * ps.d_pad, p.norms += b * n_pad;
    if (p.rp) p.rp += b * n_pad * ps.d;
    if (p.cp) p.cp += b * n_pad * ps.d;
    return p;
  }
};

// Problem b's part of a buffer whose problems take `per` entries each (nullptr stays nullptr).
template <typename P>
P* part(P* base, int64_t b, int64_t per) {
  return base ? base + b * per : nullptr;
}

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

// Problem b of a batch is the 2-D op on the rows b of every tensor, and its result does not depend on the
// thread count: small problems (`pairs` per problem below 2^22) are the parallel items, larger ones run in
// order, each over all threads (as fast: B = 8, N = 8192, d = 3 took 8.1 ms a problem in parallel, 7.7 in
// order). Bitwise the same results either way.
template <class F>
void for_each_problem(int64_t B, int64_t pairs, F&& f) {
  if (B > 1 && pairs < (int64_t{1} << 22))
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) f(b);
    });
  else
    for (int64_t b = 0; b < B; ++b) f(b);
}

// A batch (every tensor with a leading B; one problem is a batch of 1), packed once, run problem by
// problem; S (B, N, p) and G (B, N, d) or (B, 0, d) float64, zero on entry.
template <typename T>
void pair_reduce_typed(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v,
                       const std::optional<at::Tensor>& a, const std::vector<engine::KernelArg>& kas,
                       bool exclude_diagonal, at::Tensor& S, at::Tensor& G) {
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t B = x.size(0), N = x.size(1), M = y.size(1), d = x.size(2), p = v.size(2);
  const bool grad = a.has_value();
  const int64_t N_pad = roundup(N, NR), M_pad = roundup(M, NR), p_pad = roundup(p, L);
  const Packed<T> px(x, true, false), py(y, false, true);
  engine::PairProblem<T> base;
  base.p = p, base.p_pad = p_pad;
  at::Tensor vr, vp, acol, ap, vy;
  if (p == 1) {
    vr = to_rows<T>(v, M_pad, 1);
    base.vcol = vr.data_ptr<T>();
  } else {
    vr = to_rows<T>(v, M_pad, p_pad);
    base.vr = vr.data_ptr<T>();
    if (grad || p <= Dims<T>::LaneD) {  // GradPG; the lane-form S stage (not p = thousands of permutations)
      vp = to_panels<T>(vr, p, NR);
      base.vp = vp.data_ptr<T>();
    }
  }
  if (grad) {
    if (p == 1) {
      acol = to_rows<T>(*a, N_pad, 1);
      base.acol = acol.data_ptr<T>();
      if (d > Dims<T>::LaneD) {  // the broadcast-form stage's rows (the lane form reads y's panels)
        vy = to_rows<T>(y, M_pad, py.ps.d_pad, base.vcol);
        base.vy = vy.data_ptr<T>();
      }
    } else {
      ap = to_panels<T>(to_rows<T>(*a, N_pad, p), p, MR);
      base.ap = ap.data_ptr<T>();
    }
    base.G = G.data_ptr<double>();
  }
  base.exclude_diagonal = exclude_diagonal;
  base.S = S.data_ptr<double>();
  for_each_problem(B, N * M, [&](int64_t b) {
    engine::PairProblem<T> pb = base;
    pb.x = px.at(b), pb.y = py.at(b), pb.kernel = kas[b];
    pb.vcol = part(base.vcol, b, M_pad), pb.vr = part(base.vr, b, M_pad * p_pad), pb.vp = part(base.vp, b, M_pad * p);
    pb.acol = part(base.acol, b, N_pad), pb.ap = part(base.ap, b, N_pad * p), pb.vy = part(base.vy, b, M_pad * py.ps.d_pad);
    pb.S = part(base.S, b, N * p), pb.G = part(base.G, b, N * d);
    engine::run_pair_reduce<T>(pb);
  });
}

// As pair_reduce_typed: q (B, P), S (B, N, P) or (B, 0, P), G (B, N, d) or (B, 0, d), zero on entry.
template <typename T>
void quad_form_typed(const at::Tensor& z, const at::Tensor& w, const std::optional<at::Tensor>& a,
                     const std::vector<engine::KernelArg>& kas, bool exclude_diagonal, at::Tensor& q, at::Tensor& S,
                     at::Tensor& G) {
  constexpr int L = Dims<T>::L, MR = Dims<T>::MR, NR = Dims<T>::NR;
  const int64_t B = z.size(0), N = z.size(1), d = z.size(2), P = w.size(2);
  const int64_t N_pad = roundup(N, NR), P_pad = roundup(P, L);
  const bool grad = a.has_value();
  const Packed<T> pz(z, true, true);
  engine::QuadProblem<T> base;
  base.P = P, base.P_pad = P_pad;
  at::Tensor wr, acol, wz, wrp, wcp, arp, acp;
  wr = to_rows<T>(w, N_pad, P == 1 ? 1 : P_pad);
  (P == 1 ? base.wcol : base.wr) = wr.data_ptr<T>();
  if (grad) {
    if (P == 1) {
      acol = to_rows<T>(*a, N_pad, 1);
      base.acol = acol.data_ptr<T>();
      wz = to_rows<T>(z, N_pad, pz.ps.d_pad, base.wcol);
      base.wz = wz.data_ptr<T>();
    } else {
      const at::Tensor ar = to_rows<T>(*a, N_pad, P);
      wrp = to_panels<T>(wr, P, MR), wcp = to_panels<T>(wr, P, NR);
      arp = to_panels<T>(ar, P, MR), acp = to_panels<T>(ar, P, NR);
      base.wrp = wrp.data_ptr<T>(), base.wcp = wcp.data_ptr<T>(), base.arp = arp.data_ptr<T>(),
      base.acp = acp.data_ptr<T>();
    }
    base.G = G.data_ptr<double>();
  }
  if (S.size(1) > 0) base.S = S.data_ptr<double>();
  base.exclude_diagonal = exclude_diagonal;
  base.q = q.data_ptr<double>();
  for_each_problem(B, N * N / 2, [&](int64_t b) {
    engine::QuadProblem<T> pb = base;
    pb.z = pz.at(b), pb.kernel = kas[b];
    pb.wcol = part(base.wcol, b, N_pad), pb.wr = part(base.wr, b, N_pad * P_pad);
    pb.acol = part(base.acol, b, N_pad), pb.wz = part(base.wz, b, N_pad * pz.ps.d_pad);
    pb.wrp = part(base.wrp, b, N_pad * P), pb.wcp = part(base.wcp, b, N_pad * P);
    pb.arp = part(base.arp, b, N_pad * P), pb.acp = part(base.acp, b, N_pad * P);
    pb.q = part(base.q, b, P), pb.S = part(base.S, b, N * P), pb.G = part(base.G, b, N * d);
    engine::run_quad_form<T>(pb);
  });
}

std::vector<engine::KernelArg> kernel_args(KernelKind kind, const std::vector<std::vector<double>>& rows) {
  std::vector<engine::KernelArg> out;
  for (const auto& r : rows) out.push_back(kernel_arg(kind, r));
  return out;
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

std::optional<at::Tensor> select(const std::optional<at::Tensor>& t, int64_t b) {
  return t.has_value() ? std::optional<at::Tensor>((*t)[b]) : std::nullopt;
}

std::optional<at::Tensor> unsqueezed(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->unsqueeze(0)) : std::nullopt;
}

}  // namespace

// Each op takes 2-D arguments (one problem) or 3-D ones with a leading batch dim B and params (B, S')
// (checks.h checks both forms); one problem runs as a batch of 1.
at::Tensor gram(const at::Tensor& x, const at::Tensor& y, const at::Tensor& params, c10::string_view kernel,
                bool derivative) {
  if (x.dim() != 3) return gram_2d(x, y, params, kernel, derivative);
  checks::gram_args(x, y, params, kernel, c10::DeviceType::CPU);
  const int64_t B = x.size(0);
  at::Tensor K = at::empty({B, x.size(1), y.size(1)}, x.options());
  for_each_problem(B, x.size(1) * y.size(1), [&](int64_t b) {
    K[b].copy_(gram_2d(x[b], y[b], params[b], kernel, derivative));
  });
  return K;
}

std::tuple<at::Tensor, at::Tensor> pair_reduce(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v,
                                               const std::optional<at::Tensor>& a, const at::Tensor& params,
                                               c10::string_view kernel, bool exclude_diagonal) {
  const KernelKind kind = checks::pair_reduce_args(x, y, v, a, params, kernel, exclude_diagonal, c10::DeviceType::CPU);
  const bool batch = x.dim() == 3;
  const at::Tensor xb = batch ? x : x.unsqueeze(0), yb = batch ? y : y.unsqueeze(0), vb = batch ? v : v.unsqueeze(0);
  const std::optional<at::Tensor> ab = batch ? a : unsqueezed(a);
  const int64_t B = xb.size(0), N = xb.size(1), M = yb.size(1), d = xb.size(2), p = vb.size(2);
  const auto dopt = x.options().dtype(at::kDouble);
  at::Tensor S = at::zeros({B, N, p}, dopt);
  at::Tensor G = at::zeros({B, a.has_value() ? N : 0, d}, dopt);
  const auto prm = param_rows("pair_reduce", batch ? params : params.unsqueeze(0), kind);  // kas point into it
  const auto kas = kernel_args(kind, prm);
  if (B > 0 && N > 0 && M > 0 && p > 0) {
    if (dotgemm::applies(kind, d))
      for (int64_t b = 0; b < B; ++b) {
        at::Tensor Sb = S[b], Gb = G[b];
        dotgemm::pair_reduce(xb[b], yb[b], vb[b], select(ab, b), prm[b], exclude_diagonal, Sb, Gb);
      }
    else if (x.scalar_type() == at::kDouble)
      pair_reduce_typed<double>(xb, yb, vb, ab, kas, exclude_diagonal, S, G);
    else
      pair_reduce_typed<float>(xb, yb, vb, ab, kas, exclude_diagonal, S, G);
  }
  if (batch) return {S, G};
  return {S[0], G[0]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quad_form(const at::Tensor& z, const at::Tensor& w,
                                                         const std::optional<at::Tensor>& a, const at::Tensor& params,
                                                         c10::string_view kernel, bool exclude_diagonal,
                                                         bool row_sums) {
  const KernelKind kind = checks::quad_form_args(z, w, a, params, kernel, c10::DeviceType::CPU);
  const bool batch = z.dim() == 3;
  const at::Tensor zb = batch ? z : z.unsqueeze(0), wb = batch ? w : w.unsqueeze(0);
  const std::optional<at::Tensor> ab = batch ? a : unsqueezed(a);
  const int64_t B = zb.size(0), N = zb.size(1), d = zb.size(2), P = wb.size(2);
  const auto dopt = z.options().dtype(at::kDouble);
  at::Tensor q = at::zeros({B, P}, dopt);
  at::Tensor S = at::zeros({B, row_sums ? N : 0, P}, dopt);
  at::Tensor G = at::zeros({B, a.has_value() ? N : 0, d}, dopt);
  const auto prm = param_rows("quad_form", batch ? params : params.unsqueeze(0), kind);  // kas point into it
  const auto kas = kernel_args(kind, prm);
  if (B > 0 && N > 0 && P > 0) {
    if (dotgemm::applies(kind, d))
      for (int64_t b = 0; b < B; ++b) {
        at::Tensor qb = q[b], Sb = S[b], Gb = G[b];
        dotgemm::quad_form(zb[b], wb[b], select(ab, b), prm[b], exclude_diagonal, qb, Sb, Gb);
      }
    else if (z.scalar_type() == at::kDouble)
      quad_form_typed<double>(zb, wb, ab, kas, exclude_diagonal, q, S, G);
    else
      quad_form_typed<float>(zb, wb, ab, kas, exclude_diagonal, q, S, G);
  }
  if (batch) return {q, S, G};
  return {q[0], S[0], G[0]};
}

}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae
