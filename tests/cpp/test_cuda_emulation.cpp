// Runs the CUDA primitives of csrc/cuda/pair_kernels.cuh on the CPU through a host emulation of the CUDA
// thread model (tests/cpp/emu/: one std::thread per CUDA thread, std::barrier for __syncthreads), by the
// same torch-free drivers ops_cuda.cu calls (run_gram, run_pair_reduce, run_quad_form, run_stein_form:
// norms, grids, circulant rounds, slabs, final sums), and compares them with a float64 reference of reference.py's
// semantics written here independently (r2 from coordinate differences, the kernel formulas spelled out).
// Catches indexing, masking, barrier, scheduling and reduction-order bugs without a GPU; says nothing
// about speed, nor about device-only behaviour (the CUDA math library's exp, warp scheduling, memory
// model). Sizes are small: the emulation starts 256 threads per block.
// Batches (gram, pair_reduce, quad_form; grid.z): every problem of a batched call must be bitwise the 2-D
// call on that problem (the wrappers below make a 2-D call the batch of one, as ops_cuda.cu does) and
// match the reference.
#define INFOVAE_CUDA_EMULATION
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
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
// The five kernels of reference.py, spelled out in float64: distance kernels of r2 (g = -2 dk/dr2, 0 at
// r2 == 0), the polynomial of the dot product (h = dk/d(x.y)).
struct RefKernel {
  KernelKind kind;
  std::vector<double> params;
  bool dot() const { return kind == KernelKind::POLYNOMIAL; }
  // arg: r2, or x.y for the polynomial; g: the gradient weight g or h.
  void eval(double arg, double& k, double& g) const {
    k = g = 0;
    if (kind == KernelKind::POLYNOMIAL) {
      const double t = params[0] * arg + params[1];
      const int n = int(params[2]);
      k = std::pow(t, n);
      g = n * params[0] * std::pow(t, n - 1);
      return;
    }
    const double r = std::sqrt(arg);
    for (double c : params) {
      if (kind == KernelKind::RBF) {
        k += std::exp(-c * arg);
        g += 2.0 * c * std::exp(-c * arg);
      } else if (kind == KernelKind::IMQ) {
        const double ks = c / (c + arg);
        k += ks;
        g += 2.0 * ks * ks / c;
      } else if (kind == KernelKind::LAPLACIAN) {
        k += std::exp(-c * r);
        g += c * std::exp(-c * r) / r;
      } else {  // energy
        k += -c * r;
        g += c / r;
      }
    }
    if (arg == 0) g = 0;
  }
  // k(x, x) of a distance kernel: exact (r2 == 0)
  double self_value() const { return kind == KernelKind::ENERGY ? 0.0 : double(params.size()); }
};

static double r2_of(const std::vector<double>& x, int64_t i, const std::vector<double>& y, int64_t j, int64_t d) {
  double s = 0;
  for (int64_t k = 0; k < d; ++k) s += (x[i * d + k] - y[j * d + k]) * (x[i * d + k] - y[j * d + k]);
  return s;
}

static double dot_of(const std::vector<double>& x, int64_t i, const std::vector<double>& y, int64_t j, int64_t d) {
  double s = 0;
  for (int64_t k = 0; k < d; ++k) s += x[i * d + k] * y[j * d + k];
  return s;
}

// k and g (or h) of the pair (x_i, y_j); self: the same point (quad_form's i == j; r2 = 0 exactly).
static void ref_pair(const RefKernel& kr, const std::vector<double>& x, int64_t i, const std::vector<double>& y,
                     int64_t j, int64_t d, bool self, double& k, double& g) {
  if (kr.dot()) {
    kr.eval(dot_of(x, i, y, j, d), k, g);
  } else {
    kr.eval(self ? 0.0 : r2_of(x, i, y, j, d), k, g);
  }
}

// Coordinate c of the gradient term of the pair: g (x_i - y_j) for a distance kernel, -h y_j for the
// polynomial (times a_i . v_j by the caller).
static double ref_grad_term(const RefKernel& kr, double g, const std::vector<double>& x, int64_t i,
                            const std::vector<double>& y, int64_t j, int64_t d, int64_t c) {
  return kr.dot() ? -g * y[j * d + c] : g * (x[i * d + c] - y[j * d + c]);
}

// The primitives in float64 on the (rounded) inputs: rows of x (N, d), y (M, d), v (M, p), a (N, p).
static std::vector<double> ref_gram(const RefKernel& kr, const std::vector<double>& x, const std::vector<double>& y,
                                    int64_t N, int64_t M, int64_t d, bool derivative) {
  std::vector<double> out(N * M);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < M; ++j) {
      double k, g;
      ref_pair(kr, x, i, y, j, d, false, k, g);
      out[i * M + j] = derivative ? g : k;
    }
  return out;
}

// a == nullptr: G is empty. quad_form's sums are ref_pair_reduce's with y = v's points = x and self pairs
// at r2 = 0 exactly (self_pairs).
static void ref_pair_reduce(const RefKernel& kr, const std::vector<double>& x, const std::vector<double>& y,
                            const std::vector<double>& v, const std::vector<double>* a, int64_t N, int64_t M,
                            int64_t d, int64_t p, bool excl, bool self_pairs, std::vector<double>& S,
                            std::vector<double>& G) {
  S.assign(N * p, 0.0);
  G.assign(a ? N * d : 0, 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < M; ++j) {
      if (excl && i == j) continue;
      double k, g;
      ref_pair(kr, x, i, y, j, d, self_pairs && i == j, k, g);
      double av = 0;
      for (int64_t c = 0; c < p; ++c) {
        S[i * p + c] += k * v[j * p + c];
        if (a) av += (*a)[i * p + c] * v[j * p + c];
      }
      if (a)
        for (int64_t c = 0; c < d; ++c) G[i * d + c] += av * ref_grad_term(kr, g, x, i, y, j, d, c);
    }
}

// q_p = sum_i w_ip S_ip with S = K w (self pairs at r2 = 0).
static void ref_quad_form(const RefKernel& kr, const std::vector<double>& z, const std::vector<double>& w,
                          const std::vector<double>* a, int64_t N, int64_t d, int64_t P, bool excl,
                          std::vector<double>& q, std::vector<double>& S, std::vector<double>& G) {
  ref_pair_reduce(kr, z, z, w, a, N, N, d, P, excl, true, S, G);
  q.assign(P, 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < P; ++c) q[c] += w[i * P + c] * S[i * P + c];
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

static const char* kname(KernelKind k) {
  switch (k) {
    case KernelKind::RBF: return "rbf";
    case KernelKind::IMQ: return "imq";
    case KernelKind::LAPLACIAN: return "laplacian";
    case KernelKind::ENERGY: return "energy";
    default: return "polynomial";
  }
}

// Parameters of the new kernels as kernels.py's kernel_params: laplacian c_s = 1 / sigma_s, energy [p],
// polynomial [gamma, coef, degree].
static RefKernel laplacian(std::vector<double> sigmas) {
  RefKernel k{KernelKind::LAPLACIAN, {}};
  for (double s : sigmas) k.params.push_back(1.0 / s);
  return k;
}
static RefKernel energy(double p) { return RefKernel{KernelKind::ENERGY, {p}}; }
static RefKernel polynomial(double gamma, double coef, int degree) {
  return RefKernel{KernelKind::POLYNOMIAL, {gamma, coef, double(degree)}};
}

// ---- the primitives through the drivers ----
// A batch as the op layer passes it: problem b's rows after problem b - 1's (a contiguous (B, rows, cols)
// tensor), params one row per problem; every problem of a batch has the same shapes. A 2-D call is the
// batch of one (ops_cuda.cu calls the drivers so).
template <typename T>
static std::vector<T> stacked(const std::vector<Mat<T>>& ms) {
  std::vector<T> all;
  for (const Mat<T>& m : ms) all.insert(all.end(), m.t.begin(), m.t.end());
  return all;
}

static std::vector<double> stacked_params(const std::vector<RefKernel>& ks) {
  std::vector<double> all;
  for (const RefKernel& k : ks) all.insert(all.end(), k.params.begin(), k.params.end());
  return all;
}

template <typename V>
static auto data_or_null(V& v) -> decltype(v.data()) {
  return v.empty() ? nullptr : v.data();
}

// Problem b's n values of a batched output.
static std::vector<double> part(const std::vector<double>& all, int64_t b, int64_t n) {
  return std::vector<double>(all.begin() + b * n, all.begin() + (b + 1) * n);
}

template <typename T, typename acc_t>
static std::vector<std::vector<double>> gram_batch(const std::vector<Mat<T>>& x, const std::vector<Mat<T>>& y,
                                                   const std::vector<RefKernel>& kr, bool derivative) {
  const int64_t B = int64_t(x.size()), N = x[0].rows, M = y[0].rows, d = x[0].cols;
  const std::vector<T> xs = stacked(x), ys = stacked(y);
  const std::vector<double> params = stacked_params(kr);
  std::vector<acc_t> xn(B * N), yn(B * M), xm(B * K::row_blocks<acc_t>(N)), ym(B * K::row_blocks<acc_t>(M));
  std::vector<T> out(B * N * M);
  const K::GramArgs g{B, N, M, d, kr[0].kind, params.data(), int(kr[0].params.size()), derivative,
                      vec_ok(data_or_null(xs), d), vec_ok(data_or_null(ys), d)};
  K::run_gram<T, acc_t>(data_or_null(xs), data_or_null(ys), g, xn.data(), yn.data(), xm.data(), ym.data(),
                        out.data(), nullptr);
  std::vector<std::vector<double>> o(B, std::vector<double>(N * M));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N * M; ++i) o[b][i] = back(out[b * N * M + i]);
  return o;
}

template <typename T, typename acc_t>
static std::vector<double> gram(const Mat<T>& x, const Mat<T>& y, const RefKernel& kr, bool derivative) {
  return gram_batch<T, acc_t>({x}, {y}, {kr}, derivative)[0];
}

// a empty: no a (and no G).
template <typename T, typename acc_t>
static void pair_reduce_batch(const std::vector<Mat<T>>& x, const std::vector<Mat<T>>& y,
                              const std::vector<Mat<T>>& v, const std::vector<Mat<T>>& a,
                              const std::vector<RefKernel>& kr, bool excl, std::vector<std::vector<double>>& S,
                              std::vector<std::vector<double>>& G, int64_t* splits) {
  const int64_t B = int64_t(x.size()), N = x[0].rows, M = y[0].rows, d = x[0].cols, p = v[0].cols;
  const bool has_a = !a.empty();
  const auto pl = K::plan_pair_reduce<acc_t>(N, M, d, p, has_a);
  *splits = pl.splits;
  const std::vector<T> xs = stacked(x), ys = stacked(y), vs = stacked(v), as = stacked(a);
  const std::vector<double> params = stacked_params(kr);
  std::vector<acc_t> xn(B * N), yn(B * M), xm(B * K::row_blocks<acc_t>(N)), ym(B * K::row_blocks<acc_t>(M));
  std::vector<double> Ss(pl.splits > 1 ? B * pl.splits * N * p : 0), Gs(pl.splits > 1 && has_a ? B * pl.splits * N * d : 0);
  std::vector<double> S_all(B * N * p, 0.0), G_all(has_a ? B * N * d : 0, 0.0);
  const T* ap = data_or_null(as);
  const K::PairReduceArgs r{B, N, M, d, p, kr[0].kind, params.data(), int(kr[0].params.size()), excl,
                            vec_ok(data_or_null(xs), d), vec_ok(data_or_null(ys), d), vec_ok(ap, p),
                            vec_ok(data_or_null(vs), p)};
  K::run_pair_reduce<T, acc_t>(data_or_null(xs), data_or_null(ys), data_or_null(vs), ap, r, pl, xn.data(), yn.data(),
                               xm.data(), ym.data(), data_or_null(Ss), data_or_null(Gs), S_all.data(),
                               has_a ? G_all.data() : nullptr, nullptr);
  S.assign(B, {});
  G.assign(B, {});
  for (int64_t b = 0; b < B; ++b) {
    S[b] = part(S_all, b, N * p);
    if (has_a) G[b] = part(G_all, b, N * d);
  }
}

template <typename T, typename acc_t>
static void pair_reduce(const Mat<T>& x, const Mat<T>& y, const Mat<T>& v, const Mat<T>* a, const RefKernel& kr,
                        bool excl, std::vector<double>& S, std::vector<double>& G, int64_t* splits) {
  std::vector<std::vector<double>> Sb, Gb;
  pair_reduce_batch<T, acc_t>({x}, {y}, {v}, a ? std::vector<Mat<T>>{*a} : std::vector<Mat<T>>{}, {kr}, excl, Sb, Gb,
                              splits);
  S = Sb[0], G = Gb[0];
}

struct QuadRes {
  std::vector<double> q, S, G;
};

// a empty: no a (and no G). max_copy_bytes = 0 forces the per-round launches (otherwise grouped at these
// sizes).
template <typename T, typename acc_t>
static std::vector<QuadRes> quad_form_batch(const std::vector<Mat<T>>& z, const std::vector<Mat<T>>& w,
                                            const std::vector<Mat<T>>& a, const std::vector<RefKernel>& kr, bool excl,
                                            bool row_sums, int64_t max_copy_bytes = K::kMaxSlabBytes) {
  const int64_t B = int64_t(z.size()), N = z[0].rows, d = z[0].cols, P = w[0].cols;
  const bool has_a = !a.empty();
  const auto pl = K::plan_quad_form<acc_t>(N, d, P, row_sums, has_a, max_copy_bytes);
  const std::vector<T> zs = stacked(z), ws = stacked(w), as = stacked(a);
  const std::vector<double> params = stacked_params(kr);
  std::vector<acc_t> zn(B * N), zm(B * pl.nb);
  std::vector<double> qslab(B * pl.nb * pl.chunks * P, 0.0), Sbuf(row_sums ? B * 2 * pl.copies * N * P : 0, 0.0),
      Gbuf(has_a ? B * 2 * pl.copies * N * d : 0, 0.0);
  std::vector<double> q(B * P, 0.0), S(row_sums ? B * N * P : 0, 0.0), G(has_a ? B * N * d : 0, 0.0);
  K::QuadArgs<T, acc_t> A{};
  A.z = data_or_null(zs), A.w = data_or_null(ws), A.a = data_or_null(as);
  A.batch = B, A.N = N, A.d = d, A.P = P;
  A.kind = kr[0].kind, A.params = params.data(), A.n_scales = int(kr[0].params.size());
  A.exclude_diagonal = excl;
  A.vec_z = vec_ok(A.z, d), A.vec_w = vec_ok(A.w, P), A.vec_a = vec_ok(A.a, P);
  A.nb = pl.nb, A.tps = pl.tps, A.chunks = pl.chunks, A.copies = pl.copies;
  A.qslab = qslab.data();
  A.Sbuf = row_sums ? Sbuf.data() : nullptr;
  A.Gbuf = has_a ? Gbuf.data() : nullptr;
  K::run_quad_form<T, acc_t>(A, pl, zn.data(), zm.data(), q.data(), row_sums ? S.data() : nullptr,
                             has_a ? G.data() : nullptr, nullptr);
  std::vector<QuadRes> o(B);
  for (int64_t b = 0; b < B; ++b) {
    o[b].q = part(q, b, P);
    if (row_sums) o[b].S = part(S, b, N * P);
    if (has_a) o[b].G = part(G, b, N * d);
  }
  return o;
}

template <typename T, typename acc_t>
static QuadRes quad_form(const Mat<T>& z, const Mat<T>& w, const Mat<T>* a, const RefKernel& kr, bool excl,
                         bool row_sums, int64_t max_copy_bytes = K::kMaxSlabBytes) {
  return quad_form_batch<T, acc_t>({z}, {w}, a ? std::vector<Mat<T>>{*a} : std::vector<Mat<T>>{}, {kr}, excl,
                                   row_sums, max_copy_bytes)[0];
}

// ---- cases ----
template <typename T, typename acc_t>
static void gram_case(const char* tn, int64_t N, int64_t M, int64_t d, const RefKernel& kr, double tol,
                      unsigned seed) {
  std::mt19937 rng(seed);
  const Mat<T> x(N, d, randn(rng, N * d, 0.4)), y(M, d, randn(rng, M * d, 0.4, 0.1));
  for (bool deriv : {false, true}) {
    const std::vector<double> ref = ref_gram(kr, x.r, y.r, N, M, d, deriv);
    char label[200];
    std::snprintf(label, sizeof label, "gram %s %s N=%lld M=%lld d=%lld params=%zu derivative=%d", tn, kname(kr.kind),
                  (long long)N, (long long)M, (long long)d, kr.params.size(), int(deriv));
    expect_close(label, gram<T, acc_t>(x, y, kr, deriv), ref, sizeof(T) == 2 ? 1e-2 : tol);
  }
  if (kr.dot()) return;
  // a point paired with itself: r2 == 0 exactly, so k = k(0) (n_scales; 0 for energy) and g = 0 exactly
  // (points off the origin, so the expansion's norms and dots are not trivially 0)
  const Mat<T> u(N, d, randn(rng, N * d, 0.3, 0.4));
  const auto k = gram<T, acc_t>(u, u, kr, false), g = gram<T, acc_t>(u, u, kr, true);
  bool exact = true;
  for (int64_t i = 0; i < N; ++i) exact = exact && k[i * N + i] == kr.self_value() && g[i * N + i] == 0.0;
  char label[200];
  std::snprintf(label, sizeof label, "gram %s %s N=%lld d=%lld: self-distance 0 (k(x,x) == %g, g(x,x) == 0)", tn,
                kname(kr.kind), (long long)N, (long long)d, kr.self_value());
  expect_true(label, exact);
}

template <typename T, typename acc_t>
static void gram_case(const char* tn, int64_t N, int64_t M, int64_t d, KernelKind kind, std::vector<double> sigmas,
                      double tol, unsigned seed) {
  gram_case<T, acc_t>(tn, N, M, d, RefKernel{kind, params_of(kind, sigmas, d)}, tol, seed);
}

// dup > 0: x holds runs of dup identical rows and y = x: pairs at distance 0 on and off the diagonal.
template <typename T, typename acc_t>
static void pair_reduce_case(const char* tn, int64_t N, int64_t M, int64_t d, int64_t p, bool with_a, bool excl,
                             const RefKernel& kr, double tol, unsigned seed, int64_t dup = 0) {
  if (excl || dup > 0) M = N;
  std::mt19937 rng(seed);
  std::vector<double> xv = randn(rng, N * d, 0.4);
  if (dup > 0)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < d; ++c) xv[i * d + c] = xv[(i - i % dup) * d + c];
  const Mat<T> x(N, d, xv);
  const Mat<T> y = (excl || dup > 0) ? x : Mat<T>(M, d, randn(rng, M * d, 0.4, 0.1));
  const Mat<T> v(M, p, randn(rng, M * p, 1.0)), a(N, p, randn(rng, N * p, 1.0));
  std::vector<double> S_ref, G_ref;
  ref_pair_reduce(kr, x.r, y.r, v.r, with_a ? &a.r : nullptr, N, M, d, p, excl, false, S_ref, G_ref);
  std::vector<double> S, G;
  int64_t splits;
  pair_reduce<T, acc_t>(x, y, v, with_a ? &a : nullptr, kr, excl, S, G, &splits);
  char label[200];
  std::snprintf(label, sizeof label,
                "pair_reduce S %s %s N=%lld M=%lld d=%lld p=%lld params=%zu excl=%d splits=%lld%s", tn,
                kname(kr.kind), (long long)N, (long long)M, (long long)d, (long long)p, kr.params.size(), int(excl),
                (long long)splits, dup > 0 ? " duplicates" : "");
  expect_close(label, S, S_ref, tol);
  if (with_a) {
    label[12] = 'G';
    expect_close(label, G, G_ref, tol);
  }
}

template <typename T, typename acc_t>
static void pair_reduce_case(const char* tn, int64_t N, int64_t M, int64_t d, int64_t p, bool with_a, bool excl,
                             KernelKind kind, std::vector<double> sigmas, double tol, unsigned seed) {
  pair_reduce_case<T, acc_t>(tn, N, M, d, p, with_a, excl, RefKernel{kind, params_of(kind, sigmas, d)}, tol, seed);
}

// dup > 0: z holds runs of dup identical rows.
template <typename T, typename acc_t>
static void quad_case(const char* tn, int64_t N, int64_t d, int64_t P, const RefKernel& kr, bool excl, double tol,
                      unsigned seed, bool all_modes = true, int64_t dup = 0) {
  std::mt19937 rng(seed);
  std::vector<double> zv = randn(rng, N * d, 0.4, 0.05);
  if (dup > 0)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < d; ++c) zv[i * d + c] = zv[(i - i % dup) * d + c];
  const Mat<T> z(N, d, zv);
  const Mat<T> w(N, P, randn(rng, N * P, 1.0)), a(N, P, randn(rng, N * P, 1.0));
  std::vector<double> q_ref, S_ref, G_ref;
  ref_quad_form(kr, z.r, w.r, &a.r, N, d, P, excl, q_ref, S_ref, G_ref);
  const auto pl = K::plan_quad_form<acc_t>(N, d, P, true, true);
  char head[200], label[260];
  std::snprintf(head, sizeof head,
                "quad_form %s %s N=%lld d=%lld P=%lld params=%zu excl=%d nb=%lld chunks=%lld tps=%lld%s", tn,
                kname(kr.kind), (long long)N, (long long)d, (long long)P, kr.params.size(), int(excl),
                (long long)pl.nb, (long long)pl.chunks, (long long)pl.tps, dup > 0 ? " duplicates" : "");
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

template <typename T, typename acc_t>
static void quad_case(const char* tn, int64_t N, int64_t d, int64_t P, KernelKind kind, std::vector<double> sigmas,
                      bool excl, double tol, unsigned seed, bool all_modes = true) {
  quad_case<T, acc_t>(tn, N, d, P, RefKernel{kind, params_of(kind, sigmas, d)}, excl, tol, seed, all_modes);
}

// ---- batches: each problem of a batched call is bitwise its 2-D call, and matches the oracle ----

static bool bitwise_equal(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}

static void append(std::vector<double>& all, const std::vector<double>& part) {
  all.insert(all.end(), part.begin(), part.end());
}

// Problem b of a batch: its own params (bandwidths, energy power, polynomial gamma / coef / degree) and
// where its points lie. rbf's problem 1 has narrow bandwidths and close points far from the origin, so
// in float32 its tiles take coordinate differences (the lossy rule, from its own params and norms) while
// the other problems' take the expansion.
struct BatchProblem {
  RefKernel kr;
  double spread, shift;
};

static BatchProblem problem_of(KernelKind kind, int64_t b, int64_t d) {
  const double f = 1.0 + 0.5 * double(b);
  switch (kind) {
    case KernelKind::RBF:
      if (b == 1) return {RefKernel{kind, params_of(kind, {0.05, 0.2}, d)}, 0.05, 4.0};
      return {RefKernel{kind, params_of(kind, {0.7 * f, 2.0 * f}, d)}, 0.4, 0.1 * double(b)};
    case KernelKind::LAPLACIAN: return {laplacian({0.7 * f}), 0.4, 0.1 * double(b)};
    case KernelKind::ENERGY: return {energy(std::ldexp(1.0, int(b))), 0.4, 0.1 * double(b)};
    default: return {polynomial(0.2 / f, double(b % 2), 1 + int(b % 3)), 0.4, 0.1 * double(b)};
  }
}

template <typename T, typename acc_t>
static void gram_batch_case(const char* tn, int64_t B, int64_t N, int64_t M, int64_t d, KernelKind kind, double tol,
                            unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<Mat<T>> x, y;
  std::vector<RefKernel> kr;
  for (int64_t b = 0; b < B; ++b) {
    const BatchProblem pr = problem_of(kind, b, d);
    x.emplace_back(N, d, randn(rng, N * d, pr.spread, pr.shift));
    y.emplace_back(M, d, randn(rng, M * d, pr.spread, pr.shift + 0.05));
    kr.push_back(pr.kr);
  }
  for (bool deriv : {false, true}) {
    const auto batched = gram_batch<T, acc_t>(x, y, kr, deriv);
    bool same = true;
    std::vector<double> got, ref;
    for (int64_t b = 0; b < B; ++b) {
      same = same && bitwise_equal(batched[b], gram<T, acc_t>(x[b], y[b], kr[b], deriv));
      append(got, batched[b]);
      append(ref, ref_gram(kr[b], x[b].r, y[b].r, N, M, d, deriv));
    }
    char label[200];
    std::snprintf(label, sizeof label, "batch gram %s %s B=%lld N=%lld M=%lld d=%lld derivative=%d: vs oracle", tn,
                  kname(kind), (long long)B, (long long)N, (long long)M, (long long)d, int(deriv));
    expect_close(label, got, ref, tol);
    expect_true("  each problem == its 2-D call (bitwise)", same);
  }
}

template <typename T, typename acc_t>
static void pair_reduce_batch_case(const char* tn, int64_t B, int64_t N, int64_t M, int64_t d, int64_t p, bool with_a,
                                   bool excl, KernelKind kind, double tol, unsigned seed) {
  if (excl) M = N;
  std::mt19937 rng(seed);
  std::vector<Mat<T>> x, y, v, a;
  std::vector<RefKernel> kr;
  for (int64_t b = 0; b < B; ++b) {
    const BatchProblem pr = problem_of(kind, b, d);
    x.emplace_back(N, d, randn(rng, N * d, pr.spread, pr.shift));
    y.push_back(excl ? x.back() : Mat<T>(M, d, randn(rng, M * d, pr.spread, pr.shift + 0.05)));
    v.emplace_back(M, p, randn(rng, M * p, 1.0));
    if (with_a) a.emplace_back(N, p, randn(rng, N * p, 1.0));
    kr.push_back(pr.kr);
  }
  std::vector<std::vector<double>> S, G;
  int64_t splits;
  pair_reduce_batch<T, acc_t>(x, y, v, a, kr, excl, S, G, &splits);
  bool same = true;
  std::vector<double> S_got, G_got, S_ref, G_ref;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> S1, G1, Sr, Gr;
    int64_t splits1;
    pair_reduce<T, acc_t>(x[b], y[b], v[b], with_a ? &a[b] : nullptr, kr[b], excl, S1, G1, &splits1);
    same = same && bitwise_equal(S[b], S1) && bitwise_equal(G[b], G1);
    ref_pair_reduce(kr[b], x[b].r, y[b].r, v[b].r, with_a ? &a[b].r : nullptr, N, M, d, p, excl, false, Sr, Gr);
    append(S_got, S[b]), append(G_got, G[b]), append(S_ref, Sr), append(G_ref, Gr);
  }
  char label[200];
  std::snprintf(label, sizeof label,
                "batch pair_reduce %s %s B=%lld N=%lld M=%lld d=%lld p=%lld a=%d excl=%d splits=%lld: S vs oracle", tn,
                kname(kind), (long long)B, (long long)N, (long long)M, (long long)d, (long long)p, int(with_a),
                int(excl), (long long)splits);
  expect_close(label, S_got, S_ref, tol);
  if (with_a) expect_close("  G vs oracle", G_got, G_ref, tol);
  expect_true("  each problem's S and G == its 2-D call's (bitwise)", same);
}

// The modes of quad_form: value only, S and G (grouped launches); all_modes: also S and G by per-round
// launches, S alone, G alone.
template <typename T, typename acc_t>
static void quad_batch_case(const char* tn, int64_t B, int64_t N, int64_t d, int64_t P, KernelKind kind, bool excl,
                            double tol, unsigned seed, bool all_modes) {
  std::mt19937 rng(seed);
  std::vector<Mat<T>> z, w, a;
  std::vector<RefKernel> kr;
  for (int64_t b = 0; b < B; ++b) {
    const BatchProblem pr = problem_of(kind, b, d);
    z.emplace_back(N, d, randn(rng, N * d, pr.spread, pr.shift));
    w.emplace_back(N, P, randn(rng, N * P, 1.0));
    a.emplace_back(N, P, randn(rng, N * P, 1.0));
    kr.push_back(pr.kr);
  }
  struct Mode {
    const char* name;
    bool grad, row_sums;
    int64_t max_copy_bytes;
  };
  std::vector<Mode> modes{{"value", false, false, K::kMaxSlabBytes}, {"S+G", true, true, K::kMaxSlabBytes}};
  if (all_modes)
    modes.insert(modes.end(), {{"S+G per-round", true, true, 0}, {"S", false, true, K::kMaxSlabBytes},
                               {"G", true, false, K::kMaxSlabBytes}});
  for (const Mode& m : modes) {
    const std::vector<Mat<T>> no_a;
    const auto batched = quad_form_batch<T, acc_t>(z, w, m.grad ? a : no_a, kr, excl, m.row_sums, m.max_copy_bytes);
    bool same = true;
    std::vector<double> q_got, S_got, G_got, q_ref, S_ref, G_ref;
    for (int64_t b = 0; b < B; ++b) {
      const QuadRes one = quad_form<T, acc_t>(z[b], w[b], m.grad ? &a[b] : nullptr, kr[b], excl, m.row_sums,
                                              m.max_copy_bytes);
      same = same && bitwise_equal(batched[b].q, one.q) && bitwise_equal(batched[b].S, one.S) &&
             bitwise_equal(batched[b].G, one.G);
      std::vector<double> q, S, G;
      ref_quad_form(kr[b], z[b].r, w[b].r, &a[b].r, N, d, P, excl, q, S, G);
      append(q_got, batched[b].q), append(S_got, batched[b].S), append(G_got, batched[b].G);
      append(q_ref, q), append(S_ref, S), append(G_ref, G);
    }
    char label[200];
    std::snprintf(label, sizeof label, "batch quad_form %s %s B=%lld N=%lld d=%lld P=%lld excl=%d %s: q vs oracle", tn,
                  kname(kind), (long long)B, (long long)N, (long long)d, (long long)P, int(excl), m.name);
    expect_close(label, q_got, q_ref, tol);
    if (m.row_sums) expect_close("  S vs oracle", S_got, S_ref, tol);
    if (m.grad) expect_close("  G vs oracle", G_got, G_ref, tol);
    expect_true("  each problem's q, S, G == its 2-D call's (bitwise)", same);
  }
}

// ---- Stein primitives ----
// The Langevin Stein kernel of kernels.py's stein_kernel, spelled out in float64: r2 and the cross term
// (s_j - s_i).(x_i - x_j) from coordinate differences, phi and its r2-derivatives by pow / exp per scale.
struct RefStein {
  SteinBase base;
  double beta, c;
  std::vector<double> sigmas;
  std::vector<double> params() const {
    std::vector<double> p = {beta, c};
    p.insert(p.end(), sigmas.begin(), sigmas.end());
    return p;
  }
  double u(const std::vector<double>& x, const std::vector<double>& s, int64_t i, int64_t j, int64_t d) const {
    double m[4];
    matrices(x, s, i, j, d, m);
    return m[0];
  }
  // m = (u, phi, phi', A) of the pair, A = phi' ss + 2 phi'' cross - 2 d phi'' - 4 phi''' r2 - 4 phi''.
  void matrices(const std::vector<double>& x, const std::vector<double>& s, int64_t i, int64_t j, int64_t d,
                double m[4]) const {
    double r2 = 0, ss = 0, cross = 0;
    for (int64_t k = 0; k < d; ++k) {
      const double dx = x[i * d + k] - x[j * d + k];
      r2 += dx * dx;
      ss += s[i * d + k] * s[j * d + k];
      cross += (s[j * d + k] - s[i * d + k]) * dx;
    }
    double phi = 0, d1 = 0, d2 = 0, d3 = 0;
    for (double sg : sigmas) {
      const double inv = 1.0 / (sg * sg);
      if (base == SteinBase::RBF) {
        const double a = 0.5 * inv, e = std::exp(-a * r2);
        phi += e, d1 += -a * e, d2 += a * a * e, d3 += -a * a * a * e;
      } else {
        const double b = c * c + r2 * inv;
        phi += std::pow(b, beta);
        d1 += beta * inv * std::pow(b, beta - 1);
        d2 += beta * (beta - 1) * inv * inv * std::pow(b, beta - 2);
        d3 += beta * (beta - 1) * (beta - 2) * inv * inv * inv * std::pow(b, beta - 3);
      }
    }
    m[0] = phi * ss + 2 * d1 * cross - 2 * double(d) * d1 - 4 * d2 * r2;
    m[1] = phi;
    m[2] = d1;
    m[3] = d1 * ss + 2 * d2 * cross - 2 * double(d) * d2 - 4 * d3 * r2 - 4 * d2;
  }
  std::string label() const {
    if (base == SteinBase::RBF) return "rbf";
    char b[40];
    std::snprintf(b, sizeof b, "imq(beta=%g,c=%g)", beta, c);
    return b;
  }
};

template <typename T, typename acc_t>
static std::vector<double> stein_form(const Mat<T>& x, const Mat<T>& s, const Mat<T>& w, const RefStein& rs,
                                      bool excl, int64_t* chunks) {
  const int64_t N = x.rows, d = x.cols, P = w.cols;
  const auto pl = K::plan_quad_form<acc_t>(N, d, P, false, false);
  *chunks = pl.chunks;
  const std::vector<double> pv = rs.params();
  std::vector<double> qslab(pl.nb * pl.chunks * P, 0.0), q(P, 0.0);
  K::SteinArgs<T> A{};
  A.x = x.p(), A.s = s.p(), A.w = w.p();
  A.N = N, A.d = d, A.P = P;
  A.base = rs.base, A.params = pv.data(), A.n_params = int(pv.size());
  A.exclude_diagonal = excl, A.vec_x = vec_ok(A.x, d), A.vec_s = vec_ok(A.s, d);
  A.nb = pl.nb, A.tps = pl.tps, A.chunks = pl.chunks;
  A.slab = qslab.data();
  K::run_stein_form<T, acc_t>(A, q.data(), nullptr);
  return q;
}

// q_p = sum_ij w_ip u_ij w_jp vs float64 on the same (rounded) data; error relative to max_p |q_p|.
template <typename T, typename acc_t>
static void stein_case(const char* tn, int64_t N, int64_t d, int64_t P, const RefStein& rs, bool excl, double tol,
                       unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<double> xv = randn(rng, N * d, 0.6), sv = randn(rng, N * d, 0.3);
  for (int64_t e = 0; e < N * d; ++e) sv[e] -= xv[e];  // a score like that of N(0, 1)
  const Mat<T> x(N, d, xv), s(N, d, sv), w(N, P, randn(rng, N * P, 1.0, 0.5));
  std::vector<double> ref(P, 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) {
      if (excl && i == j) continue;
      const double u = rs.u(x.r, s.r, i, j, d);
      for (int64_t p = 0; p < P; ++p) ref[p] += w.r[i * P + p] * u * w.r[j * P + p];
    }
  int64_t chunks;
  const std::vector<double> q = stein_form<T, acc_t>(x, s, w, rs, excl, &chunks);
  double err = 0, scale = 0;
  bool finite = true;
  for (int64_t p = 0; p < P; ++p) {
    finite = finite && std::isfinite(q[p]);
    err = std::max(err, std::fabs(q[p] - ref[p]));
    scale = std::max(scale, std::fabs(ref[p]));
  }
  char label[200];
  std::snprintf(label, sizeof label, "stein_form %s %s N=%lld d=%lld P=%lld sigmas=%zu excl=%d chunks=%lld rel %.1e",
                tn, rs.label().c_str(), (long long)N, (long long)d, (long long)P, rs.sigmas.size(), int(excl),
                (long long)chunks, scale > 0 ? err / scale : err);
  // N = 1 with exclude_diagonal: no pair, q == 0 exactly
  report(finite && (scale == 0 ? err == 0 : err <= tol * scale), label, err, scale);
}

// R (N, 4, 1 + 2d) of stein_moments through run_stein_moments (slabs when the plan has several splits).
template <typename T, typename acc_t>
static std::vector<double> stein_moments(const Mat<T>& x, const Mat<T>& s, const Mat<T>& w, const RefStein& rs,
                                         bool excl, int64_t* splits) {
  const int64_t N = x.rows, d = x.cols, Q = 1 + 2 * d;
  const auto pl = K::plan_pair_reduce<acc_t>(N, N, 0, 4 * Q, false);
  *splits = pl.splits;
  const std::vector<double> pv = rs.params();
  std::vector<double> slabs(pl.splits > 1 ? pl.splits * N * 4 * Q : 0, 0.0), R(N * 4 * Q, 0.0);
  K::SteinArgs<T> A{};
  A.x = x.p(), A.s = s.p(), A.w = w.p();
  A.N = N, A.d = d, A.P = 1;
  A.base = rs.base, A.params = pv.data(), A.n_params = int(pv.size());
  A.exclude_diagonal = excl, A.vec_x = vec_ok(A.x, d), A.vec_s = vec_ok(A.s, d);
  A.nb = pl.blocks, A.tps = pl.tps, A.chunks = pl.splits;
  A.slab = slabs.empty() ? nullptr : slabs.data();
  K::run_stein_moments<T, acc_t>(A, R.data(), nullptr);
  return R;
}

// R[i][k] = sum_j M^k_ij [w_j, w_j x_j, w_j s_j] in the columns the gradient reads (U: w; phi: w s; phi': all;
// A: w, w x; the others 0) vs float64 (RefStein::matrices); error relative to max |R|.
template <typename T, typename acc_t>
static void stein_moments_case(const char* tn, int64_t N, int64_t d, const RefStein& rs, bool excl, double tol,
                               unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<double> xv = randn(rng, N * d, 0.6), sv = randn(rng, N * d, 0.3);
  for (int64_t e = 0; e < N * d; ++e) sv[e] -= xv[e];
  const Mat<T> x(N, d, xv), s(N, d, sv), w(N, 1, randn(rng, N, 1.0, 0.5));
  const int64_t Q = 1 + 2 * d;
  const int64_t first[4] = {0, 1 + d, 0, 0}, end[4] = {1, Q, Q, 1 + d};
  std::vector<double> ref(N * 4 * Q, 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) {
      if (excl && i == j) continue;
      double m[4];
      rs.matrices(x.r, s.r, i, j, d, m);
      for (int k = 0; k < 4; ++k)
        for (int64_t c = first[k]; c < end[k]; ++c) {
          const double f = c == 0 ? 1.0 : c <= d ? x.r[j * d + c - 1] : s.r[j * d + c - 1 - d];
          ref[(i * 4 + k) * Q + c] += m[k] * w.r[j] * f;
        }
    }
  int64_t splits;
  const std::vector<double> R = stein_moments<T, acc_t>(x, s, w, rs, excl, &splits);
  double err = 0, scale = 0;
  bool finite = R.size() == ref.size();
  for (size_t e = 0; e < ref.size() && finite; ++e) {
    finite = std::isfinite(R[e]);
    err = std::max(err, std::fabs(R[e] - ref[e]));
    scale = std::max(scale, std::fabs(ref[e]));
  }
  char label[200];
  std::snprintf(label, sizeof label, "stein_moments %s %s N=%lld d=%lld sigmas=%zu excl=%d splits=%lld rel %.1e", tn,
                rs.label().c_str(), (long long)N, (long long)d, rs.sigmas.size(), int(excl), (long long)splits,
                scale > 0 ? err / scale : err);
  report(finite && (scale == 0 ? err == 0 : err <= tol * scale), label, err, scale);
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

  // ---- laplacian, energy (coordinate differences on every tile), polynomial (the dot product) ----
  // gram: k and the derivative (g; h for the polynomial); distance kernels also k(x, x) exact, g(x, x) = 0
  gram_case<float, float>("f32", 70, 65, 5, laplacian({0.7}), 2e-6, 41);
  gram_case<float, float>("f32", 33, 64, 20, laplacian({0.5, 1.0, 3.0}), 2e-6, 42);
  gram_case<double, double>("f64", 35, 33, 17, laplacian({0.5, 1.0, 3.0}), 1e-13, 43);
  gram_case<float, float>("f32", 65, 70, 3, energy(1.3), 2e-6, 44);
  gram_case<double, double>("f64", 33, 35, 16, energy(0.7), 1e-13, 45);
  gram_case<__half, float>("f16", 20, 70, 8, laplacian({1.0, 2.0}), 1e-2, 46);
  gram_case<__nv_bfloat16, float>("bf16", 65, 7, 3, energy(2.0), 1e-2, 47);
  for (int deg = 1; deg <= 3; ++deg)
    for (double coef : {0.0, 1.0}) {
      gram_case<float, float>("f32", 70, 65, 5, polynomial(0.2, coef, deg), 2e-6, 50 + deg);
      gram_case<double, double>("f64", 35, 66, 17, polynomial(1.0 / 17, coef, deg), 1e-13, 60 + deg);
    }
  gram_case<__half, float>("f16", 20, 70, 8, polynomial(0.125, 1.0, 3), 1e-2, 48);

  // pair_reduce: splits > 1 and = 1, narrow and chunked S, a absent / present, exclude_diagonal
  pair_reduce_case<float, float>("f32", 70, 131, 5, 3, true, false, laplacian({0.7, 2.0, 5.0}), 2e-5, 71);
  pair_reduce_case<float, float>("f32", 129, 129, 20, 1, true, true, laplacian({1.0}), 2e-5, 72);
  pair_reduce_case<float, float>("f32", 65, 66, 16, 5, true, false, energy(1.3), 2e-5, 73);
  pair_reduce_case<float, float>("f32", 1, 7, 1, 33, true, false, energy(0.5), 2e-5, 74);
  pair_reduce_case<double, double>("f64", 70, 45, 5, 3, true, true, laplacian({0.5, 1.0}), 1e-12, 75);
  pair_reduce_case<double, double>("f64", 20, 290, 3, 2, true, false, energy(0.9), 1e-12, 76);
  pair_reduce_case<__half, float>("f16", 40, 50, 8, 2, true, false, laplacian({1.0}), 2e-5, 77);
  pair_reduce_case<__nv_bfloat16, float>("bf16", 67, 67, 24, 1, true, true, energy(1.0), 2e-5, 78);
  for (int deg = 1; deg <= 3; ++deg)
    for (double coef : {0.0, 1.0}) {
      pair_reduce_case<float, float>("f32", 70, 131, 5, 3, true, coef == 0.0, polynomial(0.2, coef, deg), 2e-5,
                                     80 + deg);
      pair_reduce_case<double, double>("f64", 65, 66, 16, 5, true, coef == 1.0, polynomial(1.0 / 16, coef, deg),
                                       1e-12, 90 + deg);
    }
  pair_reduce_case<float, float>("f32", 129, 129, 20, 1, true, true, polynomial(0.05, 1.0, 3), 2e-5, 84);
  pair_reduce_case<float, float>("f32", 1, 7, 1, 33, true, false, polynomial(0.5, 1.0, 2), 2e-5, 85);
  pair_reduce_case<__nv_bfloat16, float>("bf16", 67, 67, 24, 2, true, false, polynomial(1.0 / 24, 1.0, 3), 2e-5, 86);
  // duplicate points (runs of 3 identical rows, y = x): finite G, g = 0 at distance 0
  for (bool excl : {false, true}) {
    pair_reduce_case<float, float>("f32", 70, 70, 5, 2, true, excl, laplacian({0.7, 2.0}), 2e-5, 101, 3);
    pair_reduce_case<float, float>("f32", 70, 70, 5, 2, true, excl, energy(1.3), 2e-5, 102, 3);
    pair_reduce_case<double, double>("f64", 70, 70, 5, 2, true, excl, energy(1.3), 1e-12, 103, 3);
  }

  // quad_form: nb = 1, 2, 3, 5; P = 1, 3, 17; exclude_diagonal both ways; q bitwise equal across modes
  for (bool excl : {false, true}) {
    quad_case<float, float>("f32", 70, 5, 1, laplacian({0.7}), excl, 2e-5, 111);
    quad_case<float, float>("f32", 129, 2, 3, laplacian({0.5, 1.0, 3.0}), excl, 2e-5, 112);
    quad_case<double, double>("f64", 97, 7, 3, laplacian({0.5, 1.0, 3.0}), excl, 1e-12, 113);
    quad_case<float, float>("f32", 100, 20, 17, energy(1.3), excl, 2e-5, 114);
    quad_case<double, double>("f64", 70, 3, 1, energy(0.7), excl, 1e-12, 115);
    for (int deg = 1; deg <= 3; ++deg)
      for (double coef : {0.0, 1.0}) {
        quad_case<float, float>("f32", 70, 5, deg == 2 ? 3 : 1, polynomial(0.2, coef, deg), excl, 2e-5, 120 + deg);
        quad_case<double, double>("f64", 129, 16, deg == 3 ? 1 : 3, polynomial(1.0 / 16, coef, deg), excl, 1e-12,
                                  130 + deg, false);
      }
  }
  quad_case<float, float>("f32", 250, 20, 17, polynomial(0.05, 1.0, 3), false, 2e-5, 124, false);
  quad_case<__half, float>("f16", 66, 8, 1, laplacian({1.0}), false, 2e-5, 125, false);
  quad_case<__nv_bfloat16, float>("bf16", 65, 4, 3, polynomial(0.25, 1.0, 2), true, 2e-5, 126, false);
  // duplicate points (runs of 4 identical rows): finite G, g = 0 at distance 0
  for (bool excl : {false, true}) {
    quad_case<float, float>("f32", 70, 5, 3, laplacian({0.7, 2.0}), excl, 2e-5, 141, true, 4);
    quad_case<float, float>("f32", 70, 5, 1, energy(1.3), excl, 2e-5, 142, true, 4);
    quad_case<double, double>("f64", 70, 5, 1, laplacian({1.0}), excl, 1e-12, 143, false, 4);
  }
  // laplacian / energy take r2 from coordinate differences on every tile: close points far from the origin
  // (|x|^2 ~ 50, distances ~ 0.02), where the expansion's absolute error u |x|^2 ~ 3e-6 would be ~1% of r2
  for (const RefKernel& kr : {laplacian({0.05}), energy(1.0)}) {
    std::mt19937 rng(160);
    const int64_t n = 70, m = 40, d = 3;
    auto xs = randn(rng, n * d, 0.01), ys = randn(rng, m * d, 0.01);
    for (auto& e : xs) e += 4.0;
    for (auto& e : ys) e += 4.0;
    const Mat<float> x(n, d, xs), y(m, d, ys), v(m, 1, randn(rng, m, 1.0)), a(n, 1, randn(rng, n, 1.0));
    std::vector<double> k_ref(n * m), g_ref(n * m), S_ref(n, 0.0), G_ref(n * d, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        double k, g;
        ref_pair(kr, x.r, i, y.r, j, d, false, k, g);
        k_ref[i * m + j] = k, g_ref[i * m + j] = g;
        S_ref[i] += k * v.r[j];
        for (int64_t c = 0; c < d; ++c) G_ref[i * d + c] += a.r[i] * v.r[j] * ref_grad_term(kr, g, x.r, i, y.r, j, d, c);
      }
    char label[200];
    std::snprintf(label, sizeof label, "gram f32 %s: close points far from the origin (coordinate differences), k",
                  kname(kr.kind));
    expect_close(label, gram<float, float>(x, y, kr, false), k_ref, 1e-5);
    std::snprintf(label, sizeof label, "gram f32 %s: close points far from the origin, derivative", kname(kr.kind));
    expect_close(label, gram<float, float>(x, y, kr, true), g_ref, 1e-5);
    std::vector<double> S, G;
    int64_t splits;
    pair_reduce<float, float>(x, y, v, &a, kr, false, S, G, &splits);
    std::snprintf(label, sizeof label, "pair_reduce f32 %s: close points far from the origin, S", kname(kr.kind));
    expect_close(label, S, S_ref, 1e-5);
    std::snprintf(label, sizeof label, "pair_reduce f32 %s: close points far from the origin, G", kname(kr.kind));
    expect_close(label, G, G_ref, 1e-5);
    std::vector<double> zs(xs);
    zs.insert(zs.end(), ys.begin(), ys.end());
    const Mat<float> z(n + m, d, zs), w(n + m, 1, randn(rng, n + m, 1.0));
    std::vector<double> q_ref(1, 0.0);
    for (int64_t i = 0; i < n + m; ++i)
      for (int64_t j = 0; j < n + m; ++j) {
        double k, g;
        ref_pair(kr, z.r, i, z.r, j, d, i == j, k, g);
        q_ref[0] += w.r[i] * k * w.r[j];
      }
    std::snprintf(label, sizeof label, "quad_form f32 %s: close points far from the origin, q", kname(kr.kind));
    expect_close(label, quad_form<float, float>(z, w, nullptr, kr, false, false).q, q_ref, 1e-5);
  }
  {  // all points identical: every pair at distance 0, so G == 0 exactly, k == k(0) exactly (energy: 0)
    std::mt19937 rng(150);
    const int64_t n = 70, d = 5;
    const auto one = randn(rng, d, 0.3, 0.4);
    std::vector<double> zs(n * d), ws(n, 0.5);
    for (int64_t i = 0; i < n * d; ++i) zs[i] = one[i % d];
    const Mat<float> z(n, d, zs), w(n, 1, ws);
    for (const RefKernel& kr : {laplacian({0.7, 2.0}), energy(1.3)}) {
      const QuadRes o = quad_form<float, float>(z, w, &w, kr, false, true);
      bool exact = o.q[0] == 0.25 * n * n * kr.self_value();
      for (int64_t i = 0; i < n; ++i) exact = exact && o.S[i] == 0.5 * n * kr.self_value();
      for (double g : o.G) exact = exact && g == 0.0;
      std::vector<double> S, G;
      int64_t splits;
      pair_reduce<float, float>(z, z, w, &w, kr, false, S, G, &splits);
      for (int64_t i = 0; i < n; ++i) exact = exact && S[i] == 0.5 * n * kr.self_value();
      for (double g : G) exact = exact && g == 0.0;
      char label[200];
      std::snprintf(label, sizeof label,
                    "%s: %lld identical points: quad_form q, S and pair_reduce S exact (k(x,x) == %g), G == 0 exactly",
                    kname(kr.kind), (long long)n, kr.self_value());
      expect_true(label, exact);
    }
  }

  // stein_form: imq (beta -1/2 by rsqrt, -0.3 by pow; c != 1) and rbf, 1 and 3 scales, P = 1 and 3;
  // nb = 1 (N = 1, 2, 37), 3 and 5 (N = 130), 9 (f32 N = 520) and 8 (f64 N = 250): two chunks of rounds
  const RefStein imq_h{SteinBase::IMQ, -0.5, 1.0, {1.0}}, imq_h3{SteinBase::IMQ, -0.5, 0.7, {0.5, 1.0, 2.0}},
      imq_p{SteinBase::IMQ, -0.3, 1.5, {0.8}}, imq_p3{SteinBase::IMQ, -0.3, 1.2, {0.6, 1.1, 2.5}},
      rbf_1{SteinBase::RBF, -0.5, 1.0, {1.3}}, rbf_3{SteinBase::RBF, -0.5, 1.0, {0.5, 1.0, 4.0}};
  for (bool excl : {false, true}) {
    stein_case<float, float>("f32", 1, 3, 1, imq_h, excl, 1e-5, 201);
    stein_case<float, float>("f32", 2, 1, 3, imq_p, excl, 1e-5, 202);
    stein_case<float, float>("f32", 37, 17, 3, rbf_3, excl, 1e-5, 203);
    stein_case<float, float>("f32", 130, 1, 3, imq_p3, excl, 1e-5, 205);
    stein_case<double, double>("f64", 1, 17, 3, rbf_1, excl, 1e-10, 211);
    stein_case<double, double>("f64", 2, 3, 1, imq_h3, excl, 1e-10, 212);
    stein_case<double, double>("f64", 37, 3, 1, imq_p, excl, 1e-10, 213);
    stein_case<double, double>("f64", 130, 3, 3, rbf_3, excl, 1e-10, 214);
  }
  stein_case<float, float>("f32", 37, 3, 1, imq_h3, true, 1e-5, 204);
  stein_case<float, float>("f32", 130, 17, 1, rbf_1, false, 1e-5, 206);
  stein_case<float, float>("f32", 520, 3, 3, imq_h, true, 1e-5, 207);
  stein_case<double, double>("f64", 130, 1, 1, imq_h, false, 1e-10, 215);
  stein_case<double, double>("f64", 250, 17, 3, imq_p3, false, 1e-10, 216);
  stein_case<double, double>("f64", 250, 3, 1, rbf_1, true, 1e-10, 217);
  stein_case<__half, float>("f16", 70, 5, 1, imq_p, false, 1e-5, 221);
  stein_case<__nv_bfloat16, float>("bf16", 65, 3, 3, rbf_3, true, 1e-5, 222);

  // stein_moments: nb = 1 (N = 1, 2, 37), 3 (f32 N = 130), 5 (f64 N = 130: two splits)
  for (bool excl : {false, true}) {
    stein_moments_case<float, float>("f32", 1, 3, imq_h, excl, 1e-5, 231);
    stein_moments_case<float, float>("f32", 37, 17, imq_p3, excl, 1e-5, 232);
    stein_moments_case<float, float>("f32", 130, 1, rbf_3, excl, 1e-5, 233);
    stein_moments_case<double, double>("f64", 2, 1, rbf_1, excl, 1e-10, 241);
    stein_moments_case<double, double>("f64", 37, 3, imq_h3, excl, 1e-10, 242);
    stein_moments_case<double, double>("f64", 130, 17, imq_p, excl, 1e-10, 243);
  }
  stein_moments_case<__half, float>("f16", 70, 5, rbf_1, false, 1e-5, 251);

  // ---- batches: per-problem params (rbf's problem 1 lossy in float32), odd sizes; B = 3, and B = 1 on
  // small sizes. float64 tolerance 1e-10: rbf's problem 1 (c = 200, |z|^2 up to ~270) takes the
  // expansion in float64, whose error u |z|^2 c ~ 1e-11 is within the lossy rule's bound.
  for (KernelKind kind : {KernelKind::RBF, KernelKind::LAPLACIAN, KernelKind::ENERGY, KernelKind::POLYNOMIAL}) {
    const unsigned seed = 300 + 20 * unsigned(kind);
    gram_batch_case<float, float>("f32", 3, 127, 3, 5, kind, 2e-6, seed);
    gram_batch_case<double, double>("f64", 3, 1, 257, 17, kind, 1e-10, seed + 1);
    gram_batch_case<float, float>("f32", 3, 257, 127, 16, kind, 2e-6, seed + 2);
    pair_reduce_batch_case<float, float>("f32", 3, 127, 257, 5, 1, true, false, kind, 2e-5, seed + 3);
    pair_reduce_batch_case<double, double>("f64", 3, 3, 1, 3, 3, false, false, kind, 1e-10, seed + 4);
    pair_reduce_batch_case<float, float>("f32", 3, 257, 257, 3, 2, true, true, kind, 2e-5, seed + 5);
    pair_reduce_batch_case<double, double>("f64", 3, 127, 3, 16, 5, true, false, kind, 1e-10, seed + 6);
    pair_reduce_batch_case<double, double>("f64", 3, 1, 127, 4, 17, true, true, kind, 1e-10, seed + 7);
    quad_batch_case<float, float>("f32", 3, 257, 5, 1, kind, false, 2e-5, seed + 8, false);
    quad_batch_case<double, double>("f64", 3, 127, 3, 3, kind, true, 1e-10, seed + 9, true);
    quad_batch_case<float, float>("f32", 3, 3, 2, 2, kind, true, 2e-5, seed + 10, true);
    quad_batch_case<double, double>("f64", 3, 1, 4, 1, kind, false, 1e-10, seed + 11, true);
    gram_batch_case<double, double>("f64", 1, 3, 127, 5, kind, 1e-10, seed + 12);
    pair_reduce_batch_case<float, float>("f32", 1, 127, 3, 5, 3, true, false, kind, 2e-5, seed + 13);
    quad_batch_case<float, float>("f32", 1, 127, 3, 3, kind, true, 2e-5, seed + 14, true);
  }

  std::printf("%d checks, %d failures\n", g_checks, g_fail);
  return g_fail == 0 ? 0 : 1;
}
