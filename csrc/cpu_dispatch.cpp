// The CPU ops _C registers (ops.cpp) forward to the variant installed at import: csrc/cpu compiled for
// one capability (variant.h). Which capabilities this CPU can run is read here, from cpuid (libgcc's
// __builtin_cpu_supports, which also checks that the OS saves the vector registers), never from a
// compile flag: this file is built for the baseline like the rest of _C.
#include <c10/util/Exception.h>

#include <atomic>
#include <string>
#include <vector>

#include "cpu/variant.h"
#include "cpu_dispatch.h"
#include "ops.h"

namespace infovae {
namespace cpu {
namespace {

std::atomic<const Variant*> installed{nullptr};

const Variant& current() {
  const Variant* v = installed.load(std::memory_order_acquire);
  TORCH_CHECK(v != nullptr,
              "infovae: no CPU kernels are installed; `import infovae_kernels` selects them "
              "(infovae_kernels/backends/native.py)");
  return *v;
}

}  // namespace

std::vector<std::string> supported_capabilities() {
  std::vector<std::string> out = {"baseline"};
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
#if !defined(__clang__) && __GNUC__ >= 12
  const bool v3 = __builtin_cpu_supports("x86-64-v3"), v4 = __builtin_cpu_supports("x86-64-v4");
#else  // the levels' defining features (older compilers know no level names)
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
#endif
  if (v3) out.push_back("avx2");
  if (v3 && v4) out.push_back("avx512");
#endif
  return out;
}

void install(const Variant* variant) {
  TORCH_CHECK(variant != nullptr, "infovae: install(nullptr)");
  TORCH_CHECK(variant->abi == kVariantAbi, "infovae: the CPU variant '", variant->capability,
              "' was built with another table layout (abi ", variant->abi, ", this _C expects ", kVariantAbi,
              "): a stale module from an older build; rebuild the package");
  installed.store(variant, std::memory_order_release);
}

const Variant* installed_variant() { return installed.load(std::memory_order_acquire); }

at::Tensor gram(const at::Tensor& x, const at::Tensor& y, const at::Tensor& params, c10::string_view kernel,
                bool derivative) {
  return current().gram(x, y, params, kernel, derivative);
}

std::tuple<at::Tensor, at::Tensor> pair_reduce(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v,
                                               const std::optional<at::Tensor>& a, const at::Tensor& params,
                                               c10::string_view kernel, bool exclude_diagonal) {
  return current().pair_reduce(x, y, v, a, params, kernel, exclude_diagonal);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quad_form(const at::Tensor& z, const at::Tensor& w,
                                                         const std::optional<at::Tensor>& a, const at::Tensor& params,
                                                         c10::string_view kernel, bool exclude_diagonal,
                                                         bool row_sums) {
  return current().quad_form(z, w, a, params, kernel, exclude_diagonal, row_sums);
}

at::Tensor stein_form(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                      c10::string_view kernel, bool exclude_diagonal) {
  return current().stein_form(x, s, w, params, kernel, exclude_diagonal);
}

at::Tensor stein_moments(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, const at::Tensor& params,
                         c10::string_view kernel, bool exclude_diagonal) {
  return current().stein_moments(x, s, w, params, kernel, exclude_diagonal);
}

std::tuple<at::Tensor, at::Tensor> stein_thin(const at::Tensor& x, const at::Tensor& s, const at::Tensor& objective,
                                              const at::Tensor& params, c10::string_view kernel, int64_t steps) {
  return current().stein_thin(x, s, objective, params, kernel, steps);
}

}  // namespace cpu
}  // namespace infovae
