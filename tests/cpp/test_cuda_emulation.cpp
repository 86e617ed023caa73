// Runs the CUDA kernels of csrc/cuda/pair_kernels.cuh on the CPU through a host emulation of the CUDA
// thread model (tests/cpp/emu/: one std::thread per CUDA thread, std::barrier for __syncthreads), and
// compares them with a float64 reference of reference.py's semantics. Catches indexing, masking,
// barrier, split and reduction-order bugs without a GPU; says nothing about speed, and nothing about
// device-only behaviour (fast-math intrinsics, real warp scheduling, memory model).
// The host logic mirrors csrc/cuda/ops_cuda.cu (pooled mean, norms, grid shaping, slab sums).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../../csrc/cuda/pair_kernels.cuh"

using namespace infovae;
namespace K = infovae::cuda_kernels;

static int g_fail = 0, g_checks = 0;

static void expect_close(const char* what, const std::vector<double>& got, const std::vector<double>& ref,
                         double tol) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    err = std::max(err, std::fabs(got[i] - ref[i]));
    scale = std::max(scale, std::fabs(ref[i]));
  }
  ++g_checks;
  const bool ok = got.size() == ref.size() && err <= tol * (1.0 + scale) && std::isfinite(err);
  if (!ok) ++g_fail;
  std::printf("%s %-58s max|err| %.3g (scale %.3g)\n", ok ? "ok  " : "FAIL", what, err, scale);
}

// ---- float64 reference (reference.py semantics, direct |x - y|^2) ----
struct Ref {
  int64_t N, M, d;
  const std::vector<double>&x, &y;
  double r2(int64_t i, int64_t j) const {
    double s = 0;
    for (int64_t k = 0; k < d; ++k) s += (x[i * d + k] - y[j * d + k]) * (x[i * d + k] - y[j * d + k]);
    return s;
  }
};

template <typename T>
static T cvt(double v);
template <> float cvt<float>(double v) { return float(v); }
template <> double cvt<double>(double v) { return v; }
template <> __half cvt<__half>(double v) { return __float2half_rn(float(v)); }
template <> __nv_bfloat16 cvt<__nv_bfloat16>(double v) { return __float2bfloat16_rn(float(v)); }
static double back(float v) { return v; }
static double back(double v) { return v; }
static double back(__half v) { return __half2float(v); }
static double back(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
static std::vector<T> to_t(const std::vector<double>& v) {
  std::vector<T> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = cvt<T>(v[i]);
  return o;
}
template <typename T>
static std::vector<double> rounded(const std::vector<double>& v) {  // the values the kernel sees
  std::vector<double> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = back(cvt<T>(v[i]));
  return o;
}

template <typename acc_t, typename T>
static std::vector<acc_t> pooled_mean(const std::vector<T>& x, int64_t N, const std::vector<T>* y, int64_t M,
                                      int64_t d) {
  std::vector<double> m(d, 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t k = 0; k < d; ++k) m[k] += back(x[i * d + k]);
  if (y)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < d; ++k) m[k] += back((*y)[i * d + k]);
  std::vector<acc_t> o(d);
  for (int64_t k = 0; k < d; ++k) o[k] = acc_t(m[k] / double(N + (y ? M : 0)));
  return o;
}

template <typename T, typename acc_t>
static std::vector<acc_t> norms(const std::vector<T>& x, int64_t n, int64_t d, const std::vector<acc_t>& mean) {
  std::vector<acc_t> out(n);
  const dim3 grid(unsigned((n + 7) / 8));
  emu::launch(grid, dim3(256), [&] { K::row_norms_kernel<T, acc_t>(x.data(), n, d, mean.data(), out.data()); });
  return out;
}

static std::vector<double> sum_slabs(const std::vector<double>& slabs, int64_t n_slabs, int64_t n) {
  std::vector<double> out(n);
  emu::launch(dim3(unsigned((n + 255) / 256)), dim3(256),
              [&] { K::sum_partials_kernel(slabs.data(), n_slabs, n, out.data()); });
  return out;
}

template <typename T>
static bool vec_ok(const T* p, int64_t ld) {
  return (reinterpret_cast<uintptr_t>(p) % 16 == 0) && ld % (16 / int64_t(sizeof(T))) == 0;
}

template <typename T, typename acc_t>
static void run_case(const char* tname, int64_t N, int64_t M, int64_t d, int64_t p, bool with_a, bool excl,
                     KernelKind kind, std::vector<double> sigmas, int64_t tps, double tol, unsigned seed) {
  if (excl) M = N;
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  auto gen = [&](int64_t n) { std::vector<double> v(n); for (auto& e : v) e = nd(rng); return v; };
  // x and y share the set when excluding the diagonal; a shifted mean checks the centering
  std::vector<double> xd = gen(N * d), yd = excl ? xd : gen(M * d), vd = gen(M * p), ad = gen(N * p);
  for (auto& e : xd) e += 3.0;
  if (!excl) for (auto& e : yd) e += 3.5;
  const auto xT = to_t<T>(xd), yT = to_t<T>(yd), vT = to_t<T>(vd), aT = to_t<T>(ad);
  const auto xr = rounded<T>(xd), yr = rounded<T>(yd), vr = rounded<T>(vd), ar = rounded<T>(ad);
  KernelSpec spec;
  make_kernel_spec(kind, sigmas.data(), int(sigmas.size()), d, &spec);
  const auto params = cast_params<acc_t>(spec);
  using TL = K::Tile<acc_t>;
  const int64_t bm = TL::BM;
  char label[200];

  // ---- pair_reduce ----
  {
    Ref R{N, M, d, xr, yr};
    std::vector<double> S_ref(N * p, 0.0), G_ref(with_a ? N * d : 0, 0.0);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < M; ++j) {
        if (excl && i == j) continue;
        double k, g;
        kernel_value_and_weight(spec, R.r2(i, j), &k, &g);
        double av = 0;
        for (int64_t c = 0; c < p; ++c) { S_ref[i * p + c] += k * vr[j * p + c]; av += ar[i * p + c] * vr[j * p + c]; }
        if (with_a)
          for (int64_t c = 0; c < d; ++c) G_ref[i * d + c] += g * av * (xr[i * d + c] - yr[j * d + c]);
      }
    const auto mean = pooled_mean<acc_t>(xT, N, &yT, M, d);
    const auto xn = norms<T, acc_t>(xT, N, d, mean), yn = norms<T, acc_t>(yT, M, d, mean);
    const int64_t blocks = (N + bm - 1) / bm, col_tiles = (M + bm - 1) / bm;
    const int64_t splits = (col_tiles + tps - 1) / tps;
    std::vector<double> S(splits * N * p, 0.0), G(with_a ? splits * N * d : 0, 0.0);
    emu::launch(dim3(unsigned(blocks), unsigned(splits)), dim3(16, 16), [&] {
      K::pair_reduce_kernel<T, acc_t>(xT.data(), yT.data(), vT.data(), with_a ? aT.data() : nullptr, N, M, d, p,
                                      mean.data(), xn.data(), yn.data(), params, excl, vec_ok(xT.data(), d),
                                      vec_ok(yT.data(), d), vec_ok(aT.data(), p), vec_ok(vT.data(), p), tps,
                                      S.data(), with_a ? G.data() : nullptr);
    });
    if (splits > 1) {
      S = sum_slabs(S, splits, N * p);
      if (with_a) G = sum_slabs(G, splits, N * d);
    }
    std::snprintf(label, sizeof label, "pair_reduce S %s %s N=%lld M=%lld d=%lld p=%lld s=%zu excl=%d splits=%lld",
                  tname, kind == KernelKind::RBF ? "rbf" : "imq", (long long)N, (long long)M, (long long)d,
                  (long long)p, sigmas.size(), int(excl), (long long)splits);
    expect_close(label, S, S_ref, tol);
    if (with_a) {
      label[12] = 'G';
      expect_close(label, G, G_ref, tol);
    }
  }
  // ---- quad_form (z = x, w = a with P = p columns) ----
  if (p > 0) {
    Ref R{N, N, d, xr, xr};
    std::vector<double> q_ref(p, 0.0);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) {
        if (excl && i == j) continue;
        const double k = kernel_value(spec, R.r2(i, j));
        for (int64_t c = 0; c < p; ++c) q_ref[c] += ar[i * p + c] * k * ar[j * p + c];
      }
    const auto mean = pooled_mean<acc_t>(xT, N, static_cast<const std::vector<T>*>(nullptr), 0, d);
    const auto zn = norms<T, acc_t>(xT, N, d, mean);
    const int64_t blocks = (N + bm - 1) / bm;
    const int64_t chunks = (blocks + tps - 1) / tps;
    std::vector<double> partial(blocks * chunks * p, 0.0);
    emu::launch(dim3(unsigned(blocks), unsigned(chunks)), dim3(16, 16), [&] {
      K::quad_form_kernel<T, acc_t>(xT.data(), aT.data(), N, d, p, mean.data(), zn.data(), params, excl,
                                    vec_ok(xT.data(), d), tps, partial.data());
    });
    const auto q = sum_slabs(partial, blocks * chunks, p);
    std::snprintf(label, sizeof label, "quad_form %s %s N=%lld d=%lld P=%lld excl=%d chunks=%lld", tname,
                  kind == KernelKind::RBF ? "rbf" : "imq", (long long)N, (long long)d, (long long)p, int(excl),
                  (long long)chunks);
    expect_close(label, q, q_ref, tol);
  }
  // ---- rbf_gram ----
  if (kind == KernelKind::RBF) {
    Ref R{N, M, d, xr, yr};
    std::vector<double> K_ref(N * M);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < M; ++j) K_ref[i * M + j] = kernel_value(spec, R.r2(i, j));
    const auto mean = pooled_mean<acc_t>(xT, N, &yT, M, d);
    const auto xn = norms<T, acc_t>(xT, N, d, mean), yn = norms<T, acc_t>(yT, M, d, mean);
    std::vector<T> out(N * M);
    emu::launch(dim3(unsigned((M + bm - 1) / bm), unsigned((N + bm - 1) / bm)), dim3(16, 16), [&] {
      K::rbf_gram_kernel<T, acc_t>(xT.data(), yT.data(), N, M, d, mean.data(), xn.data(), yn.data(), params,
                                   vec_ok(xT.data(), d), vec_ok(yT.data(), d), out.data());
    });
    std::vector<double> got(N * M);
    for (int64_t i = 0; i < N * M; ++i) got[i] = back(out[i]);
    std::snprintf(label, sizeof label, "rbf_gram %s N=%lld M=%lld d=%lld scales=%zu", tname, (long long)N,
                  (long long)M, (long long)d, sigmas.size());
    expect_close(label, got, K_ref, sizeof(T) == 2 ? 1e-2 : tol);
  }
}

int main() {
  // odd sizes around the 64 / 32 tile edges, d around the 16-feature stages and vector widths,
  // splits > 1 (tps = 1) and = 1, both kernels, multi-scale, diagonal exclusion, a absent / present.
  run_case<float, float>("f32", 70, 131, 5, 3, true, false, KernelKind::RBF, {0.7, 2.0}, 1, 2e-5, 1);
  run_case<float, float>("f32", 129, 129, 20, 1, true, true, KernelKind::IMQ, {1.0}, 2, 2e-5, 2);
  run_case<float, float>("f32", 1, 7, 1, 33, true, false, KernelKind::RBF, {1.5}, 4, 2e-5, 3);
  run_case<float, float>("f32", 65, 66, 16, 70, true, false, KernelKind::RBF, {0.9, 1.3, 4.0}, 1, 2e-5, 4);
  run_case<float, float>("f32", 64, 64, 64, 2, false, true, KernelKind::RBF, {8.0}, 1, 2e-5, 5);
  run_case<double, double>("f64", 70, 45, 5, 3, true, false, KernelKind::IMQ, {0.5, 1.0}, 1, 1e-12, 6);
  run_case<double, double>("f64", 33, 33, 17, 40, true, true, KernelKind::RBF, {1.0, 3.0}, 1, 1e-12, 7);
  run_case<__half, float>("f16", 70, 90, 8, 2, true, false, KernelKind::RBF, {1.0, 2.0}, 1, 2e-5, 8);
  run_case<__nv_bfloat16, float>("bf16", 67, 67, 24, 1, true, true, KernelKind::IMQ, {1.0}, 1, 2e-5, 9);
  run_case<__nv_bfloat16, float>("bf16", 40, 50, 3, 4, false, false, KernelKind::RBF, {1.0}, 1, 2e-5, 10);
  // MMD shape (d = 2, p = 1, gradient), and p = kNarrow + 1 (first width on the shared-memory path)
  run_case<float, float>("f32", 200, 150, 2, 1, true, false, KernelKind::RBF, {0.5, 1.0, 2.0}, 1, 2e-5, 11);
  run_case<float, float>("f32", 90, 90, 3, 5, true, true, KernelKind::IMQ, {1.0}, 1, 2e-5, 12);
  std::printf("%d checks, %d failures\n", g_checks, g_fail);
  return g_fail == 0 ? 0 : 1;
}
