// Argument checks of the three primitives, written once for the CPU (csrc/cpu/cpu_ops.cpp) and CUDA
// (csrc/cuda/ops_cuda.cu) implementations: every failure is a c10::Error (a RuntimeError in Python)
// that names the op and the argument. `device` is the device type the implementation runs on.
// gram, pair_reduce and quad_form also take the batched form (docs/DESIGN.md, "Batched problems"): when
// the first argument is 3-D, every tensor argument must be 3-D (B, ...) with its B, and params (B, n).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "infovae/pair_math.h"

namespace infovae {
namespace checks {

// The form of a call, set by its first argument: 2-D points, or `batch` problems of 3-D points.
struct Form {
  bool batched = false;
  int64_t batch = 1;
  // The axis of this form that is axis `dim` of the 2-D form.
  int64_t axis(int64_t dim) const { return batched ? dim + 1 : dim; }
};

inline Form form_of(const at::Tensor& first) {
  return first.dim() == 3 ? Form{true, first.size(0)} : Form{};
}

// A floating tensor on `device`: 2-D, or in a batched form 3-D with the batch size B of the call; `shape`
// names its expected 2-D shape in the message.
inline void matrix(const char* op, const char* name, const at::Tensor& t, const char* shape, c10::DeviceType device,
                   const Form& form = Form{}) {
  if (form.batched) {
    TORCH_CHECK(t.dim() == 3, "infovae::", op, ": ", name, " must be a 3-D tensor (B, ", shape + 1,
                " (the call is batched), got a ", t.dim(), "-D tensor of shape ", t.sizes());
    TORCH_CHECK(t.size(0) == form.batch, "infovae::", op, ": ", name, " must have the batch size B (", form.batch,
                ") of the first argument, got shape ", t.sizes());
  } else {
    TORCH_CHECK(t.dim() == 2, "infovae::", op, ": ", name, " must be a 2-D tensor ", shape, ", got a ", t.dim(),
                "-D tensor of shape ", t.sizes());
  }
  TORCH_CHECK(t.device().type() == device, "infovae::", op, ": ", name, " must be a ", c10::DeviceTypeName(device),
              " tensor, got ", t.device());
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, "infovae::", op,
              ": ", name, " must be float16, bfloat16, float32 or float64, got ", st);
}

// Same dtype and device as the first input `ref_name`.
inline void same_as(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                    const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "infovae::", op, ": ", name, " must have the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "infovae::", op, ": ", name, " must be on the device of ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

// size(dim) of t equals `want` (named `what` in the message).
inline void size(const char* op, const char* name, const at::Tensor& t, int64_t dim, int64_t want, const char* what) {
  TORCH_CHECK(t.size(dim) == want, "infovae::", op, ": ", name, " must have ", what, " (", want, "), got shape ",
              t.sizes());
}

inline KernelKind kernel(const char* op, c10::string_view kernel) {
  if (kernel == "rbf") return KernelKind::RBF;
  if (kernel == "imq") return KernelKind::IMQ;
  if (kernel == "laplacian") return KernelKind::LAPLACIAN;
  if (kernel == "energy") return KernelKind::ENERGY;
  if (kernel == "polynomial") return KernelKind::POLYNOMIAL;
  TORCH_CHECK(false, "infovae::", op, ": kernel must be \"rbf\", \"imq\", \"laplacian\", \"energy\" or \"polynomial\", got \"",
              std::string(kernel.data(), kernel.size()), "\"");
}

// params: float64 (n,) on the points' device, (B, n) in a batched form (one row per problem); n = 1..kMaxScales
// scales (rbf, imq, laplacian), 1 (energy) or 3 (polynomial: gamma, coef, degree). Values (finite, > 0, clamped
// by the op layer; an integer degree 1..kMaxDegree) are the implementation's to check where reading them is free.
inline void params(const char* op, const at::Tensor& params, const at::Tensor& points, KernelKind kind,
                   const Form& form) {
  if (form.batched) {
    TORCH_CHECK(params.dim() == 2 && params.size(0) == form.batch, "infovae::", op,
                ": params must be a 2-D tensor (B, n_scales) with one row per problem (B = ", form.batch,
                "), got shape ", params.sizes());
  } else {
    TORCH_CHECK(params.dim() == 1, "infovae::", op, ": params must be a 1-D tensor (n_scales,), got shape ",
                params.sizes());
  }
  TORCH_CHECK(params.device() == points.device(), "infovae::", op, ": params must be on the device of the points (",
              points.device(), "), got ", params.device());
  TORCH_CHECK(params.scalar_type() == at::kDouble, "infovae::", op, ": params must be float64, got ",
              params.scalar_type());
  TORCH_CHECK(valid_param_count(kind, params.size(-1)), "infovae::", op, ": params must hold ",
              kind == KernelKind::ENERGY       ? "1 value (energy)"
              : kind == KernelKind::POLYNOMIAL ? "3 values [gamma, coef, degree] (polynomial)"
                                               : "1 to 16 scales",
              form.batched ? " per row" : "", ", got ", params.size(-1));
}

// The whole argument list of each primitive; returns the kernel kind.
inline KernelKind gram_args(const at::Tensor& x, const at::Tensor& y, const at::Tensor& p, c10::string_view k,
                            c10::DeviceType device) {
  const char* op = "gram";
  const Form f = form_of(x);
  matrix(op, "x", x, "(N, d)", device, f);
  matrix(op, "y", y, "(M, d)", device, f);
  same_as(op, "y", y, "x", x);
  size(op, "y", y, f.axis(1), x.size(f.axis(1)), "the number of columns d of x");
  const KernelKind kind = kernel(op, k);
  params(op, p, x, kind, f);
  return kind;
}

inline KernelKind pair_reduce_args(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v,
                                   const std::optional<at::Tensor>& a, const at::Tensor& p, c10::string_view k,
                                   bool exclude_diagonal, c10::DeviceType device) {
  const char* op = "pair_reduce";
  const Form f = form_of(x);
  const int64_t rows = f.axis(0), cols = f.axis(1);
  matrix(op, "x", x, "(N, d)", device, f);
  matrix(op, "y", y, "(M, d)", device, f);
  matrix(op, "v", v, "(M, p)", device, f);
  same_as(op, "y", y, "x", x);
  same_as(op, "v", v, "x", x);
  size(op, "y", y, cols, x.size(cols), "the number of columns d of x");
  size(op, "v", v, rows, y.size(rows), "one row per row of y");
  if (a.has_value()) {
    matrix(op, "a", *a, "(N, p)", device, f);
    same_as(op, "a", *a, "x", x);
    size(op, "a", *a, rows, x.size(rows), "one row per row of x");
    size(op, "a", *a, cols, v.size(cols), "the number of columns p of v");
  }
  TORCH_CHECK(!exclude_diagonal || x.size(rows) == y.size(rows), "infovae::", op,
              ": exclude_diagonal requires x and y with the same number of rows, got ", x.size(rows), " and ",
              y.size(rows));
  const KernelKind kind = kernel(op, k);
  params(op, p, x, kind, f);
  return kind;
}

// stein_form (w (N, P)) and stein_moments (w (N,): w_dim 1): x and s (N, d), w, one floating dtype and
// device; params float64 [beta, c, sigma_1, ...] (1..kMaxScales sigmas) on the points' device; kernel
// "imq" or "rbf". The values (beta in (-1, 0), c > 0, sigmas > 0) are the op layer's to check
// (infovae_kernels/ops/ksd.py): a device implementation reads them on the device only.
inline SteinBase stein_args(const char* op, const at::Tensor& x, const at::Tensor& s, const at::Tensor& w,
                            int64_t w_dim, const at::Tensor& p, c10::string_view k, c10::DeviceType device) {
  matrix(op, "x", x, "(N, d)", device);
  matrix(op, "s", s, "(N, d)", device);
  same_as(op, "s", s, "x", x);
  TORCH_CHECK(s.sizes() == x.sizes(), "infovae::", op, ": s must have the shape of x ", x.sizes(), ", got ",
              s.sizes());
  TORCH_CHECK(w.dim() == w_dim, "infovae::", op, ": w must be ", w_dim == 2 ? "(N, P)" : "(N,)", ", got shape ",
              w.sizes());
  same_as(op, "w", w, "x", x);
  size(op, "w", w, 0, x.size(0), "one row per row of x");
  TORCH_CHECK(k == "imq" || k == "rbf", "infovae::", op, ": kernel must be \"imq\" or \"rbf\" (the Stein base), got \"",
              std::string(k.data(), k.size()), "\"");
  TORCH_CHECK(p.dim() == 1 && p.scalar_type() == at::kDouble && valid_stein_param_count(p.size(0)), "infovae::", op,
              ": params must be float64 [beta, c, sigma_1, ...] with 1 to ", kMaxScales, " sigmas, got ",
              p.scalar_type(), " of shape ", p.sizes());
  TORCH_CHECK(p.device() == x.device(), "infovae::", op, ": params must be on the device of the points (", x.device(),
              "), got ", p.device());
  return k == "rbf" ? SteinBase::RBF : SteinBase::IMQ;
}

inline KernelKind quad_form_args(const at::Tensor& z, const at::Tensor& w, const std::optional<at::Tensor>& a,
                                 const at::Tensor& p, c10::string_view k, c10::DeviceType device) {
  const char* op = "quad_form";
  const Form f = form_of(z);
  const int64_t rows = f.axis(0), cols = f.axis(1);
  matrix(op, "z", z, "(N, d)", device, f);
  matrix(op, "w", w, "(N, P)", device, f);
  same_as(op, "w", w, "z", z);
  size(op, "w", w, rows, z.size(rows), "one row per row of z");
  if (a.has_value()) {
    matrix(op, "a", *a, "(N, P)", device, f);
    same_as(op, "a", *a, "z", z);
    size(op, "a", *a, rows, z.size(rows), "one row per row of z");
    size(op, "a", *a, cols, w.size(cols), "the number of columns P of w");
  }
  const KernelKind kind = kernel(op, k);
  params(op, p, z, kind, f);
  return kind;
}

}  // namespace checks
}  // namespace infovae
