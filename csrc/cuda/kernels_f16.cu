// The CUDA kernels and launch drivers of pair_kernels.cuh for __half inputs (one file per element type, so
// that they compile in parallel); ops_cuda.cu declares them extern.
#include <c10/cuda/CUDAException.h>

#define INFOVAE_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()
#include "pair_kernels.cuh"

INFOVAE_CUDA_DRIVERS(, __half, float)
