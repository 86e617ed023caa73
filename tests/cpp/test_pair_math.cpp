// Unit test of the torch-free per-pair math (csrc/include/infovae/pair_math.h), run by ctest.
// Checks kernel values against closed forms (rbf, imq, multi-scale), the gradient weight
// g = -2 dk/dr2 against central finite differences, the clamping of squared_distance, the errors of
// make_kernel_spec, and that the KernelParams<T> overloads agree with the KernelSpec ones.
#include <cmath>
#include <cstdio>
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

static KernelSpec spec_of(KernelKind kind, std::vector<double> sigmas, int64_t d) {
  KernelSpec spec;
  const bool ok = make_kernel_spec(kind, sigmas.data(), static_cast<int>(sigmas.size()), d, &spec);
  check_true(ok, "make_kernel_spec accepts 1..kMaxScales sigmas");
  return spec;
}

static const double kR2[] = {0.0, 1e-8, 0.1, 0.5, 1.0, 2.5, 7.0, 30.0, 200.0};

static void test_rbf() {
  const std::vector<double> sigmas = {0.3, 1.0, 2.7};
  const KernelSpec spec = spec_of(KernelKind::RBF, sigmas, 5);
  for (int s = 0; s < 3; ++s) check_close(spec.param[s], 1.0 / (2.0 * sigmas[s] * sigmas[s]), 1e-15, 0, "rbf c_s", 0);
  for (double r2 : kR2) {
    double k_ref = 0, g_ref = 0;
    for (double sg : sigmas) {
      const double e = std::exp(-r2 / (2 * sg * sg));
      k_ref += e;
      g_ref += e / (sg * sg);  // DESIGN.md: g = k / sigma^2 per scale
    }
    check_close(kernel_value(spec, r2), k_ref, 1e-14, 0, "rbf k", r2);
    double k, g;
    kernel_value_and_weight(spec, r2, &k, &g);
    check_close(k, k_ref, 1e-14, 0, "rbf k (value_and_weight)", r2);
    check_close(g, g_ref, 1e-14, 1e-300, "rbf g", r2);
    // single scale, sigma^2 = d (the InfoVAE authors' exp(-r2 / (2 d)))
    const double one = 2.0;
    const KernelSpec s1 = spec_of(KernelKind::RBF, {std::sqrt(one)}, 2);
    check_close(kernel_value(s1, r2), std::exp(-r2 / (2 * one)), 1e-13, 0, "rbf sigma^2=d", r2);  // sqrt(2)^2 != 2 exactly
  }
  check_close(kernel_value(spec, 0.0), 3.0, 0, 0, "rbf k(0) = number of scales", 0);
}

static void test_imq() {
  const std::vector<double> sigmas = {0.5, 1.0, 4.0};
  const int64_t d = 7;
  const KernelSpec spec = spec_of(KernelKind::IMQ, sigmas, d);
  for (int s = 0; s < 3; ++s) check_close(spec.param[s], 2.0 * d * sigmas[s] * sigmas[s], 1e-15, 0, "imq C_s", 0);
  for (double r2 : kR2) {
    double k_ref = 0, g_ref = 0;
    for (double sg : sigmas) {
      const double C = 2.0 * d * sg * sg;
      const double ks = C / (C + r2);
      k_ref += ks;
      g_ref += 2.0 * C / ((C + r2) * (C + r2));  // -2 d/dr2 [C / (C + r2)]
    }
    check_close(kernel_value(spec, r2), k_ref, 1e-14, 0, "imq k", r2);
    double k, g;
    kernel_value_and_weight(spec, r2, &k, &g);
    check_close(k, k_ref, 1e-14, 0, "imq k (value_and_weight)", r2);
    check_close(g, g_ref, 1e-13, 0, "imq g", r2);
  }
}

// g = -2 dk/dr2 by central differences, both kernels, several scales.
static void test_gradient_weight_fd() {
  for (KernelKind kind : {KernelKind::RBF, KernelKind::IMQ}) {
    const KernelSpec spec = spec_of(kind, {0.4, 1.3, 3.0}, 3);
    for (double r2 : {0.05, 0.3, 1.0, 4.0, 11.0}) {
      const double h = 1e-5 * (1.0 + r2);
      const double dk = (kernel_value(spec, r2 + h) - kernel_value(spec, r2 - h)) / (2 * h);
      double k, g;
      kernel_value_and_weight(spec, r2, &k, &g);
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
}

static void test_make_kernel_spec_errors() {
  KernelSpec spec;
  double sig[kMaxScales + 1];
  for (int s = 0; s <= kMaxScales; ++s) sig[s] = 1.0 + s;
  check_true(!make_kernel_spec(KernelKind::RBF, sig, 0, 3, &spec), "0 scales rejected");
  check_true(!make_kernel_spec(KernelKind::RBF, sig, -1, 3, &spec), "negative scale count rejected");
  check_true(!make_kernel_spec(KernelKind::IMQ, sig, kMaxScales + 1, 3, &spec), "kMaxScales + 1 rejected");
  check_true(make_kernel_spec(KernelKind::IMQ, sig, kMaxScales, 3, &spec), "kMaxScales accepted");
  check_true(spec.n_scales == kMaxScales && spec.kind == KernelKind::IMQ, "spec fields");
  check_true(make_kernel_spec(KernelKind::RBF, sig, 2, 3, &spec), "2 scales accepted");
  bool tail_zero = true;
  for (int s = 2; s < kMaxScales; ++s) tail_zero = tail_zero && spec.param[s] == 0.0;
  check_true(tail_zero, "unused params zeroed");
}

// The KernelParams<T> overloads (used by csrc/cuda) compute the same formulas as the KernelSpec ones.
static void test_params_overloads() {
  for (KernelKind kind : {KernelKind::RBF, KernelKind::IMQ}) {
    for (int n : {1, 3, kMaxScales}) {
      std::vector<double> sig;
      for (int s = 0; s < n; ++s) sig.push_back(0.2 + 0.37 * s);
      const KernelSpec spec = spec_of(kind, sig, 4);
      const KernelParams<double> pd = cast_params<double>(spec);
      const KernelParams<float> pf = cast_params<float>(spec);
      check_true(pd.n_scales == n && pf.n_scales == n && pd.kind == kind, "cast_params fields");
      for (double r2 : kR2) {
        double k1, g1, k2, g2;
        kernel_value_and_weight(spec, r2, &k1, &g1);
        kernel_value_and_weight(pd, r2, &k2, &g2);
        check_true(k1 == k2 && g1 == g2, "KernelParams<double> == KernelSpec (bitwise)");
        check_true(kernel_value(pd, r2) == kernel_value(spec, r2), "kernel_value KernelParams<double>");
        float kf, gf, kf2, gf2;
        kernel_value_and_weight(pf, static_cast<float>(r2), &kf, &gf);
        kernel_value_and_weight(spec, static_cast<float>(r2), &kf2, &gf2);
        check_true(kf == kf2 && gf == gf2, "KernelParams<float> == KernelSpec<float> (bitwise)");
        check_close(kf, k1, 2e-6, 1e-30, "float k vs double", r2);
        check_close(gf, g1, 2e-6, 1e-30, "float g vs double", r2);
      }
    }
  }
}

int main() {
  test_rbf();
  test_imq();
  test_gradient_weight_fd();
  test_squared_distance();
  test_make_kernel_spec_errors();
  test_params_overloads();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
