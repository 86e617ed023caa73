// The per-pair math of every C++ kernel, written once: the CPU engine (csrc/cpu, on SIMD vectors) and
// the CUDA kernels (csrc/cuda, on scalars) both call these functions. Torch-free; every function is
// INFOVAE_HD (host + device). Python twin: infovae_kernels/kernels.py (same formulas, same rules).
//
// Kernels are functions of the squared distance r2 = |x - y|^2, summed over scales s:
//   rbf: k = sum_s exp(-c_s r2),      g = sum_s 2 c_s exp(-c_s r2)      params: c_s = 1 / (2 sigma_s^2)
//   imq: k = sum_s C_s / (C_s + r2),  g = sum_s 2 (C_s / (C_s + r2))^2 / C_s   params: C_s = 2 d sigma_s^2
// g = -2 dk/dr2 is the gradient weight (grad_x k(x, y) = -g (x - y)); g := 0 where r2 == 0.
//
// API (T = float or double: the compute type; V = T, or a GCC vector of T on the CPU):
//   KernelParams<T> p = make_kernel_params<T>(kind, params, n_scales);
//       params: the float64 array the ops receive (already clamped by the op layer to keep p, 2 p and
//       2 / p finite in T); n_scales in 1..kMaxScales (check with valid_scale_count first).
//   V r2 = squared_distance(xn, yn, dot);        // |x|^2 + |y|^2 - 2 x.y, clamped at 0
//   acc  = add_squared_difference(acc, x_k, y_k); // the coordinate-difference form, one coordinate
//   V k  = kernel_value<K, NS>(p, r2, exp_fn);
//   kernel_value_and_weight<K, NS>(p, r2, exp_fn, k, g);        // k bitwise as kernel_value; g(0) = 0
//       K: KernelKind (compile time); NS: number of scales if known at compile time, else 0.
//       exp_fn: a callable V -> V, only ever called with arguments <= 0 (StdExp below; the CPU
//       engine's vector exp; a CUDA kernel may pass its own).
//   kernel_value_dyn(p, r2, exp_fn) / kernel_value_and_weight_dyn(p, r2, exp_fn, k, g): the same,
//       kind and scale count read at run time.
//   expansion_is_lossy<T>(max_norm2_x, max_norm2_y, lossy_kappa(kind, params, n_scales)):
//       true when a tile must compute r2 from coordinate differences (the contract's rule:
//       u * (max |x|^2 + max |y|^2) * kappa > 2^-12, u the unit roundoff of T). A backend may decide
//       per tile or once per call, and may use differences more often, never less.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define INFOVAE_HD __host__ __device__ __forceinline__
#define INFOVAE_UNROLL_SCALES _Pragma("unroll")
#else
#define INFOVAE_HD inline
#define INFOVAE_UNROLL_SCALES
#endif

namespace infovae {

constexpr int kMaxScales = 16;
constexpr double kLossyTolerance = 0x1p-12;

enum class KernelKind : int32_t { RBF = 0, IMQ = 1 };

INFOVAE_HD bool valid_scale_count(int64_t n_scales) { return n_scales >= 1 && n_scales <= kMaxScales; }

// Per-scale constants in the compute type, converted once per launch / call (trivially copyable: pass
// it by value to a CUDA kernel). a and b are what the pair loop multiplies with:
//   rbf: a_s = -c_s (exp argument r2 * a_s), b_s = 2 c_s     (g_s = b_s e_s, exact: 2 c_s is c_s * 2)
//   imq: a_s = C_s  (k_s = a_s / (a_s + r2)), b_s = 2 / C_s  (g_s = k_s^2 b_s)
// Scale loops run over the compile-time bound kMaxScales and stop at n_scales: with constant indices a
// GPU compiler keeps the arrays in the kernel-parameter bank instead of spilling them to local memory.
template <typename T>
struct KernelParams {
  KernelKind kind;
  int32_t n_scales;
  T a[kMaxScales];
  T b[kMaxScales];
};

template <typename T>
INFOVAE_HD KernelParams<T> make_kernel_params(KernelKind kind, const double* params, int n_scales) {
  KernelParams<T> p;
  p.kind = kind;
  p.n_scales = n_scales;
  for (int s = 0; s < kMaxScales; ++s) {
    const T c = s < n_scales ? static_cast<T>(params[s]) : T(1);
    p.a[s] = kind == KernelKind::RBF ? -c : c;
    p.b[s] = kind == KernelKind::RBF ? T(2) * c : T(2) / c;
  }
  return p;
}

// kappa of the lossy-distance rule: the inverse squared length scale of the narrowest scale.
INFOVAE_HD double lossy_kappa(KernelKind kind, const double* params, int n_scales) {
  double k = 0.0;
  for (int s = 0; s < n_scales; ++s) {
    const double v = kind == KernelKind::RBF ? params[s] : 1.0 / params[s];
    k = v > k ? v : k;
  }
  return k;
}

template <typename T>
INFOVAE_HD constexpr double unit_roundoff() {
  return sizeof(T) == 8 ? 0x1p-53 : 0x1p-24;
}

template <typename T>
INFOVAE_HD bool expansion_is_lossy(double max_norm2_x, double max_norm2_y, double kappa) {
  return unit_roundoff<T>() * (max_norm2_x + max_norm2_y) * kappa > kLossyTolerance;
}

// r2 from norms and dot product, clamped at +0 (cancellation can make it negative).
template <typename V>
INFOVAE_HD V squared_distance(const V& x_norm2, const V& y_norm2, const V& dot) {
  const V r2 = x_norm2 + y_norm2 - (dot + dot);
  const V zero{};
  return r2 > zero ? r2 : zero;
}

// One coordinate of r2 = sum_k (x_k - y_k)^2; exactly 0 for a point with itself.
template <typename V>
INFOVAE_HD V add_squared_difference(const V& acc, const V& x, const V& y) {
  const V t = x - y;
  return acc + t * t;
}

struct StdExp {
  template <typename T>
  INFOVAE_HD T operator()(T x) const {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
    return exp(x);
#else
    return std::exp(x);
#endif
  }
};

// One scale's kernel value k_s and gradient weight g_s (from k_s).
template <KernelKind K, typename V, typename T, class Exp>
INFOVAE_HD V scale_value(const KernelParams<T>& p, int s, const V& r2, const Exp& exp_fn) {
  if constexpr (K == KernelKind::RBF) {
    return exp_fn(r2 * p.a[s]);
  } else {
    return p.a[s] / (p.a[s] + r2);
  }
}

template <KernelKind K, typename V, typename T>
INFOVAE_HD V scale_weight(const KernelParams<T>& p, int s, const V& ks) {
  if constexpr (K == KernelKind::RBF) {
    return ks * p.b[s];
  } else {
    return ks * ks * p.b[s];
  }
}

template <KernelKind K, int NS, typename V, typename T, class Exp>
INFOVAE_HD V kernel_value(const KernelParams<T>& p, const V& r2, const Exp& exp_fn) {
  const int ns = NS > 0 ? NS : p.n_scales;
  V k = scale_value<K>(p, 0, r2, exp_fn);
  INFOVAE_UNROLL_SCALES
  for (int s = 1; s < kMaxScales; ++s) {
    if (s >= ns) break;
    k += scale_value<K>(p, s, r2, exp_fn);
  }
  return k;
}

template <KernelKind K, int NS, typename V, typename T, class Exp>
INFOVAE_HD void kernel_value_and_weight(const KernelParams<T>& p, const V& r2, const Exp& exp_fn, V& k, V& g) {
  const int ns = NS > 0 ? NS : p.n_scales;
  V ks = scale_value<K>(p, 0, r2, exp_fn);
  k = ks;
  g = scale_weight<K>(p, 0, ks);
  INFOVAE_UNROLL_SCALES
  for (int s = 1; s < kMaxScales; ++s) {
    if (s >= ns) break;
    ks = scale_value<K>(p, s, r2, exp_fn);
    k += ks;
    g += scale_weight<K>(p, s, ks);
  }
  const V zero{};
  g = r2 == zero ? zero : g;
}

template <typename V, typename T, class Exp>
INFOVAE_HD V kernel_value_dyn(const KernelParams<T>& p, const V& r2, const Exp& exp_fn) {
  return p.kind == KernelKind::RBF ? kernel_value<KernelKind::RBF, 0>(p, r2, exp_fn)
                                   : kernel_value<KernelKind::IMQ, 0>(p, r2, exp_fn);
}

template <typename V, typename T, class Exp>
INFOVAE_HD void kernel_value_and_weight_dyn(const KernelParams<T>& p, const V& r2, const Exp& exp_fn, V& k, V& g) {
  if (p.kind == KernelKind::RBF)
    kernel_value_and_weight<KernelKind::RBF, 0>(p, r2, exp_fn, k, g);
  else
    kernel_value_and_weight<KernelKind::IMQ, 0>(p, r2, exp_fn, k, g);
}

}  // namespace infovae
