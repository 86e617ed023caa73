// Declarations of the per-device implementations of the infovae:: ops (schemas in ops.cpp).
//
// Contract, shared with the plain-torch reference (infovae_kernels/backends/reference.py, which is
// the test oracle) and the Triton backend:
//   gram(x (N,d), y (M,d), params, kernel, derivative) -> (N,M) in x.dtype: k(r2_ij), or g(r2_ij)
//   pair_reduce(x (N,d), y (M,d), v (M,p), a (N,p)?, params, kernel, exclude_diagonal)
//       -> S (N,p) float64, S_i = sum_j k_ij v_j
//          G (N,d) float64, G_i = sum_j g_ij (a_i . v_j) (x_i - y_j)   (shape (0,d) when a is None)
//   quad_form(z (N,d), w (N,P), a (N,P)?, params, kernel, exclude_diagonal, row_sums)
//       -> q (P,) float64, q_p = sum_ij w_ip k_ij w_jp
//          S (N,P) float64, S_i = sum_j k_ij w_j                          (shape (0,P) unless row_sums)
//          G (N,d) float64, G_i = sum_j g_ij (a_i . w_j) (z_i - z_j)     (shape (0,d) when a is None)
//       one symmetric sweep: each unordered pair evaluated once, its S and G terms added to both rows;
//       q is bitwise the same whether or not S and G are asked for.
// params: float64 (n_scales,), 1 <= n_scales <= kMaxScales, on the points' device, already clamped to
// the compute type's range (rbf: c_s, imq: C_s; see infovae/pair_math.h). The points arrive centred
// and scaled by the op layer; the primitives do neither. exclude_diagonal drops the pairs i == j
// (pair_reduce: requires N == M). x, y, v, a, z, w share one floating dtype and device; any strides.
// float16/bfloat16/float32 compute per pair in float32 and combine partials in float64 in a fixed order
// (no atomics: bitwise reproducible, independent of thread count); float64 computes in float64.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>

namespace infovae {

#define INFOVAE_DECLARE_OPS(NS)                                                                       \
  namespace NS {                                                                                      \
  at::Tensor gram(const at::Tensor& x, const at::Tensor& y, const at::Tensor& params,                 \
                  c10::string_view kernel, bool derivative);                                          \
  std::tuple<at::Tensor, at::Tensor> pair_reduce(const at::Tensor& x, const at::Tensor& y,             \
                                                 const at::Tensor& v,                                  \
                                                 const std::optional<at::Tensor>& a,                   \
                                                 const at::Tensor& params, c10::string_view kernel,    \
                                                 bool exclude_diagonal);                               \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> quad_form(                                           \
      const at::Tensor& z, const at::Tensor& w, const std::optional<at::Tensor>& a,                   \
      const at::Tensor& params, c10::string_view kernel, bool exclude_diagonal, bool row_sums);       \
  }

INFOVAE_DECLARE_OPS(cpu)

// stein_form(x (N,d), s (N,d), w (N,P), params [beta, c, sigma_1..], kernel "imq" | "rbf", exclude_diagonal)
//     -> q (P,) float64, q_p = sum_ij w_ip u(x_i, x_j) w_jp, u the Langevin Stein kernel of the base
//        (csrc/cpu/stein.cpp; reference: kernels.stein_kernel). CPU (params on the CPU) and CUDA (params
//        on the points' device; csrc/cuda/pair_kernels.cuh).
namespace cpu {
at::Tensor stein_form(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                      c10::string_view kernel, bool exclude_diagonal);
// stein_moments(x, s, w (N,), params, kernel, exclude_diagonal) -> R (N, 4, 1 + 2d) float64,
//     R[i][k] = sum_j M^k_ij [w_j, w_j x_j, w_j s_j] in the columns the gradient reads (stein.cpp;
//     the others 0), M^k = U, phi, phi', A: what the gradient
//     of w^T U w in x, s and w is made of (infovae_kernels/ops/ksd.py combines them).
//     CPU and CUDA (as stein_form).
at::Tensor stein_moments(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                         c10::string_view kernel, bool exclude_diagonal);
// stein_thin(x, s, objective (N,), params, kernel, steps) -> (chosen (steps,) int64, objective (N,)):
//     steps steps of greedy Stein thinning from `objective` (infovae_kernels/ops/stein_thinning.py, which
//     standardises x and s): each picks the objective's argmin j and adds 2 u(x_i, x_j) to entry i.
std::tuple<at::Tensor, at::Tensor> stein_thin(const at::Tensor& x, const at::Tensor& s, const at::Tensor& objective,
                                              const at::Tensor& params, c10::string_view kernel, int64_t steps);
}
#ifdef INFOVAE_WITH_CUDA
INFOVAE_DECLARE_OPS(cuda)
namespace cuda {
at::Tensor stein_form(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                      c10::string_view kernel, bool exclude_diagonal);
at::Tensor stein_moments(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                         c10::string_view kernel, bool exclude_diagonal);
}
#endif

#undef INFOVAE_DECLARE_OPS

}  // namespace infovae
