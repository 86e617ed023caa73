// CUDA implementations of the infovae:: ops (contract in csrc/ops.h, registered in csrc/ops.cpp).
// Host side: validation, contiguity, device guard, current stream, dtype dispatch, launches (each one
// checked). The kernels are in pair_kernels.cuh.
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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "infovae/pair_math.h"
#include "ops.h"
#include "pair_kernels.cuh"

namespace infovae {
namespace cuda {
namespace {

namespace K = infovae::cuda_kernels;

// ---- validation (same rules and wording as the CPU path) ----

KernelKind parse_kernel(const char* op, c10::string_view kernel) {
  if (kernel == "rbf") return KernelKind::RBF;
  if (kernel == "imq") return KernelKind::IMQ;
  TORCH_CHECK(false, "infovae::", op, ": kernel must be \"rbf\" or \"imq\", got \"",
              std::string(kernel.data(), kernel.size()), "\"");
}

KernelSpec make_spec(const char* op, KernelKind kind, at::ArrayRef<double> sigmas, int64_t d) {
  TORCH_CHECK(!sigmas.empty() && static_cast<int64_t>(sigmas.size()) <= kMaxScales, "infovae::", op,
              ": sigmas must hold 1 to ", kMaxScales, " bandwidths, got ", sigmas.size());
  for (double s : sigmas) {
    TORCH_CHECK(std::isfinite(s) && s > 0.0, "infovae::", op, ": every sigma must be finite and > 0, got ", s);
  }
  KernelSpec spec{};
  const bool ok = make_kernel_spec(kind, sigmas.data(), static_cast<int>(sigmas.size()), d, &spec);
  TORCH_CHECK(ok, "infovae::", op, ": could not build the kernel from ", sigmas.size(), " sigmas");
  return spec;
}

void check_matrix(const char* op, const char* name, const at::Tensor& t, const char* shape) {
  TORCH_CHECK(t.dim() == 2, "infovae::", op, ": ", name, " must be a 2-D tensor ", shape, ", got ", t.dim(),
              "-D tensor of shape ", t.sizes());
  TORCH_CHECK(t.is_cuda(), "infovae::", op, ": ", name, " must be a CUDA tensor, got ", t.device());
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, "infovae::", op,
              ": ", name, " must be float16, bfloat16, float32 or float64, got ", st);
}

// dtype and device of t must be those of the first input ref.
void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "infovae::", op, ": ", name,
              " must have the same dtype as the first input (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "infovae::", op, ": ", name,
              " must be on the same device as the first input (", ref.device(), "), got ", t.device());
}

// ---- helpers ----

template <typename T>
bool aligned16(const T* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

// 16-byte vector loads of rows of length ld are possible when every row starts 16-byte aligned.
template <typename T>
bool vec_ok(const T* p, int64_t ld) {
  return p != nullptr && aligned16(p) && (ld % (16 / static_cast<int64_t>(sizeof(T)))) == 0;
}

// Pooled mean of the rows of x and y (float64 sums), in the compute dtype: the points are centered on
// it before r2 = |x|^2 + |y|^2 - 2 x.y (translation invariance; smaller norms, less cancellation).
at::Tensor pooled_mean(const at::Tensor& x, const at::Tensor* y, at::ScalarType acc_type) {
  at::Tensor s = x.sum({0}, false, at::kDouble);
  int64_t n = x.size(0);
  if (y != nullptr) {
    s = s.add(y->sum({0}, false, at::kDouble));
    n += y->size(0);
  }
  if (n > 0) s = s.div(static_cast<double>(n));
  return s.to(acc_type).contiguous();
}

constexpr int kNormThreads = 256;

template <typename T, typename acc_t>
at::Tensor row_norms(const at::Tensor& x, const at::Tensor& mean, cudaStream_t stream) {
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor out = at::empty({n}, x.options().dtype(mean.scalar_type()));
  if (n == 0) return out;
  const int64_t rows_per_block = kNormThreads / 32;
  const int64_t blocks = (n + rows_per_block - 1) / rows_per_block;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "infovae: too many rows");
  K::row_norms_kernel<T, acc_t><<<static_cast<unsigned>(blocks), kNormThreads, 0, stream>>>(
      reinterpret_cast<const T*>(x.const_data_ptr()), n, d, mean.const_data_ptr<acc_t>(),
      out.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
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

at::ScalarType acc_type_of(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

dim3 tile_block() { return dim3(K::kThreadsX, K::kThreadsY); }

int64_t tile_rows(at::ScalarType st) {
  return st == at::kDouble ? K::Tile<double>::BM : K::Tile<float>::BM;
}

// Grid shaping. One block per row block alone leaves most SMs idle below N of about 17k (H100: 132
// SMs x 2 resident blocks of 64 rows), so the sweep over Y tiles is split until about kTargetBlocks
// blocks exist, each split covering at least kMinTilesPerSplit tiles. The split depends on the problem
// size only, never on the device, so results are bitwise identical run to run and GPU to GPU.
constexpr int64_t kTargetBlocks = 528;
constexpr int64_t kMinTilesPerSplit = 4;
constexpr int64_t kMaxSlabBytes = int64_t(256) << 20;  // cap on the float64 split slabs (pair_reduce)

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Tiles per split for row_blocks blocks sweeping col_tiles tiles; max_splits caps the split count.
int64_t tiles_per_split(int64_t row_blocks, int64_t col_tiles, int64_t max_splits) {
  int64_t splits = ceil_div(kTargetBlocks, row_blocks);
  splits = std::min(splits, ceil_div(col_tiles, kMinTilesPerSplit));
  splits = std::max<int64_t>(1, std::min(splits, max_splits));
  return std::max<int64_t>(1, ceil_div(col_tiles, splits));
}

// out[e] = sum_s slabs[s][e] for e < n, s ascending.
void sum_slabs(const at::Tensor& slabs, int64_t n_slabs, int64_t n, at::Tensor& out, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t blocks = ceil_div(n, 256);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "infovae: output too large");
  K::sum_partials_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
      slabs.const_data_ptr<double>(), n_slabs, n, out.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor rbf_gram(const at::Tensor& x_in, const at::Tensor& y_in, at::ArrayRef<double> sigmas) {
  const char* op = "rbf_gram";
  check_matrix(op, "x", x_in, "(N, d)");
  check_matrix(op, "y", y_in, "(M, d)");
  check_same(op, "y", y_in, x_in);
  TORCH_CHECK(x_in.size(1) == y_in.size(1), "infovae::rbf_gram: x and y must have the same number of columns d, got ",
              x_in.size(1), " and ", y_in.size(1));
  const KernelSpec spec = make_spec(op, KernelKind::RBF, sigmas, x_in.size(1));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t N = x.size(0), M = y.size(0), d = x.size(1);
  at::Tensor out = at::empty({N, M}, x.options());
  if (N == 0 || M == 0) return out;
  const auto st = x.scalar_type();
  const at::Tensor mean = pooled_mean(x, &y, acc_type_of(st));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t bm = tile_rows(st);
  const int64_t gx = (M + bm - 1) / bm, gy = (N + bm - 1) / bm;
  TORCH_CHECK(gx <= std::numeric_limits<int32_t>::max() && gy <= 65535,
              "infovae: rbf_gram output too large for one launch (", N, " x ", M, ")");
  dispatch(st, [&](auto t_tag, auto acc_tag) {
    using T = typename decltype(t_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    const at::Tensor xn = row_norms<T, acc_t>(x, mean, stream);
    const at::Tensor yn = row_norms<T, acc_t>(y, mean, stream);
    const T* xp = reinterpret_cast<const T*>(x.const_data_ptr());
    const T* yp = reinterpret_cast<const T*>(y.const_data_ptr());
    K::rbf_gram_kernel<T, acc_t><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), tile_block(),
                                   0, stream>>>(
        xp, yp, N, M, d, mean.const_data_ptr<acc_t>(), xn.const_data_ptr<acc_t>(),
        yn.const_data_ptr<acc_t>(), cast_params<acc_t>(spec), vec_ok(xp, d), vec_ok(yp, d),
        reinterpret_cast<T*>(out.mutable_data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pair_reduce(const at::Tensor& x_in, const at::Tensor& y_in,
                                               const at::Tensor& v_in, const std::optional<at::Tensor>& a_in,
                                               at::ArrayRef<double> sigmas, c10::string_view kernel,
                                               bool exclude_diagonal) {
  const char* op = "pair_reduce";
  check_matrix(op, "x", x_in, "(N, d)");
  check_matrix(op, "y", y_in, "(M, d)");
  check_matrix(op, "v", v_in, "(M, p)");
  check_same(op, "y", y_in, x_in);
  check_same(op, "v", v_in, x_in);
  const int64_t N = x_in.size(0), M = y_in.size(0), d = x_in.size(1), p = v_in.size(1);
  TORCH_CHECK(y_in.size(1) == d, "infovae::pair_reduce: x and y must have the same number of columns d, got ",
              d, " and ", y_in.size(1));
  TORCH_CHECK(v_in.size(0) == M, "infovae::pair_reduce: v must have one row per row of y (", M, "), got ",
              v_in.size(0));
  const bool has_a = a_in.has_value() && a_in->defined();
  if (has_a) {
    check_matrix(op, "a", *a_in, "(N, p)");
    check_same(op, "a", *a_in, x_in);
    TORCH_CHECK(a_in->size(0) == N && a_in->size(1) == p, "infovae::pair_reduce: a must have shape (N, p) = (",
                N, ", ", p, "), got ", a_in->sizes());
  }
  TORCH_CHECK(!exclude_diagonal || N == M,
              "infovae::pair_reduce: exclude_diagonal requires x and y with the same number of rows, got ", N,
              " and ", M);
  const KernelSpec spec = make_spec(op, parse_kernel(op, kernel), sigmas, d);

  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), v = v_in.contiguous();
  const at::Tensor a = has_a ? a_in->contiguous() : at::Tensor();
  const auto f64 = x.options().dtype(at::kDouble);
  // Zero-initialised: output chunks beyond the register-held ones are accumulated in place.
  at::Tensor S = at::zeros({N, p}, f64);
  at::Tensor G = has_a ? at::zeros({N, d}, f64) : at::zeros({0, d}, f64);
  // p == 0: S is empty and every a_i . v_j = 0, so G = 0 (as the CPU path).
  if (N == 0 || M == 0 || p == 0) return {S, G};
  const auto st = x.scalar_type();
  const at::Tensor mean = pooled_mean(x, &y, acc_type_of(st));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t bm = tile_rows(st);
  const int64_t blocks = ceil_div(N, bm);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "infovae: too many rows");
  const int64_t col_tiles = ceil_div(M, bm);
  const int64_t width = p + (has_a ? d : 0);
  const int64_t max_splits = std::max<int64_t>(1, kMaxSlabBytes / std::max<int64_t>(1, N * width * 8));
  const int64_t tps = tiles_per_split(blocks, col_tiles, max_splits);
  const int64_t splits = ceil_div(col_tiles, tps);
  // One split writes S and G directly; several write zero-initialised slabs, summed in split order.
  at::Tensor S_acc = splits == 1 ? S : at::zeros({splits, N, p}, f64);
  at::Tensor G_acc = (splits == 1 || !has_a) ? G : at::zeros({splits, N, d}, f64);
  dispatch(st, [&](auto t_tag, auto acc_tag) {
    using T = typename decltype(t_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    const at::Tensor xn = row_norms<T, acc_t>(x, mean, stream);
    const at::Tensor yn = row_norms<T, acc_t>(y, mean, stream);
    const T* xp = reinterpret_cast<const T*>(x.const_data_ptr());
    const T* yp = reinterpret_cast<const T*>(y.const_data_ptr());
    const T* vp = reinterpret_cast<const T*>(v.const_data_ptr());
    const T* ap = has_a ? reinterpret_cast<const T*>(a.const_data_ptr()) : nullptr;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(splits));
    K::pair_reduce_kernel<T, acc_t><<<grid, tile_block(), 0, stream>>>(
        xp, yp, vp, ap, N, M, d, p, mean.const_data_ptr<acc_t>(), xn.const_data_ptr<acc_t>(),
        yn.const_data_ptr<acc_t>(), cast_params<acc_t>(spec), exclude_diagonal, vec_ok(xp, d),
        vec_ok(yp, d), vec_ok(ap, p), vec_ok(vp, p), tps, S_acc.mutable_data_ptr<double>(),
        has_a ? G_acc.mutable_data_ptr<double>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (splits > 1) {
    sum_slabs(S_acc, splits, N * p, S, stream);
    if (has_a) sum_slabs(G_acc, splits, N * d, G, stream);
  }
  return {S, G};
}

at::Tensor quad_form(const at::Tensor& z_in, const at::Tensor& w_in, at::ArrayRef<double> sigmas,
                     c10::string_view kernel, bool exclude_diagonal) {
  const char* op = "quad_form";
  check_matrix(op, "z", z_in, "(N, d)");
  check_matrix(op, "w", w_in, "(N, P)");
  check_same(op, "w", w_in, z_in);
  const int64_t N = z_in.size(0), d = z_in.size(1), P = w_in.size(1);
  TORCH_CHECK(w_in.size(0) == N, "infovae::quad_form: w must have one row per row of z (", N, "), got ",
              w_in.size(0));
  const KernelSpec spec = make_spec(op, parse_kernel(op, kernel), sigmas, d);

  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous(), w = w_in.contiguous();
  const auto f64 = z.options().dtype(at::kDouble);
  at::Tensor q = at::zeros({P}, f64);
  if (N == 0 || P == 0) return q;
  const auto st = z.scalar_type();
  const at::Tensor mean = pooled_mean(z, nullptr, acc_type_of(st));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t bm = tile_rows(st);
  const int64_t blocks = ceil_div(N, bm);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "infovae: too many rows");
  // Row block I sweeps tiles J >= I in chunks of tps tiles: grid (blocks, chunks); a block whose chunk
  // lies past the last tile exits at once. One float64 slab of P per block, summed in block order.
  const int64_t tps = tiles_per_split(blocks, blocks, std::numeric_limits<int32_t>::max());
  const int64_t chunks = ceil_div(blocks, tps);
  TORCH_CHECK(chunks <= 65535, "infovae: quad_form grid too large");
  at::Tensor partial = at::zeros({blocks * chunks, P}, f64);
  dispatch(st, [&](auto t_tag, auto acc_tag) {
    using T = typename decltype(t_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    const at::Tensor zn = row_norms<T, acc_t>(z, mean, stream);
    const T* zp = reinterpret_cast<const T*>(z.const_data_ptr());
    const T* wp = reinterpret_cast<const T*>(w.const_data_ptr());
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(chunks));
    K::quad_form_kernel<T, acc_t><<<grid, tile_block(), 0, stream>>>(
        zp, wp, N, d, P, mean.const_data_ptr<acc_t>(), zn.const_data_ptr<acc_t>(), cast_params<acc_t>(spec),
        exclude_diagonal, vec_ok(zp, d), tps, partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  sum_slabs(partial, blocks * chunks, P, q, stream);
  return q;
}

}  // namespace cuda
}  // namespace infovae
