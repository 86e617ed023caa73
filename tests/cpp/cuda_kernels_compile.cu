// Torch-free compile check of the CUDA kernels (csrc/cuda/pair_kernels.cuh): explicit instantiation of
// every kernel for every element type. CMakeLists.txt builds it only when no usable torch headers are
// found (otherwise csrc/cuda/*.cu itself is compiled); it is never linked or run.
#include "../../csrc/cuda/pair_kernels.cuh"

namespace infovae {
namespace cuda_kernels {

#define INFOVAE_INSTANTIATE(T, A)                                                                      \
  template __global__ void row_norms_kernel<T, A>(const T*, int64_t, int64_t, const A*, A*);           \
  template __global__ void rbf_gram_kernel<T, A>(const T*, const T*, int64_t, int64_t, int64_t,        \
                                                 const A*, const A*, const A*, KernelParams<A>, bool,  \
                                                 bool, T*);                                            \
  template __global__ void pair_reduce_kernel<T, A>(const T*, const T*, const T*, const T*, int64_t,   \
                                                    int64_t, int64_t, int64_t, const A*, const A*,     \
                                                    const A*, KernelParams<A>, bool, bool, bool, bool, \
                                                    bool, int64_t, double*, double*);                           \
  template __global__ void quad_form_kernel<T, A>(const T*, const T*, int64_t, int64_t, int64_t,       \
                                                  const A*, const A*, KernelParams<A>, bool, bool,     \
                                                  int64_t, double*);

INFOVAE_INSTANTIATE(float, float)
INFOVAE_INSTANTIATE(double, double)
INFOVAE_INSTANTIATE(__half, float)
INFOVAE_INSTANTIATE(__nv_bfloat16, float)

}  // namespace cuda_kernels
}  // namespace infovae
