// Per-pair math shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels. Torch-free.
//
// Kernels are functions of the squared distance r2 = |x - y|^2, summed over scales s:
//   rbf: k = sum_s exp(-c_s r2),   c_s = 1 / (2 sigma_s^2),   g = -2 dk/dr2 = sum_s 2 c_s exp(-c_s r2)
//   imq: k = sum_s C_s / (C_s + r2), C_s = 2 d sigma_s^2,     g = -2 dk/dr2 = sum_s 2 k_s^2 / C_s
// g is the "gradient weight": grad_x k(x, y) = -g (x - y).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define INFOVAE_HD __host__ __device__ __forceinline__
#else
#define INFOVAE_HD inline
#endif

namespace infovae {

constexpr int kMaxScales = 16;

enum class KernelKind : int32_t { RBF = 0, IMQ = 1 };

// Host-built description of the (multi-scale) kernel; trivially copyable, passed by value to kernels.
struct KernelSpec {
  KernelKind kind;
  int32_t n_scales;
  double param[kMaxScales];  // rbf: c_s = 1/(2 sigma_s^2); imq: C_s = 2 d sigma_s^2
};

// Build a KernelSpec from bandwidths. Returns false when there are too many scales.
inline bool make_kernel_spec(KernelKind kind, const double* sigmas, int n_scales, int64_t d,
                             KernelSpec* spec) {
  if (n_scales < 1 || n_scales > kMaxScales) return false;
  spec->kind = kind;
  spec->n_scales = n_scales;
  for (int s = 0; s < n_scales; ++s) {
    const double s2 = sigmas[s] * sigmas[s];
    spec->param[s] = kind == KernelKind::RBF ? 1.0 / (2.0 * s2) : 2.0 * static_cast<double>(d) * s2;
  }
  for (int s = n_scales; s < kMaxScales; ++s) spec->param[s] = 0.0;
  return true;
}

// Squared distance from norms and dot product, clamped at 0 (cancellation can make it negative).
template <typename T>
INFOVAE_HD T squared_distance(T x_norm2, T y_norm2, T dot) {
  const T r2 = x_norm2 + y_norm2 - T(2) * dot;
  return r2 > T(0) ? r2 : T(0);
}

// Kernel value k(r2).
template <typename T>
INFOVAE_HD T kernel_value(const KernelSpec& spec, T r2) {
  T k = T(0);
  if (spec.kind == KernelKind::RBF) {
    for (int s = 0; s < spec.n_scales; ++s) k += exp(-static_cast<T>(spec.param[s]) * r2);
  } else {
    for (int s = 0; s < spec.n_scales; ++s) {
      const T C = static_cast<T>(spec.param[s]);
      k += C / (C + r2);
    }
  }
  return k;
}

// Kernel value k(r2) and gradient weight g(r2) = -2 dk/dr2 in one evaluation.
template <typename T>
INFOVAE_HD void kernel_value_and_weight(const KernelSpec& spec, T r2, T* k_out, T* g_out) {
  T k = T(0), g = T(0);
  if (spec.kind == KernelKind::RBF) {
    for (int s = 0; s < spec.n_scales; ++s) {
      const T c = static_cast<T>(spec.param[s]);
      const T e = exp(-c * r2);
      k += e;
      g += T(2) * c * e;
    }
  } else {
    for (int s = 0; s < spec.n_scales; ++s) {
      const T C = static_cast<T>(spec.param[s]);
      const T ks = C / (C + r2);
      k += ks;
      g += T(2) * ks * ks / C;
    }
  }
  *k_out = k;
  *g_out = g;
}

// Kernel parameters converted once to the compute type T (float or double). kernel_value /
// kernel_value_and_weight above convert spec.param[s] from double on every call; inside a pair loop
// that is one double->float conversion per pair and scale (an FP64-pipe instruction on GPUs, a
// cvtsd2ss on CPUs). Convert once per kernel launch / thread with cast_params and evaluate with the
// overloads below: the same formulas, term for term (tests/cpp/test_pair_math.cpp pins them together).
// Scale loops below run over the compile-time bound kMaxScales and stop at n_scales: with constant
// indices a GPU compiler keeps param[] in the kernel-parameter bank instead of copying it to local
// memory (a dynamically indexed by-value kernel argument is spilled to the stack).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define INFOVAE_UNROLL_SCALES _Pragma("unroll")
#else
#define INFOVAE_UNROLL_SCALES
#endif

template <typename T>
struct KernelParams {
  KernelKind kind;
  int32_t n_scales;
  T param[kMaxScales];
};

template <typename T>
INFOVAE_HD KernelParams<T> cast_params(const KernelSpec& spec) {
  KernelParams<T> p;
  p.kind = spec.kind;
  p.n_scales = spec.n_scales;
  for (int s = 0; s < kMaxScales; ++s) p.param[s] = static_cast<T>(spec.param[s]);
  return p;
}

template <typename T>
INFOVAE_HD T kernel_value(const KernelParams<T>& p, T r2) {
  T k = T(0);
  if (p.kind == KernelKind::RBF) {
    INFOVAE_UNROLL_SCALES
    for (int s = 0; s < kMaxScales; ++s) {
      if (s >= p.n_scales) break;
      k += exp(-p.param[s] * r2);
    }
  } else {
    INFOVAE_UNROLL_SCALES
    for (int s = 0; s < kMaxScales; ++s) {
      if (s >= p.n_scales) break;
      const T C = p.param[s];
      k += C / (C + r2);
    }
  }
  return k;
}

template <typename T>
INFOVAE_HD void kernel_value_and_weight(const KernelParams<T>& p, T r2, T* k_out, T* g_out) {
  T k = T(0), g = T(0);
  if (p.kind == KernelKind::RBF) {
    INFOVAE_UNROLL_SCALES
    for (int s = 0; s < kMaxScales; ++s) {
      if (s >= p.n_scales) break;
      const T c = p.param[s];
      const T e = exp(-c * r2);
      k += e;
      g += T(2) * c * e;
    }
  } else {
    INFOVAE_UNROLL_SCALES
    for (int s = 0; s < kMaxScales; ++s) {
      if (s >= p.n_scales) break;
      const T C = p.param[s];
      const T ks = C / (C + r2);
      k += ks;
      g += T(2) * ks * ks / C;
    }
  }
  *k_out = k;
  *g_out = g;
}

}  // namespace infovae
