// Host emulation of the few CUDA device facilities csrc/cuda/pair_kernels.cuh uses, so the kernels can
// run on a CPU (tests/cpp/test_cuda_emulation.cpp). A block is emulated by blockDim.x * blockDim.y
// std::threads; __syncthreads is a std::barrier over them; __shfl_xor_sync a barrier over the warp.
// Blocks run one after another, so `static` locals stand in for __shared__ arrays.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned a, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
using cudaStream_t = void*;

namespace emu {
inline thread_local dim3 tid_, bid_;
inline dim3 bdim_, gdim_;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline double shfl_buf[1024];

// Runs body() as every thread of every block of the grid: blockDim.x * blockDim.y std::threads walk the
// blocks in order, with a barrier after each block (its shared memory, the `static` locals, is reused by
// the next one). A kernel may return early from body(); it then waits at the end-of-block barrier.
template <typename F>
void launch(dim3 grid, dim3 block, F body) {
  gdim_ = grid;
  bdim_ = block;
  const unsigned nt = block.x * block.y;
  const unsigned nw = (nt + 31) / 32;
  std::barrier<> bar(nt);
  block_barrier = &bar;
  warp_barriers.clear();
  for (unsigned w = 0; w < nw; ++w) warp_barriers.emplace_back(new std::barrier<>(w + 1 < nw ? 32 : nt - 32 * w));
  std::vector<std::thread> th;
  for (unsigned t = 0; t < nt; ++t)
    th.emplace_back([&, t] {
      tid_ = dim3(t % block.x, t / block.x);
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            bid_ = dim3(bx, by, bz);
            body();
            bar.arrive_and_wait();
          }
    });
  for (auto& x : th) x.join();
}
}  // namespace emu

#define threadIdx (emu::tid_)
#define blockIdx (emu::bid_)
#define blockDim (emu::bdim_)
#define gridDim (emu::gdim_)
inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int off) {
  const unsigned t = threadIdx.y * blockDim.x + threadIdx.x;
  auto& bar = *emu::warp_barriers[t / 32];
  emu::shfl_buf[t] = static_cast<double>(v);
  bar.arrive_and_wait();
  const T r = static_cast<T>(emu::shfl_buf[(t & ~31u) | ((t & 31u) ^ unsigned(off))]);
  bar.arrive_and_wait();
  return r;
}
