// Runs the CUDA primitives of csrc/cuda/pair_kernels.cuh on the CPU through a host emulation of the CUDA
// thread model (tests/cpp/emu/: one std::thread per CUDA thread, std::barrier for __syncthreads), by the
// same torch-free drivers ops_cuda.cu calls (run_gram, run_pair_reduce, run_quad_form: norms, grids,
// circulant rounds, slabs, final sums), and compares them with a float64 reference of reference.py's
// semantics written here independently (r2 from coordinate differences, the kernel formulas spelled out).
// Catches indexing, masking, barrier, scheduling and reduction-order bugs without a GPU; says nothing
// about speed, nor about device-only behaviour (the CUDA math library's exp, warp scheduling, memory
// model). Sizes are small: the emulation starts 256 threads per block.
#define INFOVAE_CUDA_EMULATION
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/cuda/pair_kernels.cuh"

using namespace infovae;
namespace K = infovae::cuda_kernels;

static int g_fail = 0, g_checks = 0;

static void report(bool ok, const char* what, double err, double scale) {
  ++g_checks;
  if (!ok) ++g_fail;
  std::printf("%s %-78s max|err| %.3g (scale %.3g)\n", ok ? "ok  " : "FAIL", what, err, scale);
}

static void expect_close(const char* what, const std::vector<double>& got, const std::vector<double>& ref, double tol) {
  double err = 0, scale = 0;
  bool finite = got.size() == ref.size();
  for (size_t i = 0; i < ref.size() && finite; ++i) {
    finite = std::isfinite(got[i]);
    err = std::max(err, std::fabs(got[i] - ref[i]));
    scale = std::max(scale, std::fabs(ref[i]));
  }
  report(finite && err <= tol * (1.0 + scale), what, err, scale);
}

static void expect_true(const char* what, bool ok) {
  ++g_checks;
  if (!ok) ++g_fail;
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
}

// ---- float64 reference ----
struct RefKernel {
  KernelKind kind;
  std::vector<double> params;
  void eval(double r2, double& k, double& g) const {
    k = g = 0;
    for (double c : params) {
      if (kind == KernelKind::RBF) {
        k += std::exp(-c * r2);
        g += 2.0 * c * std::exp(-c * r2);
      } else {
        const double ks = c / (c + r2);
        k += ks;
        g += 2.0 * ks * ks / c;
      }
    }
    if (r2 == 0) g = 0;
  }
};

static double r2_of(const std::vector<double>& x, int64_t i, const std::vector<double>& y, int64_t j, int64_t d) {
  double s = 0;
  for (int64_t k = 0; k < d; ++k) s += (x[i * d + k] - y[j * d + k]) * (x[i * d + k] - y[j * d + k]);
  return s;
}

// ---- element types ----
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

// A matrix as the kernel sees it (T) and the same values in float64 (the reference's input).
template <typename T>
struct Mat {
  int64_t rows = 0, cols = 0;
  std::vector<T> t;
  std::vector<double> r;
  Mat() = default;
  Mat(int64_t n, int64_t m, const std::vector<double>& v) : rows(n), cols(m), t(v.size()), r(v.size()) {
    for (size_t i = 0; i < v.size(); ++i) {
      t[i] = cvt<T>(v[i]);
      r[i] = back(t[i]);
    }
  }
  const T* p() const { return t.empty() ? nullptr : t.data(); }
};

template <typename T>
static bool vec_ok(const T* p, int64_t ld) {
  return p != nullptr && (reinterpret_cast<uintptr_t>(p) % 16 == 0) && ld % (16 / int64_t(sizeof(T))) == 0;
}

static std::vector<double> randn(std::mt19937& rng, int64_t n, double scale, double shift = 0.0) {
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> v(n);
  for (auto& e : v) e = shift + scale * nd(rng);
  return v;
}

// Kernel parameters as kernels.py's kernel_params (rbf: 1/(2 sigma^2); imq: 2 d sigma^2).
static std::vector<double> params_of(KernelKind kind, const std::vector<double>& sigmas, int64_t d) {
  std::vector<double> p;
  for (double s : sigmas) p.push_back(kind == KernelKind::RBF ? 0.5 / (s * s) : 2.0 * double(d) * s * s);
  return p;
}

static const char* kname(KernelKind k) { return k == KernelKind::RBF ? "rbf" : "imq"; }

// ---- the primitives through the drivers ----
template <typename T, typename acc_t>
static std::vector<double> gram(const Mat<T>& x, const Mat<T>& y, const RefKernel& kr, bool derivative) {
  const int64_t N = x.rows, M = y.rows, d = x.cols;
  std::vector<acc_t> xn(N), yn(M), xm(K::row_blocks<acc_t>(N)), ym(K::row_blocks<acc_t>(M));
  std::vector<T> out(N * M);
  const K::GramArgs g{N, M, d, kr.kind, kr.params.data(), int(kr.params.size()), derivative, vec_ok(x.p(), d),
                      vec_ok(y.p(), d)};
  K::run_gram<T, acc_t>(x.p(), y.p(), g, xn.data(), yn.data(), xm.data(), ym.data(), out.data(), nullptr);
  std::vector<double> o(N * M);
  for (int64_t i = 0; i < N * M; ++i) o[i] = back(out[i]);
  return o;
}

template <typename T, typename acc_t>
static void pair_reduce(const Mat<T>& x, const Mat<T>& y, const Mat<T>& v, const Mat<T>* a, const RefKernel& kr,
                        bool excl, std::vector<double>& S, std::vector<double>& G, int64_t* splits) {
  const int64_t N = x.rows, M = y.rows, d = x.cols, p = v.cols;
  const auto pl = K::plan_pair_reduce<acc_t>(N, M, d, p, a != nullptr);
  *splits = pl.splits;
  std::vector<acc_t> xn(N), yn(M), xm(K::row_blocks<acc_t>(N)), ym(K::row_blocks<acc_t>(M));
  std::vector<double> Ss(pl.splits > 1 ? pl.splits * N * p : 0), Gs(pl.splits > 1 && a ? pl.splits * N * d : 0);
  S.assign(N * p, 0.0);
  G.assign(a ? N * d : 0, 0.0);
  const T* ap = a ? a->p() : nullptr;
  const K::PairReduceArgs r{N, M, d, p, kr.kind, kr.params.data(), int(kr.params.size()), excl,
                            vec_ok(x.p(), d), vec_ok(y.p(), d), vec_ok(ap, p), vec_ok(v.p(), p)};
  K::run_pair_reduce<T, acc_t>(x.p(), y.p(), v.p(), ap, r, pl, xn.data(), yn.data(), xm.data(), ym.data(),
                               Ss.empty() ? nullptr : Ss.data(), Gs.empty() ? nullptr : Gs.data(), S.data(),
                               a ? G.data() : nullptr, nullptr);
}

struct QuadRes {
  std::vector<double> q, S, G;
};

// max_copy_bytes = 0 forces the per-round launches (otherwise grouped at these sizes).
template <typename T, typename acc_t>
static QuadRes quad_form(const Mat<T>& z, const Mat<T>& w, const Mat<T>* a, const RefKernel& kr, bool excl,
                         bool row_sums, int64_t max_copy_bytes = K::kMaxSlabBytes) {
  const int64_t N = z.rows, d = z.cols, P = w.cols;
  const auto pl = K::plan_quad_form<acc_t>(N, d, P, row_sums, a != nullptr, max_copy_bytes);
  std::vector<acc_t> zn(N), zm(pl.nb);
  std::vector<double> qslab(pl.nb * pl.chunks * P, 0.0), Sbuf(row_sums ? 2 * pl.copies * N * P : 0, 0.0),
      Gbuf(a ? 2 * pl.copies * N * d : 0, 0.0);
  QuadRes o;
  o.q.assign(P, 0.0);
  o.S.assign(row_sums ? N * P : 0, 0.0);
  o.G.assign(a ? N * d : 0, 0.0);
  K::QuadArgs<T, acc_t> A{};
  A.z = z.p(), A.w = w.p(), A.a = a ? a->p() : nullptr;
  A.N = N, A.d = d, A.P = P;
  A.kind = kr.kind, A.params = kr.params.data(), A.n_scales = int(kr.params.size());
  A.exclude_diagonal = excl;
  A.vec_z = vec_ok(A.z, d), A.vec_w = vec_ok(A.w, P), A.vec_a = vec_ok(A.a, P);
  A.nb = pl.nb, A.tps = pl.tps, A.chunks = pl.chunks, A.copies = pl.copies;
  A.qslab = qslab.data();
  A.Sbuf = row_sums ? Sbuf.data() : nullptr;
  A.Gbuf = a ? Gbuf.data() : nullptr;
  K::run_quad_form<T, acc_t>(A, pl, zn.data(), zm.data(), o.q.data(), row_sums ? o.S.data() : nullptr,
                             a ? o.G.data() : nullptr, nullptr);
  return o;
}

// ---- cases ----
template <typename T, typename acc_t>
static void gram_case(const char* tn, int64_t N, int64_t M, int64_t d, KernelKind kind, std::vector<double> sigmas,
                      double tol, unsigned seed) {
  std::mt19937 rng(seed);
  const Mat<T> x(N, d, randn(rng, N * d, 0.4)), y(M, d, randn(rng, M * d, 0.4, 0.1));
  const RefKernel kr{kind, params_of(kind, sigmas, d)};
  for (bool deriv : {false, true}) {
    std::vector<double> ref(N * M);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < M; ++j) {
        double k, g;
        kr.eval(r2_of(x.r, i, y.r, j, d), k, g);
        ref[i * M + j] = deriv ? g : k;
      }
    char label[200];
    std::snprintf(label, sizeof label, "gram %s %s N=%lld M=%lld d=%lld scales=%zu derivative=%d", tn, kname(kind),
                  (long long)N, (long long)M, (long long)d, sigmas.size(), int(deriv));
    expect_close(label, gram<T, acc_t>(x, y, kr, deriv), ref, sizeof(T) == 2 ? 1e-2 : tol);
  }
  // a point paired with itself: r2 == 0 exactly, so k = n_scales and g = 0 exactly (points off the
  // origin, so the expansion's norms and dots are not trivially 0)
  const Mat<T> u(N, d, randn(rng, N * d, 0.3, 0.4));
  const auto k = gram<T, acc_t>(u, u, kr, false), g = gram<T, acc_t>(u, u, kr, true);
  bool exact = true;
  for (int64_t i = 0; i < N; ++i)
    exact = exact && k[i * N + i] == double(sigmas.size()) && g[i * N + i] == 0.0;
  char label[200];
  std::snprintf(label, sizeof label, "gram %s %s N=%lld d=%lld: self-distance 0 (k(x,x) == %zu, g(x,x) == 0)", tn,
                kname(kind), (long long)N, (long long)d, sigmas.size());
  expect_true(label, exact);
}

template <typename T, typename acc_t>
static void pair_reduce_case(const char* tn, int64_t N, int64_t M, int64_t d, int64_t p, bool with_a, bool excl,
                             KernelKind kind, std::vector<double> sigmas, double tol, unsigned seed) {
  if (excl) M = N;
  std::mt19937 rng(seed);
  const Mat<T> x(N, d, randn(rng, N * d, 0.4));
  const Mat<T> y = excl ? x : Mat<T>(M, d, randn(rng, M * d, 0.4, 0.1));
  const Mat<T> v(M, p, randn(rng, M * p, 1.0)), a(N, p, randn(rng, N * p, 1.0));
  const RefKernel kr{kind, params_of(kind, sigmas, d)};
  std::vector<double> S_ref(N * p, 0.0), G_ref(with_a ? N * d : 0, 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < M; ++j) {
      if (excl && i == j) continue;
      double k, g;
      kr.eval(r2_of(x.r, i, y.r, j, d), k, g);
      double av = 0;
      for (int64_t c = 0; c < p; ++c) {
        S_ref[i * p + c] += k * v.r[j * p + c];
        av += a.r[i * p + c] * v.r[j * p + c];
      }
      if (with_a)
        for (int64_t c = 0; c < d; ++c) G_ref[i * d + c] += g * av * (x.r[i * d + c] - y.r[j * d + c]);
    }
  std::vector<double> S, G;
  int64_t splits;
  pair_reduce<T, acc_t>(x, y, v, with_a ? &a : nullptr, kr, excl, S, G, &splits);
  char label[200];
  std::snprintf(label, sizeof label, "pair_reduce S %s %s N=%lld M=%lld d=%lld p=%lld scales=%zu excl=%d splits=%lld",
                tn, kname(kind), (long long)N, (long long)M, (long long)d, (long long)p, sigmas.size(), int(excl),
                (long long)splits);
  expect_close(label, S, S_ref, tol);
  if (with_a) {
    label[12] = 'G';
    expect_close(label, G, G_ref, tol);
  }
}

template <typename T, typename acc_t>
static void quad_case(const char* tn, int64_t N, int64_t d, int64_t P, KernelKind kind, std::vector<double> sigmas,
                      bool excl, double tol, unsigned seed, bool all_modes = true) {
  std::mt19937 rng(seed);
  const Mat<T> z(N, d, randn(rng, N * d, 0.4, 0.05));
  const Mat<T> w(N, P, randn(rng, N * P, 1.0)), a(N, P, randn(rng, N * P, 1.0));
  const RefKernel kr{kind, params_of(kind, sigmas, d)};
  std::vector<double> q_ref(P, 0.0), S_ref(N * P, 0.0), G_ref(N * d, 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) {
      if (excl && i == j) continue;
      double k, g;
      kr.eval(i == j ? 0.0 : r2_of(z.r, i, z.r, j, d), k, g);
      double aw = 0;
      for (int64_t c = 0; c < P; ++c) {
        q_ref[c] += w.r[i * P + c] * k * w.r[j * P + c];
        S_ref[i * P + c] += k * w.r[j * P + c];
        aw += a.r[i * P + c] * w.r[j * P + c];
      }
      for (int64_t c = 0; c < d; ++c) G_ref[i * d + c] += g * aw * (z.r[i * d + c] - z.r[j * d + c]);
    }
  const auto pl = K::plan_quad_form<acc_t>(N, d, P, true, true);
  char head[200], label[260];
  std::snprintf(head, sizeof head, "quad_form %s %s N=%lld d=%lld P=%lld scales=%zu excl=%d nb=%lld chunks=%lld tps=%lld",
                tn, kname(kind), (long long)N, (long long)d, (long long)P, sigmas.size(), int(excl), (long long)pl.nb,
                (long long)pl.chunks, (long long)pl.tps);
  const QuadRes v = quad_form<T, acc_t>(z, w, nullptr, kr, excl, false);
  std::snprintf(label, sizeof label, "%s q", head);
  expect_close(label, v.q, q_ref, tol);
  const QuadRes full = quad_form<T, acc_t>(z, w, &a, kr, excl, true);
  std::snprintf(label, sizeof label, "%s S", head);
  expect_close(label, full.S, S_ref, tol);
  std::snprintf(label, sizeof label, "%s G", head);
  expect_close(label, full.G, G_ref, tol);
  // per-round launches (taken when the grouped launches' copies of S and G would be too large)
  const QuadRes per_round = quad_form<T, acc_t>(z, w, &a, kr, excl, true, 0);
  std::snprintf(label, sizeof label, "  per-round launches: S");
  expect_close(label, per_round.S, S_ref, tol);
  std::snprintf(label, sizeof label, "  per-round launches: G");
  expect_close(label, per_round.G, G_ref, tol);
  std::vector<const QuadRes*> modes{&full, &per_round};
  QuadRes s_only, g_only;
  if (all_modes) {
    s_only = quad_form<T, acc_t>(z, w, nullptr, kr, excl, true);
    g_only = quad_form<T, acc_t>(z, w, &a, kr, excl, false);
    modes.push_back(&s_only);
    modes.push_back(&g_only);
    expect_true("  S alone == S with G, G alone == G with S (bitwise)",
                std::memcmp(s_only.S.data(), full.S.data(), full.S.size() * 8) == 0 &&
                    std::memcmp(g_only.G.data(), full.G.data(), full.G.size() * 8) == 0);
  }
  bool same = true;
  for (const QuadRes* m : modes) same = same && std::memcmp(m->q.data(), v.q.data(), P * sizeof(double)) == 0;
  std::snprintf(label, sizeof label, "  q bitwise equal with and without S/G (%zu modes)", modes.size() + 1);
  expect_true(label, same);
}

// The lossy case, as the op layer prepares it: x = 100 randn(n, 3), y = x + 0.01 randn (float32
// data), sigma 0.01. Points centred on the pooled mean and divided by a power of two in float32; the
// biased MMD^2 = w^T K w with w = [1/n; -1/n] by quad_form vs float64 on the same float32 data.
static void lossy_case(int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  const int64_t d = 3;
  auto xd = randn(rng, n * d, 100.0);
  auto e = randn(rng, n * d, 0.01);
  std::vector<float> xf(n * d), yf(n * d);
  for (int64_t i = 0; i < n * d; ++i) {
    xf[i] = float(xd[i]);
    yf[i] = float(xd[i] + e[i]);
  }
  std::vector<double> mean(d, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d; ++k) mean[k] += double(xf[i * d + k]) + double(yf[i * d + k]);
  for (auto& m : mean) m /= double(2 * n);
  std::vector<double> zc(2 * n * d);
  double peak = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d; ++k) {
      zc[i * d + k] = double(xf[i * d + k] - float(mean[k]));
      zc[(n + i) * d + k] = double(yf[i * d + k] - float(mean[k]));
      peak = std::max({peak, std::fabs(zc[i * d + k]), std::fabs(zc[(n + i) * d + k])});
    }
  int ex;
  std::frexp(peak, &ex);
  const double scale = std::ldexp(1.0, ex);
  for (auto& v : zc) v /= scale;  // exact in float: a power of two
  const double sigma = 0.01;
  std::vector<double> wv(2 * n);
  for (int64_t i = 0; i < 2 * n; ++i) wv[i] = i < n ? 1.0 / double(n) : -1.0 / double(n);
  const Mat<float> z(2 * n, d, zc), w(2 * n, 1, wv);
  const RefKernel kr{KernelKind::RBF, {0.5 / ((sigma / scale) * (sigma / scale))}};
  // float64 oracle on the float32 data, unscaled
  double ref = 0;
  for (int64_t i = 0; i < 2 * n; ++i)
    for (int64_t j = 0; j < 2 * n; ++j) {
      const float* pi = i < n ? &xf[i * d] : &yf[(i - n) * d];
      const float* pj = j < n ? &xf[j * d] : &yf[(j - n) * d];
      double r2 = 0;
      for (int64_t k = 0; k < d; ++k) r2 += (double(pi[k]) - double(pj[k])) * (double(pi[k]) - double(pj[k]));
      ref += wv[i] * wv[j] * std::exp(-r2 / (2 * sigma * sigma));
    }
  const double got = quad_form<float, float>(z, w, nullptr, kr, false, false).q[0];
  const double rel = std::fabs(got - ref) / std::fabs(ref);
  char label[200];
  std::snprintf(label, sizeof label, "lossy case n=%lld: float32 MMD^2 %.6g vs float64 %.6g, rel err %.2g (<= 1e-3)",
                (long long)n, got, ref, rel);
  expect_true(label, rel <= 1e-3);
}

int main() {
  // gram: odd sizes around the 64 / 32 tile edges; d around the 16-feature stages and vector widths
  gram_case<float, float>("f32", 70, 65, 5, KernelKind::RBF, {0.7, 2.0}, 2e-6, 1);
  gram_case<float, float>("f32", 33, 64, 20, KernelKind::IMQ, {1.0}, 2e-6, 2);
  gram_case<double, double>("f64", 35, 33, 17, KernelKind::RBF, {0.5, 1.0, 3.0}, 1e-13, 3);
  gram_case<__half, float>("f16", 20, 70, 8, KernelKind::RBF, {1.0}, 1e-2, 4);
  gram_case<__nv_bfloat16, float>("bf16", 65, 7, 3, KernelKind::IMQ, {1.0, 2.0}, 1e-2, 5);

  // pair_reduce: splits > 1 and = 1, narrow (p <= 4) and chunked S, a absent / present
  pair_reduce_case<float, float>("f32", 70, 131, 5, 3, true, false, KernelKind::RBF, {0.7, 2.0}, 2e-5, 11);
  pair_reduce_case<float, float>("f32", 129, 129, 20, 1, true, true, KernelKind::IMQ, {1.0}, 2e-5, 12);
  pair_reduce_case<float, float>("f32", 1, 7, 1, 33, true, false, KernelKind::RBF, {1.5}, 2e-5, 13);
  pair_reduce_case<float, float>("f32", 65, 66, 16, 5, true, false, KernelKind::RBF, {0.9, 1.3, 4.0}, 2e-5, 14);
  pair_reduce_case<double, double>("f64", 70, 45, 5, 3, true, false, KernelKind::IMQ, {0.5, 1.0}, 1e-12, 15);
  pair_reduce_case<double, double>("f64", 20, 290, 3, 2, true, false, KernelKind::RBF, {0.3}, 1e-12, 18);
  pair_reduce_case<__half, float>("f16", 40, 50, 8, 2, true, false, KernelKind::RBF, {1.0, 2.0}, 2e-5, 16);
  pair_reduce_case<__nv_bfloat16, float>("bf16", 67, 67, 24, 1, false, true, KernelKind::IMQ, {1.0}, 2e-5, 17);

  // quad_form: nb = 1, 2 (even: a half round), 3 (odd), 4, 5, 8; P = 1, 3, 17 (two column chunks); both
  // kernels; 1 and 3 scales; exclude_diagonal; q bitwise equal across modes
  quad_case<float, float>("f32", 1, 3, 1, KernelKind::RBF, {1.0}, false, 2e-5, 21);
  quad_case<float, float>("f32", 70, 5, 1, KernelKind::RBF, {0.5, 1.0, 2.0}, false, 2e-5, 22);
  quad_case<float, float>("f32", 129, 2, 3, KernelKind::IMQ, {1.0}, true, 2e-5, 23);
  quad_case<float, float>("f32", 100, 20, 17, KernelKind::RBF, {0.8}, true, 2e-5, 24);
  quad_case<double, double>("f64", 97, 7, 2, KernelKind::IMQ, {0.5, 1.0, 3.0}, false, 1e-12, 25);
  quad_case<double, double>("f64", 150, 3, 1, KernelKind::RBF, {1.0}, true, 1e-12, 26);
  // nb = 8: 5 rounds in 2 chunks of the value-only grid (q's slab order across chunks)
  quad_case<double, double>("f64", 250, 2, 3, KernelKind::RBF, {0.5}, false, 1e-12, 30, false);
  quad_case<__half, float>("f16", 66, 8, 1, KernelKind::RBF, {1.0}, false, 2e-5, 27, false);
  quad_case<__nv_bfloat16, float>("bf16", 65, 4, 3, KernelKind::IMQ, {1.0, 3.0}, true, 2e-5, 28, false);
  {  // N = 1: only the diagonal pair, r2 forced to 0: q = w^2 k(0), S = w k(0) exactly
    std::mt19937 rng(29);
    const RefKernel kr{KernelKind::RBF, {2.0, 0.5, 8.0}};
    const Mat<float> z(1, 16, randn(rng, 16, 0.3, 0.4)), w(1, 1, {0.5});
    const QuadRes o = quad_form<float, float>(z, w, &w, kr, false, true);
    expect_true("quad_form N=1: q == 0.25 * 3, S == 0.5 * 3, G == 0 exactly",
                o.q[0] == 0.75 && o.S[0] == 1.5 && o.G[0] == 0 && o.G[3] == 0);
  }
  lossy_case(250, 31);

  std::printf("%d checks, %d failures\n", g_checks, g_fail);
  return g_fail == 0 ? 0 : 1;
}
