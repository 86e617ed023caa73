// What one CPU variant module (_cpu_<capability>: csrc/cpu compiled for one capability, variant_module.cpp)
// hands to _C, whose registered CPU ops (csrc/cpu_dispatch.cpp) call the variant chosen at import
// (infovae_kernels/backends/native.py). Included by both sides; it names no capability itself.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace infovae {
namespace cpu {

using GramFn = at::Tensor(const at::Tensor& x, const at::Tensor& y, const at::Tensor& params, c10::string_view kernel,
                          bool derivative);
using PairReduceFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v,
                                                        const std::optional<at::Tensor>& a, const at::Tensor& params,
                                                        c10::string_view kernel, bool exclude_diagonal);
using QuadFormFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor& z, const at::Tensor& w,
                                                                  const std::optional<at::Tensor>& a,
                                                                  const at::Tensor& params, c10::string_view kernel,
                                                                  bool exclude_diagonal, bool row_sums);
using SteinFormFn = at::Tensor(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                               c10::string_view kernel, bool exclude_diagonal);
using SteinMomentsFn = SteinFormFn;
using SteinThinFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& x, const at::Tensor& s,
                                                       const at::Tensor& objective, const at::Tensor& params,
                                                       c10::string_view kernel, int64_t steps);

// Bumped whenever Variant or the functions' signatures change: _C refuses a variant of another layout
// (a stale module left by an older in-place build).
inline constexpr int kVariantAbi = 4;
inline constexpr const char* kVariantCapsule = "infovae_kernels.cpu_variant";

struct Variant {
  int abi;                 // kVariantAbi of the build that made it
  const char* capability;  // "baseline", "avx2", "avx512" or "native"
  int vector_bytes;        // the engine's SIMD width (engine_api.h's INFOVAE_VBYTES)
  GramFn* gram;
  PairReduceFn* pair_reduce;
  QuadFormFn* quad_form;
  SteinFormFn* stein_form;
  SteinMomentsFn* stein_moments;
  SteinThinFn* stein_thin;
};

#ifdef INFOVAE_CPU_CAPABILITY
inline namespace INFOVAE_CPU_CAPABILITY {
// Defined in cpu_ops.cpp (the stein_* functions in stein.cpp).
GramFn gram;
PairReduceFn pair_reduce;
QuadFormFn quad_form;
SteinFormFn stein_form;
SteinMomentsFn stein_moments;
SteinThinFn stein_thin;
}  // namespace INFOVAE_CPU_CAPABILITY
#endif

}  // namespace cpu
}  // namespace infovae
