// Unit test of the torch-free per-pair math (csrc/include/infovae/pair_math.h), run by ctest.
// Checks kernel values against closed forms (rbf, imq, multi-scale), the gradient weight
// g = -2 dk/dr2 against central finite differences, g(0) = 0, the clamping of squared_distance, the
// difference form, the lossy-distance rule, the params conversion, and that the run-time-dispatch,
// compile-time and SIMD-vector instantiations agree bitwise (the CPU engine uses the vector one, CUDA
// the scalar one); the Stein bases' phi, phi', phi'', phi''' against float64 formulas and finite
// differences, u and A, vector against scalar.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "infovae/pair_math.h"

using namespace infovae;

static int g_failures = 0;
static int g_checks = 0;

static void check_close(double got, double want, double rtol, double atol, const char* what, double at) {
  ++g_checks;
  if (!(std::fabs(got - want) <= atol + rtol * std::fabs(want))) {
    ++g_failures;
    std::printf("FAIL %s at r2=%.17g: got %.17g want %.17g\n", what, at, got, want);
  }
}

static void check_true(bool ok, const char* what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s\n", what);
  }
}

static std::vector<double> rbf_params(const std::vector<double>& sigmas) {
  std::vector<double> p;
  for (double s : sigmas) p.push_back(1.0 / (2.0 * s * s));
  return p;
}

static std::vector<double> imq_params(const std::vector<double>& sigmas, int d) {
  std::vector<double> p;
  for (double s : sigmas) p.push_back(2.0 * d * s * s);
  return p;
}

template <typename T>
static KernelParams<T> params_of(KernelKind kind, const std::vector<double>& p) {
  return make_kernel_params<T>(kind, p.data(), static_cast<int>(p.size()));
}

static double kval(const KernelParams<double>& p, double r2) { return kernel_value_dyn(p, r2, StdExp{}); }
static void kgval(const KernelParams<double>& p, double r2, double& k, double& g) {
  kernel_value_and_weight_dyn(p, r2, StdExp{}, k, g);
}

static const double kR2[] = {0.0, 1e-8, 0.1, 0.5, 1.0, 2.5, 7.0, 30.0, 200.0};

static void test_rbf() {
  const std::vector<double> sigmas = {0.3, 1.0, 2.7};
  const auto p = params_of<double>(KernelKind::RBF, rbf_params(sigmas));
  check_true(p.n_scales == 3 && p.kind == KernelKind::RBF, "params fields");
  for (double r2 : kR2) {
    double k_ref = 0, g_ref = 0;
    for (double sg : sigmas) {
      const double e = std::exp(-r2 / (2 * sg * sg));
      k_ref += e;
      g_ref += e / (sg * sg);  // g = k / sigma^2 per scale
    }
    check_close(kval(p, r2), k_ref, 1e-14, 0, "rbf k", r2);
    double k, g;
    kgval(p, r2, k, g);
    check_true(k == kval(p, r2), "rbf k (value_and_weight) bitwise == k (value)");
    if (r2 > 0) check_close(g, g_ref, 1e-14, 1e-300, "rbf g", r2);
  }
  check_true(kval(p, 0.0) == 3.0, "rbf k(0) = number of scales");
}

static void test_imq() {
  const std::vector<double> sigmas = {0.5, 1.0, 4.0};
  const int d = 7;
  const auto p = params_of<double>(KernelKind::IMQ, imq_params(sigmas, d));
  for (double r2 : kR2) {
    double k_ref = 0, g_ref = 0;
    for (double sg : sigmas) {
      const double C = 2.0 * d * sg * sg;
      k_ref += C / (C + r2);
      g_ref += 2.0 * C / ((C + r2) * (C + r2));  // -2 d/dr2 [C / (C + r2)]
    }
    check_close(kval(p, r2), k_ref, 1e-14, 0, "imq k", r2);
    double k, g;
    kgval(p, r2, k, g);
    check_true(k == kval(p, r2), "imq k (value_and_weight) bitwise == k (value)");
    if (r2 > 0) check_close(g, g_ref, 1e-13, 0, "imq g", r2);
  }
}

static void test_weight_zero_at_zero() {
  for (KernelKind kind : {KernelKind::RBF, KernelKind::IMQ}) {
    const auto p = params_of<double>(kind, {0.5, 3.0});
    double k, g;
    kgval(p, 0.0, k, g);
    check_true(g == 0.0 && k == 2.0, "g(0) = 0, k(0) = n_scales");
    const auto pf = params_of<float>(kind, {0.5, 3.0});
    float kf, gf;
    kernel_value_and_weight_dyn(pf, 0.0f, StdExp{}, kf, gf);
    check_true(gf == 0.0f && kf == 2.0f, "g(0) = 0 (float)");
    kernel_value_and_weight_dyn(pf, 1e-30f, StdExp{}, kf, gf);
    check_true(gf > 0.0f, "g > 0 just above 0");
  }
}

// g = -2 dk/dr2 by central differences, both kernels, several scales.
static void test_gradient_weight_fd() {
  for (KernelKind kind : {KernelKind::RBF, KernelKind::IMQ}) {
    const std::vector<double> sig = {0.4, 1.3, 3.0};
    const auto p = params_of<double>(kind, kind == KernelKind::RBF ? rbf_params(sig) : imq_params(sig, 3));
    for (double r2 : {0.05, 0.3, 1.0, 4.0, 11.0}) {
      const double h = 1e-5 * (1.0 + r2);
      const double dk = (kval(p, r2 + h) - kval(p, r2 - h)) / (2 * h);
      double k, g;
      kgval(p, r2, k, g);
      check_close(g, -2.0 * dk, 1e-7, 1e-12, kind == KernelKind::RBF ? "rbf g vs FD" : "imq g vs FD", r2);
    }
  }
}

static void test_squared_distance() {
  check_close(squared_distance(1.0, 1.0, 1.0 + 1e-12), 0.0, 0, 0, "clamped at 0 (double)", 0);
  check_true(squared_distance(1.0f, 1.0f, 1.0f + 1e-6f) == 0.0f, "clamped at 0 (float)");
  check_true(!std::signbit(squared_distance(1.0, 1.0, 1.5)), "clamp gives +0");
  check_close(squared_distance(2.0, 3.0, 0.5), 4.0, 0, 0, "r2 = |x|^2 + |y|^2 - 2 x.y", 0);
  // |x - y|^2 for x = (1, 2), y = (3, -1): 4 + 9 = 13
  check_close(squared_distance(5.0, 10.0, 1.0), 13.0, 0, 0, "r2 example", 0);
  double acc = 0.0;
  acc = add_squared_difference(acc, 1.0, 3.0);
  acc = add_squared_difference(acc, 2.0, -1.0);
  check_true(acc == 13.0, "difference form example");
  float self = 0.0f;
  for (float c : {1e20f, -3.7f, 1e-30f}) self = add_squared_difference(self, c, c);
  check_true(self == 0.0f, "difference form: self-distance exactly 0");
}

static void test_lossy_rule() {
  // float: u = 2^-24; (1 + 1) * kappa * 2^-24 > 2^-12  <=>  kappa > 2^11
  check_true(!expansion_is_lossy<float>(1.0, 1.0, 2048.0), "float at the threshold: not lossy");
  check_true(expansion_is_lossy<float>(1.0, 1.0, 2049.0), "float above the threshold: lossy");
  check_true(!expansion_is_lossy<double>(1.0, 1.0, 2049.0), "double: same kappa fine");
  check_true(expansion_is_lossy<double>(1.0, 1.0, 0x1p41 * 1.01), "double above its threshold");
  const double rbf[] = {3.0, 50.0, 0.5};
  check_true(lossy_kappa(KernelKind::RBF, rbf, 3) == 50.0, "rbf kappa = max c");
  const double imq[] = {4.0, 0.25, 2.0};
  check_true(lossy_kappa(KernelKind::IMQ, imq, 3) == 4.0, "imq kappa = max 1/C");
  // the case: sigma 0.01 on data of spread ~100 (scaled to [0.5, 1) by 2^-9 or so): c ~ 1e9
  check_true(expansion_is_lossy<float>(0.5, 0.5, 1.0 / (2.0 * 0.01 * 0.01 / (512.0 * 512.0))), "issue case lossy");
}

static void test_params_conversion() {
  check_true(!valid_scale_count(0) && valid_scale_count(1) && valid_scale_count(kMaxScales) &&
                 !valid_scale_count(kMaxScales + 1),
             "valid_scale_count");
  // extreme but clamped params stay finite in float: c = FLT_MAX / 4 gives 2c finite; C = FLT_MIN gives 2/C finite
  const double big = 3.4028234663852886e38 / 4, tiny = 1.1754943508222875e-38;
  const auto r = params_of<float>(KernelKind::RBF, {big, tiny});
  const auto q = params_of<float>(KernelKind::IMQ, {big, tiny});
  bool finite = true;
  for (int s = 0; s < 2; ++s)
    finite = finite && std::isfinite(r.a[s]) && std::isfinite(r.b[s]) && std::isfinite(q.a[s]) && std::isfinite(q.b[s]);
  check_true(finite, "clamped params finite in float");
  for (float r2 : {0.0f, 1e-30f, 1e-3f, 4.0f}) {
    float k, g;
    kernel_value_and_weight_dyn(r, r2, StdExp{}, k, g);
    check_true(std::isfinite(k) && std::isfinite(g), "rbf extreme params: finite k, g");
    kernel_value_and_weight_dyn(q, r2, StdExp{}, k, g);
    check_true(std::isfinite(k) && std::isfinite(g), "imq extreme params: finite k, g");
  }
}

// The float instantiation against double, and the compile-time (NS > 0) and run-time instantiations
// against each other (bitwise).
static void test_instantiations_agree() {
  for (KernelKind kind : {KernelKind::RBF, KernelKind::IMQ}) {
    for (int n : {1, 3, kMaxScales}) {
      std::vector<double> sig;
      for (int s = 0; s < n; ++s) sig.push_back(0.2 + 0.37 * s);
      const auto raw = kind == KernelKind::RBF ? rbf_params(sig) : imq_params(sig, 4);
      const auto pd = params_of<double>(kind, raw);
      const auto pf = params_of<float>(kind, raw);
      for (double r2 : kR2) {
        double k1, g1;
        kgval(pd, r2, k1, g1);
        float kf, gf;
        kernel_value_and_weight_dyn(pf, static_cast<float>(r2), StdExp{}, kf, gf);
        check_close(kf, k1, 2e-6, 1e-30, "float k vs double", r2);
        check_close(gf, g1, 2e-6, 1e-30, "float g vs double", r2);
        if (n == 1) {
          double k2, g2;
          if (kind == KernelKind::RBF)
            kernel_value_and_weight<KernelKind::RBF, 1>(pd, r2, StdExp{}, k2, g2);
          else
            kernel_value_and_weight<KernelKind::IMQ, 1>(pd, r2, StdExp{}, k2, g2);
          check_true(k1 == k2 && g1 == g2, "NS = 1 instantiation == run-time (bitwise)");
        }
      }
    }
  }
}

// ---- Stein kernel bases ----
struct SteinCase {
  SteinBase base;
  double beta, c;
  std::vector<double> sigmas;
  std::vector<double> params() const {
    std::vector<double> p = {beta, c};
    p.insert(p.end(), sigmas.begin(), sigmas.end());
    return p;
  }
};

static const SteinCase kSteinCases[] = {
    {SteinBase::IMQ, -0.5, 1.0, {1.0}},
    {SteinBase::IMQ, -0.5, 1.7, {0.7, 1.3, 2.5}},
    {SteinBase::IMQ, -0.3, 0.6, {0.8}},
    {SteinBase::IMQ, -0.3, 1.2, {0.5, 2.0, 4.0}},
    {SteinBase::RBF, -0.5, 1.0, {1.0}},
    {SteinBase::RBF, -0.5, 1.0, {0.4, 1.1, 3.0}},
};

// phi^(k)(r2), k = 0..3, from the float64 formulas (pow for every beta, exp for rbf).
static void stein_radial_ref(const SteinCase& sc, double r2, double rad[4]) {
  for (int k = 0; k < 4; ++k) rad[k] = 0;
  for (double s : sc.sigmas) {
    const double inv = 1.0 / (s * s);
    if (sc.base == SteinBase::RBF) {
      const double a = 0.5 * inv, e = std::exp(-a * r2);
      rad[0] += e, rad[1] += -a * e, rad[2] += a * a * e, rad[3] += -a * a * a * e;
    } else {
      const double b = sc.c * sc.c + r2 * inv, bt = sc.beta;
      rad[0] += std::pow(b, bt);
      rad[1] += bt * inv * std::pow(b, bt - 1);
      rad[2] += bt * (bt - 1) * inv * inv * std::pow(b, bt - 2);
      rad[3] += bt * (bt - 1) * (bt - 2) * inv * inv * inv * std::pow(b, bt - 3);
    }
  }
}

// stein_radial against the formulas (float64 and float32), each derivative against central finite
// differences of the one below, ORDER 2 against ORDER 3, stein_value / stein_moment_weight against the
// spelled-out u and A.
static void test_stein_radial() {
  for (const SteinCase& sc : kSteinCases) {
    const std::vector<double> pv = sc.params();
    const auto pd = make_stein_params<double>(sc.base, pv.data(), int(pv.size()));
    const auto pf = make_stein_params<float>(sc.base, pv.data(), int(pv.size()));
    check_true(pd.n_scales == int(sc.sigmas.size()) && pd.base == sc.base, "stein params fields");
    check_true(pd.rsqrt_beta == (sc.base == SteinBase::IMQ && sc.beta == -0.5), "stein params: rsqrt_beta");
    for (double r2 : kR2) {
      double ref[4], rad[4], rad2[3];
      float radf[4];
      stein_radial_ref(sc, r2, ref);
      stein_radial<3>(pd, r2, StdExp{}, rad);
      stein_radial<2>(pd, r2, StdExp{}, rad2);
      stein_radial<3>(pf, float(r2), StdExp{}, radf);
      const double atol = 1e-300;
      for (int k = 0; k < 4; ++k) {
        check_close(rad[k], ref[k], 1e-14, atol, "stein phi^(k) float64", r2);
        check_close(radf[k], ref[k], 2e-6, 1e-37, "stein phi^(k) float32 (denormals: absolute 1e-37)", r2);
        if (k < 3) check_close(rad2[k], ref[k], 1e-14, atol, "stein phi^(k) float64, ORDER 2", r2);
      }
      if (r2 >= 0.1 && r2 <= 30.0) {
        const double h = 1e-5 * r2;
        double lo[4], hi[4];
        stein_radial<3>(pd, r2 - h, StdExp{}, lo);
        stein_radial<3>(pd, r2 + h, StdExp{}, hi);
        for (int k = 0; k < 3; ++k)
          check_close((hi[k] - lo[k]) / (2 * h), rad[k + 1], 1e-6, 1e-9 * std::fabs(rad[k]), "stein phi^(k+1) vs fd",
                      r2);
      }
      const double ss = 0.7, cross = -1.3, d = 3;
      const double u = ref[0] * ss + 2 * ref[1] * cross - 2 * d * ref[1] - 4 * ref[2] * r2;
      const double A = ref[1] * ss + 2 * ref[2] * cross - 2 * d * ref[2] - 4 * ref[3] * r2 - 4 * ref[2];
      check_close(stein_value(rad, r2, ss, cross, 2 * d), u, 1e-13, 1e-13 * std::fabs(ref[0]), "stein u", r2);
      check_close(stein_moment_weight(rad, r2, ss, cross, 2 * d), A, 1e-13, 1e-13 * std::fabs(ref[1]), "stein A", r2);
    }
  }
}

#if defined(__GNUC__)
typedef float vf4 __attribute__((vector_size(16)));
struct LaneExp {
  vf4 operator()(vf4 x) const {
    for (int i = 0; i < 4; ++i) x[i] = std::exp(x[i]);
    return x;
  }
};

struct LaneSqrt {  // laplacian and energy read r = sqrt(r2)
  vf4 operator()(vf4 x) const {
    for (int i = 0; i < 4; ++i) x[i] = std::sqrt(x[i]);
    return x;
  }
};

// The SIMD instantiation (what the CPU engine runs) computes lane by lane what the scalar one does.
static void test_vector_matches_scalar() {
  for (KernelKind kind : {KernelKind::RBF, KernelKind::IMQ, KernelKind::LAPLACIAN, KernelKind::ENERGY}) {
    const std::vector<double> raw = kind == KernelKind::RBF   ? rbf_params({0.7, 2.0})
                                     : kind == KernelKind::IMQ ? imq_params({0.7, 2.0}, 3)
                                     : kind == KernelKind::ENERGY ? std::vector<double>{1.5}
                                                                  : std::vector<double>{1.0 / 0.7, 0.5};
    const auto p = params_of<float>(kind, raw);
    const vf4 xn = {1.0f, 0.5f, 2.0f, 0.25f}, yn = {1.0f, 0.75f, 0.1f, 0.3f}, dot = {1.0f, 0.2f, -0.3f, 0.05f};
    const vf4 r2 = squared_distance(xn, yn, dot);
    vf4 k, g;
    kernel_value_and_weight_dyn(p, r2, LaneExp{}, k, g, LaneSqrt{});
    const vf4 kv = kernel_value_dyn(p, r2, LaneExp{}, LaneSqrt{});
    for (int i = 0; i < 4; ++i) {
      const float r2s = squared_distance(xn[i], yn[i], dot[i]);
      float ks, gs;
      kernel_value_and_weight_dyn(p, r2s, StdExp{}, ks, gs);
      check_true(r2[i] == r2s && k[i] == ks && g[i] == gs && kv[i] == ks, "vector lane == scalar (bitwise)");
    }
    check_true(r2[0] == 0.0f && g[0] == 0.0f, "vector: g = 0 where r2 = 0");
  }
}
struct LanePow {
  vf4 operator()(vf4 x, float y) const {
    for (int i = 0; i < 4; ++i) x[i] = std::pow(x[i], y);
    return x;
  }
};

struct LaneRsqrt {
  vf4 operator()(vf4 x) const {
    for (int i = 0; i < 4; ++i) x[i] = 1.0f / std::sqrt(x[i]);
    return x;
  }
};

// The Stein functions on the CPU's vector type compute lane by lane what the scalar ones do.
static void test_stein_vector_matches_scalar() {
  for (const SteinCase& sc : kSteinCases) {
    const std::vector<double> pv = sc.params();
    const auto p = make_stein_params<float>(sc.base, pv.data(), int(pv.size()));
    const vf4 r2 = {0.0f, 0.3f, 1.7f, 12.0f}, ss = {1.0f, -0.5f, 0.25f, 2.0f}, cross = {0.0f, 0.4f, -1.1f, 3.0f};
    vf4 rad[4];
    stein_radial<3>(p, r2, LaneExp{}, rad, LanePow{}, LaneRsqrt{});
    const vf4 u = stein_value(rad, r2, ss, cross, 6.0f), A = stein_moment_weight(rad, r2, ss, cross, 6.0f);
    for (int i = 0; i < 4; ++i) {
      float rs[4];
      stein_radial<3>(p, r2[i], StdExp{}, rs);
      bool same = u[i] == stein_value(rs, r2[i], ss[i], cross[i], 6.0f) &&
                  A[i] == stein_moment_weight(rs, r2[i], ss[i], cross[i], 6.0f);
      for (int k = 0; k < 4; ++k) same = same && rad[k][i] == rs[k];
      check_true(same, "stein: vector lane == scalar (bitwise)");
    }
  }
}
#endif

int main() {
  test_rbf();
  test_imq();
  test_weight_zero_at_zero();
  test_gradient_weight_fd();
  test_squared_distance();
  test_lossy_rule();
  test_params_conversion();
  test_instantiations_agree();
  test_stein_radial();
#if defined(__GNUC__)
  test_vector_matches_scalar();
  test_stein_vector_matches_scalar();
#endif
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
