// The per-pair math of every C++ kernel, written once: the CPU engine (csrc/cpu, on SIMD vectors) and
// the CUDA kernels (csrc/cuda, on scalars) both call these functions. Torch-free; every function is
// INFOVAE_HD (host + device). Python twin: infovae_kernels/kernels.py (same formulas, same rules).
//
// Distance kernels are functions of the squared distance r2 = |x - y|^2 (r = sqrt(r2)), summed over scales s:
//   rbf:       k = sum_s exp(-c_s r2),      g = sum_s 2 c_s exp(-c_s r2)      params: c_s = 1 / (2 sigma_s^2)
//   imq:       k = sum_s C_s / (C_s + r2),  g = sum_s 2 (C_s / (C_s + r2))^2 / C_s   params: C_s = 2 d sigma_s^2
//   laplacian: k = sum_s exp(-c_s r),       g = sum_s c_s exp(-c_s r) / r     params: c_s = 1 / sigma_s
//   energy:    k = -p r,                    g = p / r                          params: [p] (the data scale)
// g = -2 dk/dr2 is the gradient weight (grad_x k(x, y) = -g (x - y)); g := 0 where r2 == 0 (for laplacian
// and energy that is the subgradient 0 at the kink). laplacian and energy always take r2 from coordinate
// differences (never the expansion), so that r is exact near 0.
// The dot kernel is a function of t = gamma x.y + coef:
//   polynomial: k = t^n,  h = n gamma t^(n-1) (grad_x k(x, y) = h y)   params: [gamma, coef, n], n in 1..16
// ("linear" is polynomial [gamma, 0, 1] in the op layer). It is not translation invariant: its gradient
// term is -h (a . v) y_j in G, not g (a . v)(x_i - y_j), and its points are not centred.
//
// API (T = float or double: the compute type; V = T, or a GCC vector of T on the CPU):
//   KernelParams<T> p = make_kernel_params<T>(kind, params, n_scales);
//       params: the float64 array the ops receive (already clamped by the op layer to keep p, 2 p and
//       2 / p finite in T); n_scales in 1..kMaxScales (check with valid_scale_count first).
//   V r2 = squared_distance(xn, yn, dot);        // |x|^2 + |y|^2 - 2 x.y, clamped at 0
//   acc  = add_squared_difference(acc, x_k, y_k); // the coordinate-difference form, one coordinate
//   V k  = kernel_value<K, NS>(p, r2, exp_fn[, sqrt_fn]);
//   kernel_value_and_weight<K, NS>(p, r2, exp_fn, k, g[, sqrt_fn]);  // k bitwise as kernel_value; g(0) = 0
//       K: a distance KernelKind (compile time); NS: number of scales if known at compile time, else 0.
//       exp_fn: a callable V -> V, only ever called with arguments <= 0 (StdExp below; the CPU
//       engine's vector exp; a CUDA kernel may pass its own). sqrt_fn: V -> V (StdSqrt by default; the
//       CPU engine passes its vector sqrt), used by laplacian and energy only.
//   kernel_value_dyn(p, r2, exp_fn[, sqrt_fn]) / kernel_value_and_weight_dyn(p, r2, exp_fn, k, g[, sqrt_fn]):
//       the same for the distance kernels, kind and scale count read at run time.
//   V k = dot_kernel_value(p, dot);  dot_kernel_value_and_weight(p, dot, k, h);  // polynomial, dot = x.y
//   is_dot_kernel(kind), always_differences(kind), valid_param_count(kind, n): see below.
//   SteinParams<T> sp = make_stein_params<T>(base, params, n_params);  // params: [beta, c, sigma_1, ..]
//   stein_radial<ORDER>(sp, r2, exp_fn, rad[, pow_fn, rsqrt_fn]);       // rad[k] = phi^(k)(r2), k <= ORDER
//   V u = stein_value(rad, r2, ss, cross, 2 d);  V A = stein_moment_weight(rad, r2, ss, cross, 2 d);
//       the Langevin Stein kernel of a radial base (imq, rbf): "Stein kernels" at the end.
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

enum class KernelKind : int32_t { RBF = 0, IMQ = 1, LAPLACIAN = 2, ENERGY = 3, POLYNOMIAL = 4 };

constexpr int kMaxDegree = 16;

INFOVAE_HD bool valid_scale_count(int64_t n_scales) { return n_scales >= 1 && n_scales <= kMaxScales; }

// polynomial: a function of x.y (no distances, no norms, no centring); the others: of r2.
INFOVAE_HD constexpr bool is_dot_kernel(KernelKind kind) { return kind == KernelKind::POLYNOMIAL; }

// laplacian and energy: r2 from coordinate differences on every tile (their r = sqrt(r2) near 0 would
// carry the expansion's absolute error sqrt(u) |x|).
INFOVAE_HD constexpr bool always_differences(KernelKind kind) {
  return kind == KernelKind::LAPLACIAN || kind == KernelKind::ENERGY;
}

// Length of params: 1..kMaxScales scales for rbf, imq, laplacian; exactly 1 for energy; 3 for polynomial.
INFOVAE_HD bool valid_param_count(KernelKind kind, int64_t n) {
  if (kind == KernelKind::ENERGY) return n == 1;
  if (kind == KernelKind::POLYNOMIAL) return n == 3;
  return valid_scale_count(n);
}

// The polynomial degree is an integer 1..kMaxDegree stored as a float64 param.
INFOVAE_HD bool valid_degree(double degree) {
  return degree >= 1.0 && degree <= kMaxDegree && degree == static_cast<double>(static_cast<int>(degree));
}

// Per-scale constants in the compute type, converted once per launch / call (trivially copyable: pass
// it by value to a CUDA kernel). a and b are what the pair loop multiplies with:
//   rbf:        a_s = -c_s (exp argument r2 * a_s), b_s = 2 c_s   (g_s = b_s e_s, exact: 2 c_s is c_s * 2)
//   imq:        a_s = C_s  (k_s = a_s / (a_s + r2)), b_s = 2 / C_s (g_s = k_s^2 b_s)
//   laplacian:  a_s = -c_s (exp argument r * a_s),  b_s = c_s     (g = sum_s b_s e_s / r)
//   energy:     a_0 = -p   (k = a_0 r),             b_0 = p       (g = b_0 / r)
//   polynomial: a_0 = gamma, a_1 = coef, degree = n, b_0 = n gamma (h = b_0 t^(n-1))
// n_scales is 1 for energy and polynomial.
// Scale loops run over the compile-time bound kMaxScales and stop at n_scales: with constant indices a
// GPU compiler keeps the arrays in the kernel-parameter bank instead of spilling them to local memory.
template <typename T>
struct KernelParams {
  KernelKind kind;
  int32_t n_scales;
  int32_t degree;
  T a[kMaxScales];
  T b[kMaxScales];
};

template <typename T>
INFOVAE_HD KernelParams<T> make_kernel_params(KernelKind kind, const double* params, int n_scales) {
  KernelParams<T> p;
  p.kind = kind;
  p.n_scales = is_dot_kernel(kind) ? 1 : n_scales;
  p.degree = 1;
  for (int s = 0; s < kMaxScales; ++s) {
    const T c = s < n_scales ? static_cast<T>(params[s]) : T(1);
    switch (kind) {
      case KernelKind::RBF: p.a[s] = -c, p.b[s] = T(2) * c; break;
      case KernelKind::IMQ: p.a[s] = c, p.b[s] = T(2) / c; break;
      case KernelKind::LAPLACIAN:
      case KernelKind::ENERGY: p.a[s] = -c, p.b[s] = c; break;
      case KernelKind::POLYNOMIAL: p.a[s] = c, p.b[s] = T(1); break;
    }
  }
  if (kind == KernelKind::POLYNOMIAL) {
    p.degree = static_cast<int32_t>(params[2]);
    p.b[0] = static_cast<T>(params[2] * params[0]);
  }
  return p;
}

// kappa of the lossy-distance rule: the inverse squared length scale of the narrowest scale (rbf, imq;
// the other kernels never use the rule: see always_differences and is_dot_kernel).
INFOVAE_HD double lossy_kappa(KernelKind kind, const double* params, int n_scales) {
  if (kind != KernelKind::RBF && kind != KernelKind::IMQ) return 0.0;
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

struct StdSqrt {
  template <typename T>
  INFOVAE_HD T operator()(T x) const {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
    return sqrt(x);
#else
    return std::sqrt(x);
#endif
  }
};

// The argument every scale of a distance kernel reads: r2 (rbf, imq) or r = sqrt(r2) (laplacian, energy).
template <KernelKind K, typename V, class Sqrt>
INFOVAE_HD V distance_argument(const V& r2, const Sqrt& sqrt_fn) {
  if constexpr (K == KernelKind::LAPLACIAN || K == KernelKind::ENERGY) {
    return sqrt_fn(r2);
  } else {
    return r2;
  }
}

// One scale's kernel value k_s (from the distance argument u) and its gradient weight term (from k_s):
// g = sum of the terms, divided by r for laplacian and energy.
template <KernelKind K, typename V, typename T, class Exp>
INFOVAE_HD V scale_value(const KernelParams<T>& p, int s, const V& u, const Exp& exp_fn) {
  static_assert(K != KernelKind::POLYNOMIAL, "the polynomial kernel is a dot kernel: dot_kernel_value");
  if constexpr (K == KernelKind::RBF || K == KernelKind::LAPLACIAN) {
    return exp_fn(u * p.a[s]);
  } else if constexpr (K == KernelKind::IMQ) {
    return p.a[s] / (p.a[s] + u);
  } else {
    return u * p.a[s];
  }
}

template <KernelKind K, typename V, typename T>
INFOVAE_HD V scale_weight(const KernelParams<T>& p, int s, const V& ks) {
  if constexpr (K == KernelKind::RBF || K == KernelKind::LAPLACIAN) {
    return ks * p.b[s];
  } else if constexpr (K == KernelKind::IMQ) {
    return ks * ks * p.b[s];
  } else {
    return V{} + p.b[s];
  }
}

template <KernelKind K, int NS, typename V, typename T, class Exp, class Sqrt = StdSqrt>
INFOVAE_HD V kernel_value(const KernelParams<T>& p, const V& r2, const Exp& exp_fn, const Sqrt& sqrt_fn = Sqrt{}) {
  const int ns = NS > 0 ? NS : p.n_scales;
  const V u = distance_argument<K>(r2, sqrt_fn);
  V k = scale_value<K>(p, 0, u, exp_fn);
  INFOVAE_UNROLL_SCALES
  for (int s = 1; s < kMaxScales; ++s) {
    if (s >= ns) break;
    k += scale_value<K>(p, s, u, exp_fn);
  }
  return k;
}

template <KernelKind K, int NS, typename V, typename T, class Exp, class Sqrt = StdSqrt>
INFOVAE_HD void kernel_value_and_weight(const KernelParams<T>& p, const V& r2, const Exp& exp_fn, V& k, V& g,
                                        const Sqrt& sqrt_fn = Sqrt{}) {
  const int ns = NS > 0 ? NS : p.n_scales;
  const V u = distance_argument<K>(r2, sqrt_fn);
  V ks = scale_value<K>(p, 0, u, exp_fn);
  k = ks;
  g = scale_weight<K>(p, 0, ks);
  INFOVAE_UNROLL_SCALES
  for (int s = 1; s < kMaxScales; ++s) {
    if (s >= ns) break;
    ks = scale_value<K>(p, s, u, exp_fn);
    k += ks;
    g += scale_weight<K>(p, s, ks);
  }
  if constexpr (K == KernelKind::LAPLACIAN || K == KernelKind::ENERGY) g = g / u;  // inf at u == 0: masked next
  const V zero{};
  g = r2 == zero ? zero : g;
}

template <typename V, typename T, class Exp, class Sqrt = StdSqrt>
INFOVAE_HD V kernel_value_dyn(const KernelParams<T>& p, const V& r2, const Exp& exp_fn, const Sqrt& sqrt_fn = Sqrt{}) {
  switch (p.kind) {
    case KernelKind::IMQ: return kernel_value<KernelKind::IMQ, 0>(p, r2, exp_fn, sqrt_fn);
    case KernelKind::LAPLACIAN: return kernel_value<KernelKind::LAPLACIAN, 0>(p, r2, exp_fn, sqrt_fn);
    case KernelKind::ENERGY: return kernel_value<KernelKind::ENERGY, 0>(p, r2, exp_fn, sqrt_fn);
    default: return kernel_value<KernelKind::RBF, 0>(p, r2, exp_fn, sqrt_fn);
  }
}

template <typename V, typename T, class Exp, class Sqrt = StdSqrt>
INFOVAE_HD void kernel_value_and_weight_dyn(const KernelParams<T>& p, const V& r2, const Exp& exp_fn, V& k, V& g,
                                            const Sqrt& sqrt_fn = Sqrt{}) {
  switch (p.kind) {
    case KernelKind::IMQ: kernel_value_and_weight<KernelKind::IMQ, 0>(p, r2, exp_fn, k, g, sqrt_fn); break;
    case KernelKind::LAPLACIAN: kernel_value_and_weight<KernelKind::LAPLACIAN, 0>(p, r2, exp_fn, k, g, sqrt_fn); break;
    case KernelKind::ENERGY: kernel_value_and_weight<KernelKind::ENERGY, 0>(p, r2, exp_fn, k, g, sqrt_fn); break;
    default: kernel_value_and_weight<KernelKind::RBF, 0>(p, r2, exp_fn, k, g, sqrt_fn); break;
  }
}

// polynomial: t = gamma dot + coef, k = t^n (n - 1 multiplications, the same in both functions, so k is
// bitwise the same), h = n gamma t^(n-1).
template <typename V, typename T>
INFOVAE_HD V dot_kernel_power(const KernelParams<T>& p, const V& dot, V& t) {
  t = dot * p.a[0] + p.a[1];
  V pw = V{} + T(1);
  for (int i = 1; i < kMaxDegree; ++i) {
    if (i >= p.degree) break;
    pw = pw * t;
  }
  return pw;  // t^(n-1)
}

template <typename V, typename T>
INFOVAE_HD V dot_kernel_value(const KernelParams<T>& p, const V& dot) {
  V t;
  const V pw = dot_kernel_power(p, dot, t);
  return pw * t;
}

template <typename V, typename T>
INFOVAE_HD void dot_kernel_value_and_weight(const KernelParams<T>& p, const V& dot, V& k, V& h) {
  V t;
  const V pw = dot_kernel_power(p, dot, t);
  k = pw * t;
  h = pw * p.b[0];
}

// ---- Stein kernels (csrc/cpu/stein.cpp; Python twin: kernels.py stein_radial, stein_kernel) ----
// A radial base phi(r2) summed over scales, params (float64) [beta, c, sigma_1, ..., sigma_S]:
//   rbf: phi = sum_s exp(-a_s r2), a_s = 1 / (2 sigma_s^2)   phi^(k) = sum_s (-a_s)^k exp(-a_s r2)
//   imq: phi = sum_s b_s^beta, b_s = c^2 + r2 / sigma_s^2     phi^(k) = sum_s beta (beta - 1) .. (beta - k + 1)
//        (beta in (-1, 0))                                                 sigma_s^(-2k) b_s^(beta - k)
// (phi^(k) = d^k phi / (dr2)^k; rbf ignores beta and c). The Langevin Stein kernel of two points with
// their scores (x_i, s_i), (x_j, s_j) in d dimensions, ss = s_i.s_j, cross = (s_j - s_i).(x_i - x_j):
//   u = phi ss + 2 phi' cross - 2 d phi' - 4 phi'' r2
// and stein_moments' weight A = phi' ss + 2 phi'' cross - 2 d phi'' - 4 phi''' r2 - 4 phi'' (u with every
// derivative one order higher, minus 4 phi''): du/dx_i = 2 (x_i - x_j) A + 2 phi' (s_j - s_i).
enum class SteinBase : int32_t { RBF = 0, IMQ = 1 };

// params holds beta, c and 1..kMaxScales sigmas.
INFOVAE_HD bool valid_stein_param_count(int64_t n) { return valid_scale_count(n - 2); }

// Per-scale constants in the compute type (trivially copyable, like KernelParams):
//   rbf: a_s = -1 / (2 sigma_s^2) (exp argument r2 a_s),  coef[k-1][s] = a_s^k
//   imq: a_s = 1 / sigma_s^2 (b_s = r2 a_s + c^2),        coef[k-1][s] = beta .. (beta - k + 1) a_s^k
// rsqrt_beta: beta == -1/2 exactly (imq): b^(beta - k) = rsqrt(b)^(2k + 1), no pow.
template <typename T>
struct SteinParams {
  SteinBase base;
  int32_t n_scales;
  bool rsqrt_beta;
  T c2;    // imq: c^2
  T e[3];  // imq: beta - 1, beta - 2, beta - 3 (pow exponents)
  T a[kMaxScales];
  T coef[3][kMaxScales];
};

template <typename T>
INFOVAE_HD SteinParams<T> make_stein_params(SteinBase base, const double* params, int n_params) {
  SteinParams<T> p;
  const double beta = params[0], c = params[1];
  p.base = base;
  p.n_scales = n_params - 2;
  p.rsqrt_beta = base == SteinBase::IMQ && beta == -0.5;
  p.c2 = static_cast<T>(c * c);
  for (int k = 0; k < 3; ++k) p.e[k] = static_cast<T>(beta - (k + 1));
  for (int s = 0; s < kMaxScales; ++s) {
    const double sigma = s < p.n_scales ? params[2 + s] : 1.0;
    const double a = base == SteinBase::RBF ? -0.5 / (sigma * sigma) : 1.0 / (sigma * sigma);
    double m = 1.0;
    for (int k = 0; k < 3; ++k) {
      m *= base == SteinBase::RBF ? a : (beta - k) * a;
      p.coef[k][s] = static_cast<T>(m);
    }
    p.a[s] = static_cast<T>(a);
  }
  return p;
}

struct StdPow {
  template <typename T>
  INFOVAE_HD T operator()(T x, T y) const {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
    return pow(x, y);
#else
    return std::pow(x, y);
#endif
  }
};

struct StdRsqrt {
  template <typename T>
  INFOVAE_HD T operator()(T x) const {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
    return rsqrt(x);
#else
    return T(1) / std::sqrt(x);
#endif
  }
};

// rad[k] = phi^(k)(r2), k = 0..ORDER (2: for u; 3: for A). exp_fn: V -> V (rbf; arguments <= 0);
// pow_fn: (V, T) -> V (imq with beta != -1/2; arguments >= c^2 > 0); rsqrt_fn: V -> V (imq, beta = -1/2).
template <int ORDER, typename V, typename T, class Exp, class Pow = StdPow, class Rsqrt = StdRsqrt>
INFOVAE_HD void stein_radial(const SteinParams<T>& p, const V& r2, const Exp& exp_fn, V (&rad)[ORDER + 1],
                             const Pow& pow_fn = Pow{}, const Rsqrt& rsqrt_fn = Rsqrt{}) {
  static_assert(ORDER == 2 || ORDER == 3, "phi'' (u) or phi''' (A)");
  for (int k = 0; k <= ORDER; ++k) rad[k] = V{};
  INFOVAE_UNROLL_SCALES
  for (int s = 0; s < kMaxScales; ++s) {
    if (s >= p.n_scales) break;
    V f[ORDER + 1];  // rbf: exp(-a_s r2) for every k; imq: b_s^(beta - k)
    if (p.base == SteinBase::RBF) {
      const V e = exp_fn(r2 * p.a[s]);
      for (int k = 0; k <= ORDER; ++k) f[k] = e;
    } else {
      const V b = r2 * p.a[s] + p.c2;
      if (p.rsqrt_beta) {
        const V r = rsqrt_fn(b), rr = r * r;
        f[0] = r;
        for (int k = 1; k <= ORDER; ++k) f[k] = f[k - 1] * rr;
      } else {
        f[ORDER] = pow_fn(b, p.e[ORDER - 1]);
        for (int k = ORDER; k > 0; --k) f[k - 1] = f[k] * b;
      }
    }
    rad[0] += f[0];
    for (int k = 1; k <= ORDER; ++k) rad[k] += f[k] * p.coef[k - 1][s];
  }
}

// u of one pair from rad = (phi, phi', phi''); two_d = 2 d.
template <typename V, typename T>
INFOVAE_HD V stein_value(const V* rad, const V& r2, const V& ss, const V& cross, T two_d) {
  return rad[0] * ss + T(2) * rad[1] * cross - two_d * rad[1] - T(4) * rad[2] * r2;
}

// A of one pair from rad = (phi, phi', phi'', phi''').
template <typename V, typename T>
INFOVAE_HD V stein_moment_weight(const V* rad, const V& r2, const V& ss, const V& cross, T two_d) {
  return stein_value(rad + 1, r2, ss, cross, two_d) - T(4) * rad[2];
}

}  // namespace infovae
