// Tiles of pairs on BLAS GEMMs, the pieces shared by the dot kernel's GEMM path (dot_gemm.cpp) and the Stein
// kernel (stein.cpp): single-threaded GEMMs inside at::parallel_for (results independent of the thread
// count), tile sizes a function of the problem size only, point sets as row-major views.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ops/mm_cpu_dispatch.h>

#include <cstdint>

#include "engine_api.h"

// MKL's per-thread BLAS thread count, C interface (by value; the lowercase symbol is the Fortran one; exported by an MKL build of libtorch_cpu; absent otherwise).
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace infovae {
namespace cpu {
inline namespace INFOVAE_CPU_CAPABILITY {
namespace tiles {

struct SerialBlas {
  int old = 0;
  SerialBlas() {
    if (MKL_Set_Num_Threads_Local) old = MKL_Set_Num_Threads_Local(1);
  }
  ~SerialBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(old);
  }
};

template <class F>
void parallel_items(int64_t n, F&& f) {
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    SerialBlas serial;
    f(b, e);
  });
}

// Pairs per tile side: a multiple of every vector width; a function of the row count only.
inline int64_t block_size(int64_t n) { return n > 1024 ? 256 : n > 256 ? 128 : 64; }

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.data_ptr<T>();
}

template <typename T>
at::ScalarType scalar_of() {
  return sizeof(T) == 8 ? at::kDouble : at::kFloat;
}

template <typename T>
at::Tensor rows_of(const at::Tensor& t) {
  return t.detach().to(scalar_of<T>()).contiguous();
}

// [q][n_pad]: the columns of src (n x q) as zero-padded rows (vector loads along the pair index j).
template <typename T>
at::Tensor transposed(const at::Tensor& src, int64_t n_pad) {
  at::Tensor out = at::zeros({src.size(1), n_pad}, src.options().dtype(scalar_of<T>()));
  out.narrow(1, 0, src.size(0)).copy_(src.detach().t());
  return out;
}

// D = A B^T on views of row-major point sets (A rows a0.., B rows b0..), into the tile buffer buf (row
// stride = its column count).
inline void tile_dots(at::Tensor& buf, const at::Tensor& A, int64_t a0, int64_t na, const at::Tensor& Bm, int64_t b0,
                      int64_t nb) {
  at::Tensor out = buf.narrow(0, 0, na).narrow(1, 0, nb);
  at::cpu::mm_out(out, A.narrow(0, a0, na), Bm.narrow(0, b0, nb).t());
}

}  // namespace tiles
}  // namespace INFOVAE_CPU_CAPABILITY
}  // namespace cpu
}  // namespace infovae
