// Torch-free compile check of the CUDA kernels (csrc/cuda/pair_kernels.cuh): explicit instantiation of
// the launch drivers, and so of every kernel, for every element type. CMakeLists.txt builds it only when
// no usable torch headers are found (otherwise csrc/cuda/*.cu itself is compiled); never linked or run.
#include "../../csrc/cuda/pair_kernels.cuh"

INFOVAE_CUDA_DRIVERS_ALL_TYPES()
