// The dot kernel (polynomial) at large d on BLAS GEMMs (dot_gemm.cpp): per tile of B x B pairs the dot
// products come from one GEMM (at::mm on tile views, single-threaded inside at::parallel_for), then the
// per-pair math of infovae/pair_math.h and the reductions; the gradient's sums over j (W Z_J) are GEMMs
// too. Above kMinD the engine's register-blocked dot micro-kernel (~60% of FMA peak) loses to the BLAS
// GEMM; below it the per-tile overheads (calls, the float64 accumulation of each tile's B x d gradient
// block) do not pay. Same contract, same determinism rule as the engine (engine_impl.h): tile shapes a
// function of the problem size only, every partial combined in float64 in a fixed order, no
// accumulator shared between threads.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "infovae/pair_math.h"

namespace infovae {
namespace cpu {
inline namespace INFOVAE_CPU_CAPABILITY {
namespace dotgemm {

// Measured (2 threads and 1, N = 4096 + 4096 pooled, float32, quad_form): value only the two tie from
// d = 256 to 1024 and this path is 13% faster at 2048; value + G it is 15-20% faster from d = 512 on
// (d = 1024: 775 vs 959 ms at 2 threads) and ties below.
constexpr int64_t kMinD = 512;

inline bool applies(KernelKind kind, int64_t d) { return kind == KernelKind::POLYNOMIAL && d >= kMinD; }

// x, y: any floating dtype (float16 / bfloat16 compute in float32). Returns K or h in the compute dtype.
at::Tensor gram(const at::Tensor& x, const at::Tensor& y, const std::vector<double>& params, bool derivative);

// S (N, p) and G (N, d) (or (0, d)): float64, zero on entry.
void pair_reduce(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v, const std::optional<at::Tensor>& a,
                 const std::vector<double>& params, bool exclude_diagonal, at::Tensor& S, at::Tensor& G);

// q (P,), S (N, P) or (0, P), G (N, d) or (0, d): float64, zero on entry.
void quad_form(const at::Tensor& z, const at::Tensor& w, const std::optional<at::Tensor>& a,
               const std::vector<double>& params, bool exclude_diagonal, at::Tensor& q, at::Tensor& S, at::Tensor& G);

}  // namespace dotgemm
}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae
