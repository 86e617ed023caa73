// The only torch-aware registration file: one schema per op, one implementation per dispatch key.
// Fake (meta) implementations and autograd live in Python (infovae_kernels/backends/native.py,
// infovae_kernels/autograd.py).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(infovae, m) {
  m.def("rbf_gram(Tensor x, Tensor y, float[] sigmas) -> Tensor");
  m.def(
      "pair_reduce(Tensor x, Tensor y, Tensor v, Tensor? a, float[] sigmas, str kernel, "
      "bool exclude_diagonal) -> (Tensor, Tensor)");
  m.def("quad_form(Tensor z, Tensor w, float[] sigmas, str kernel, bool exclude_diagonal) -> Tensor");
}

TORCH_LIBRARY_IMPL(infovae, CPU, m) {
  m.impl("rbf_gram", &infovae::cpu::rbf_gram);
  m.impl("pair_reduce", &infovae::cpu::pair_reduce);
  m.impl("quad_form", &infovae::cpu::quad_form);
}

#ifdef INFOVAE_WITH_CUDA
TORCH_LIBRARY_IMPL(infovae, CUDA, m) {
  m.impl("rbf_gram", &infovae::cuda::rbf_gram);
  m.impl("pair_reduce", &infovae::cuda::pair_reduce);
  m.impl("quad_form", &infovae::cuda::quad_form);
}
#endif
