// Declarations of the per-device implementations of the infovae:: ops (schemas in ops.cpp).
//
// Contract, shared with the plain-torch reference (infovae_kernels/backends/reference.py):
//   rbf_gram(x (N,d), y (M,d), sigmas)            -> K (N,M), x.dtype, K_ij = sum_s exp(-r2_ij/(2 sigma_s^2))
//   pair_reduce(x (N,d), y (M,d), v (M,p), a (N,p)?, sigmas, kernel, exclude_diagonal)
//       -> S (N,p) float64, S_i = sum_j k_ij v_j
//          G (N,d) float64, G_i = sum_j g_ij (a_i . v_j) (x_i - y_j)   (shape (0,d) when a is None)
//       exclude_diagonal (requires N == M, x and y the same set): pairs with i == j are skipped.
//   quad_form(z (N,d), w (N,P), sigmas, kernel, exclude_diagonal) -> q (P,) float64,
//       q_p = sum_ij w_ip k_ij w_jp, each off-diagonal tile of the symmetric K computed once.
// x, y, v, a, z, w share one floating dtype (float16, bfloat16, float32 or float64) and device; any strides.
// float16/bfloat16/float32 compute per pair in float32 and combine partials in float64 in a fixed order;
// float64 computes in float64.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>

namespace infovae {

#define INFOVAE_DECLARE_OPS(NS)                                                                   \
  namespace NS {                                                                                  \
  at::Tensor rbf_gram(const at::Tensor& x, const at::Tensor& y, at::ArrayRef<double> sigmas);      \
  std::tuple<at::Tensor, at::Tensor> pair_reduce(const at::Tensor& x, const at::Tensor& y,         \
                                                 const at::Tensor& v,                              \
                                                 const std::optional<at::Tensor>& a,               \
                                                 at::ArrayRef<double> sigmas,                      \
                                                 c10::string_view kernel, bool exclude_diagonal);  \
  at::Tensor quad_form(const at::Tensor& z, const at::Tensor& w, at::ArrayRef<double> sigmas,      \
                       c10::string_view kernel, bool exclude_diagonal);                            \
  }

INFOVAE_DECLARE_OPS(cpu)
#ifdef INFOVAE_WITH_CUDA
INFOVAE_DECLARE_OPS(cuda)
#endif

#undef INFOVAE_DECLARE_OPS

}  // namespace infovae
