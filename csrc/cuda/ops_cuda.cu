// CUDA implementations of the infovae:: primitives (contract in csrc/ops.h, schemas in csrc/ops.cpp).
// This file: argument checks (one set of helpers for the three ops), contiguity, device guard, current
// stream, dtype dispatch and the allocation of outputs and scratch; the launch sequences and kernels
// are torch-free, in pair_kernels.cuh (run_gram, run_pair_reduce, run_quad_form, run_stein_form,
// run_stein_moments), instantiated per element type in kernels_<type>.cu.
//
// params stays on the device: the kernels read the float64 array themselves (pair_kernels.cuh,
// load_kernel), so no op needs a host copy of it or a stream sync.
//
// gram, pair_reduce and quad_form also take a batch of problems (docs/DESIGN.md, "Batched problems"): 3-D
// points (B, N, d), params (B, S'). The batch is grid.z of every launch (pair_kernels.cuh); nothing is
// decided per problem on the host: the plans depend on the problem's sizes only (shared by the batch),
// and the lossy-distance rule is decided on the device per tile from that problem's params and norms.
// A 2-D call is the batch of one.
//
// Includes are deliberately narrow: c10/cuda/CUDAStream.h gives c10::cuda::getCurrentCUDAStream (what
// at::cuda::getCurrentCUDAStream forwards to) without ATen/cuda/CUDAContext.h, which drags in the
// cuBLAS/cuSPARSE/cuSOLVER headers; so this file also compiles against the headers of a CPU build of
// torch plus a bare CUDA toolkit (the CMake compile check, CMakeLists.txt).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "infovae/pair_math.h"
#include "checks.h"
#include "ops.h"

#define INFOVAE_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()
#include "pair_kernels.cuh"

// Instantiated in kernels_{f32,f64,f16,bf16}.cu.
INFOVAE_CUDA_DRIVERS_ALL_TYPES(extern)

namespace infovae {
namespace cuda {
namespace {

namespace K = infovae::cuda_kernels;

// ---- helpers ----

// 16-byte vector loads of rows of length ld: every row starts 16-byte aligned.
template <typename T>
bool vec_ok(const T* p, int64_t ld) {
  return p != nullptr && (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0 &&
         (ld % (16 / static_cast<int64_t>(sizeof(T)))) == 0;
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>{}, Tag<acc_t>{}) with T the CUDA element type of the torch dtype (C++17: no template
// lambdas).
template <typename F>
void dispatch(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat:
      f(Tag<float>{}, Tag<float>{});
      break;
    case at::kDouble:
      f(Tag<double>{}, Tag<double>{});
      break;
    case at::kHalf:
      f(Tag<__half>{}, Tag<float>{});
      break;
    case at::kBFloat16:
      f(Tag<__nv_bfloat16>{}, Tag<float>{});
      break;
    default:
      TORCH_CHECK(false, "infovae: unsupported dtype ", st);
  }
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<const T*>(t.const_data_ptr()) : nullptr;
}

at::ScalarType acc_type_of(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

// Norms (n) and per-row-block maxima of one operand, in acc_t.
struct NormScratch {
  at::Tensor norms, max;
  NormScratch(int64_t n, int64_t blocks, const at::TensorOptions& acc)
      : norms(at::empty({n}, acc)), max(at::empty({blocks}, acc)) {}
  template <typename acc_t>
  acc_t* n_ptr() {
    return norms.mutable_data_ptr<acc_t>();
  }
  template <typename acc_t>
  acc_t* m_ptr() {
    return max.mutable_data_ptr<acc_t>();
  }
};

// The kernel arguments both Stein primitives share (the schedule's fields are the caller's).
template <typename T>
K::SteinArgs<T> stein_kernel_args(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w, int64_t P,
                                  SteinBase base, const at::Tensor& params, bool exclude_diagonal) {
  K::SteinArgs<T> A{};
  A.x = ptr<T>(x);
  A.s = ptr<T>(s);
  A.w = ptr<T>(w);
  A.N = x.size(0), A.d = x.size(1), A.P = P;
  A.base = base;
  A.params = params.const_data_ptr<double>();
  A.n_params = static_cast<int>(params.size(0));
  A.exclude_diagonal = exclude_diagonal;
  A.vec_x = vec_ok(A.x, A.d), A.vec_s = vec_ok(A.s, A.d);
  return A;
}

// gram's grid.y (row blocks of x) is limited to 65535.
void check_grid(const char* op, int64_t blocks_y) {
  TORCH_CHECK(blocks_y <= 65535, "infovae::", op, ": too many rows for one launch (", blocks_y,
              " row blocks; at most 65535)");
}

// The batch of a call (checks::form_of; checks.h has made every argument agree): its size (a 2-D call: 1)
// and the shapes of its outputs.
struct Batch {
  checks::Form form;
  int64_t size;
  Batch(const char* op, const at::Tensor& points) : form(checks::form_of(points)), size(form.batch) {
    TORCH_CHECK(size <= 65535, "infovae::", op, ": at most 65535 problems in one batch (grid.z), got ", size);
  }
  // An output's shape: the 2-D call's, behind the batch dim when batched.
  std::vector<int64_t> shape(std::initializer_list<int64_t> dims) const {
    std::vector<int64_t> s;
    if (form.batched) s.push_back(size);
    s.insert(s.end(), dims);
    return s;
  }
};

}  // namespace

at::Tensor gram(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& params_in, c10::string_view kernel,
                bool derivative) {
  const char* op = "gram";
  const KernelKind kind = checks::gram_args(x_in, y_in, params_in, kernel, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), params = params_in.contiguous();
  const Batch batch(op, x);
  const int64_t B = batch.size, N = x.size(-2), M = y.size(-2), d = x.size(-1);
  at::Tensor out = at::empty(batch.shape({N, M}), x.options());
  if (B == 0 || N == 0 || M == 0) return out;
  const auto st = x.scalar_type();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(st, [&](auto t_tag, auto acc_tag) {
    using T = typename decltype(t_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    check_grid(op, K::row_blocks<acc_t>(N));
    const auto acc = x.options().dtype(acc_type_of(st));
    NormScratch xs(B * N, B * K::row_blocks<acc_t>(N), acc), ys(B * M, B * K::row_blocks<acc_t>(M), acc);
    const T* xp = ptr<T>(x);
    const T* yp = ptr<T>(y);
    const K::GramArgs g{B, N, M, d, kind, params.const_data_ptr<double>(), static_cast<int>(params.size(-1)),
                        derivative, vec_ok(xp, d), vec_ok(yp, d)};
    K::run_gram<T, acc_t>(xp, yp, g, xs.n_ptr<acc_t>(), ys.n_ptr<acc_t>(), xs.m_ptr<acc_t>(), ys.m_ptr<acc_t>(),
                          reinterpret_cast<T*>(out.mutable_data_ptr()), stream);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pair_reduce(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& v_in,
                                               const std::optional<at::Tensor>& a_in, const at::Tensor& params_in,
                                               c10::string_view kernel, bool exclude_diagonal) {
  const KernelKind kind =
      checks::pair_reduce_args(x_in, y_in, v_in, a_in, params_in, kernel, exclude_diagonal, c10::DeviceType::CUDA);
  const bool has_a = a_in.has_value() && a_in->defined();
  const Batch batch("pair_reduce", x_in);
  const int64_t B = batch.size, N = x_in.size(-2), M = y_in.size(-2), d = x_in.size(-1), p = v_in.size(-1);

  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), v = v_in.contiguous(), params = params_in.contiguous();
  const at::Tensor a = has_a ? a_in->contiguous() : at::Tensor();
  const auto f64 = x.options().dtype(at::kDouble);
  at::Tensor S = at::zeros(batch.shape({N, p}), f64);
  at::Tensor G = at::zeros(batch.shape({has_a ? N : 0, d}), f64);
  // p == 0: S is empty and every a_i . v_j = 0, so G = 0.
  if (B == 0 || N == 0 || M == 0 || p == 0) return {S, G};
  const auto st = x.scalar_type();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(st, [&](auto t_tag, auto acc_tag) {
    using T = typename decltype(t_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    const K::PairReducePlan pl = K::plan_pair_reduce<acc_t>(N, M, d, p, has_a);
    TORCH_CHECK(pl.blocks <= std::numeric_limits<int32_t>::max(), "infovae::pair_reduce: too many rows");
    const auto acc = x.options().dtype(acc_type_of(st));
    NormScratch xs(B * N, B * K::row_blocks<acc_t>(N), acc), ys(B * M, B * K::row_blocks<acc_t>(M), acc);
    // Several splits write zero-initialised slabs, summed in split order; one split writes S, G directly.
    // The split is the 2-D call's for every problem (memory: B times the 2-D call's slabs).
    at::Tensor S_slabs = pl.splits > 1 ? at::zeros({B, pl.splits, N, p}, f64) : at::Tensor();
    at::Tensor G_slabs = (pl.splits > 1 && has_a) ? at::zeros({B, pl.splits, N, d}, f64) : at::Tensor();
    const T *xp = ptr<T>(x), *yp = ptr<T>(y), *vp = ptr<T>(v), *ap = ptr<T>(a);
    const K::PairReduceArgs r{B, N, M, d, p, kind, params.const_data_ptr<double>(), static_cast<int>(params.size(-1)),
                              exclude_diagonal, vec_ok(xp, d), vec_ok(yp, d), vec_ok(ap, p), vec_ok(vp, p)};
    K::run_pair_reduce<T, acc_t>(xp, yp, vp, ap, r, pl, xs.n_ptr<acc_t>(), ys.n_ptr<acc_t>(), xs.m_ptr<acc_t>(),
                                 ys.m_ptr<acc_t>(), S_slabs.defined() ? S_slabs.mutable_data_ptr<double>() : nullptr,
                                 G_slabs.defined() ? G_slabs.mutable_data_ptr<double>() : nullptr,
                                 S.mutable_data_ptr<double>(), has_a ? G.mutable_data_ptr<double>() : nullptr, stream);
  });
  return {S, G};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quad_form(const at::Tensor& z_in, const at::Tensor& w_in,
                                                         const std::optional<at::Tensor>& a_in,
                                                         const at::Tensor& params_in, c10::string_view kernel,
                                                         bool exclude_diagonal, bool row_sums) {
  const KernelKind kind = checks::quad_form_args(z_in, w_in, a_in, params_in, kernel, c10::DeviceType::CUDA);
  const bool has_a = a_in.has_value() && a_in->defined();
  const Batch batch("quad_form", z_in);
  const int64_t B = batch.size, N = z_in.size(-2), d = z_in.size(-1), P = w_in.size(-1);

  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous(), w = w_in.contiguous(), params = params_in.contiguous();
  const at::Tensor a = has_a ? a_in->contiguous() : at::Tensor();
  const auto f64 = z.options().dtype(at::kDouble);
  at::Tensor q = at::zeros(batch.shape({P}), f64);
  // S and G are written whole by the last kernels, except when P == 0: then q and S are empty and every
  // a_i . w_j = 0, so G = 0.
  at::Tensor S = at::zeros(batch.shape({row_sums ? N : 0, P}), f64);
  at::Tensor G = at::zeros(batch.shape({has_a ? N : 0, d}), f64);
  if (B == 0 || N == 0 || P == 0) return {q, S, G};
  const auto st = z.scalar_type();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(st, [&](auto t_tag, auto acc_tag) {
    using T = typename decltype(t_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    const K::QuadPlan pl = K::plan_quad_form<acc_t>(N, d, P, row_sums, has_a);
    TORCH_CHECK(pl.nb <= std::numeric_limits<int32_t>::max(), "infovae::quad_form: too many rows");
    const auto acc = z.options().dtype(acc_type_of(st));
    NormScratch zs(B * N, B * pl.nb, acc);
    at::Tensor qslab = at::zeros({B, pl.nb * pl.chunks, P}, f64);
    // Row and column copies of S and G (pair_kernels.cuh, quad_form), summed into S and G at the end; the
    // plan is the 2-D call's for every problem (memory: B times the 2-D call's copies).
    at::Tensor S_buf = row_sums ? at::zeros({B, 2 * pl.copies, N, P}, f64) : at::Tensor();
    at::Tensor G_buf = has_a ? at::zeros({B, 2 * pl.copies, N, d}, f64) : at::Tensor();
    K::QuadArgs<T, acc_t> A{};
    A.z = ptr<T>(z);
    A.w = ptr<T>(w);
    A.a = ptr<T>(a);
    A.batch = B, A.N = N, A.d = d, A.P = P;
    A.kind = kind;
    A.params = params.const_data_ptr<double>();
    A.n_scales = static_cast<int>(params.size(-1));
    A.exclude_diagonal = exclude_diagonal;
    A.vec_z = vec_ok(A.z, d), A.vec_w = vec_ok(A.w, P), A.vec_a = vec_ok(A.a, P);
    A.nb = pl.nb, A.tps = pl.tps, A.chunks = pl.chunks, A.copies = pl.copies;
    A.qslab = qslab.mutable_data_ptr<double>();
    A.Sbuf = row_sums ? S_buf.mutable_data_ptr<double>() : nullptr;
    A.Gbuf = has_a ? G_buf.mutable_data_ptr<double>() : nullptr;
    K::run_quad_form<T, acc_t>(A, pl, zs.n_ptr<acc_t>(), zs.m_ptr<acc_t>(), q.mutable_data_ptr<double>(),
                               row_sums ? S.mutable_data_ptr<double>() : nullptr,
                               has_a ? G.mutable_data_ptr<double>() : nullptr, stream);
  });
  return {q, S, G};
}

at::Tensor stein_form(const at::Tensor& x_in, const at::Tensor& s_in, const at::Tensor& w_in,
                      const at::Tensor& params_in, c10::string_view kernel, bool exclude_diagonal) {
  const SteinBase base =
      checks::stein_args("stein_form", x_in, s_in, w_in, 2, params_in, kernel, c10::DeviceType::CUDA);
  const int64_t N = x_in.size(0), d = x_in.size(1), P = w_in.size(1);

  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), s = s_in.contiguous(), w = w_in.contiguous(), params = params_in.contiguous();
  const auto f64 = x.options().dtype(at::kDouble);
  at::Tensor q = at::zeros({P}, f64);
  if (N == 0 || P == 0) return q;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(x.scalar_type(), [&](auto t_tag, auto acc_tag) {
    using T = typename decltype(t_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    // quad_form's value-only schedule (pair_kernels.cuh, stein_form)
    const K::QuadPlan pl = K::plan_quad_form<acc_t>(N, d, P, false, false);
    TORCH_CHECK(pl.nb <= std::numeric_limits<int32_t>::max(), "infovae::stein_form: too many rows");
    at::Tensor qslab = at::zeros({pl.nb * pl.chunks, P}, f64);
    K::SteinArgs<T> A = stein_kernel_args<T>(x, s, w, P, base, params, exclude_diagonal);
    A.nb = pl.nb, A.tps = pl.tps, A.chunks = pl.chunks;
    A.slab = qslab.mutable_data_ptr<double>();
    K::run_stein_form<T, acc_t>(A, q.mutable_data_ptr<double>(), stream);
  });
  return q;
}

at::Tensor stein_moments(const at::Tensor& x_in, const at::Tensor& s_in, const at::Tensor& w_in,
                         const at::Tensor& params_in, c10::string_view kernel, bool exclude_diagonal) {
  const SteinBase base =
      checks::stein_args("stein_moments", x_in, s_in, w_in, 1, params_in, kernel, c10::DeviceType::CUDA);
  const int64_t N = x_in.size(0), d = x_in.size(1), Q = 1 + 2 * d;

  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), s = s_in.contiguous(), w = w_in.contiguous(), params = params_in.contiguous();
  const auto f64 = x.options().dtype(at::kDouble);
  at::Tensor R = at::zeros({N, 4, Q}, f64);
  if (N == 0) return R;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(x.scalar_type(), [&](auto t_tag, auto acc_tag) {
    using T = typename decltype(t_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    // pair_reduce's schedule for 4 Q float64 outputs per row (pair_kernels.cuh, stein_moments)
    const K::PairReducePlan pl = K::plan_pair_reduce<acc_t>(N, N, 0, 4 * Q, false);
    TORCH_CHECK(pl.blocks <= std::numeric_limits<int32_t>::max(), "infovae::stein_moments: too many rows");
    at::Tensor slabs = pl.splits > 1 ? at::zeros({pl.splits, N, 4, Q}, f64) : at::Tensor();
    K::SteinArgs<T> A = stein_kernel_args<T>(x, s, w, 1, base, params, exclude_diagonal);
    A.nb = pl.blocks, A.tps = pl.tps, A.chunks = pl.splits;
    A.slab = slabs.defined() ? slabs.mutable_data_ptr<double>() : nullptr;
    K::run_stein_moments<T, acc_t>(A, R.mutable_data_ptr<double>(), stream);
  });
  return R;
}

}  // namespace cuda
}  // namespace infovae
