// The only torch-aware registration file: one schema per primitive, one implementation per dispatch
// key. Fake (meta) implementations live in Python (infovae_kernels/backends/fake.py); autograd lives
// in the public ops (infovae_kernels/ops/*.py), which compose these primitives.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(infovae, m) {
  m.def("gram(Tensor x, Tensor y, Tensor params, str kernel, bool derivative) -> Tensor");
  m.def(
      "pair_reduce(Tensor x, Tensor y, Tensor v, Tensor? a, Tensor params, str kernel, "
      "bool exclude_diagonal) -> (Tensor, Tensor)");
  m.def(
      "quad_form(Tensor z, Tensor w, Tensor? a, Tensor params, str kernel, bool exclude_diagonal, "
      "bool row_sums) -> (Tensor, Tensor, Tensor)");
  m.def("stein_form(Tensor x, Tensor s, Tensor w, Tensor params, str kernel, bool exclude_diagonal) -> Tensor");
  m.def("stein_moments(Tensor x, Tensor s, Tensor w, Tensor params, str kernel, bool exclude_diagonal) -> Tensor");
  m.def("stein_thin(Tensor x, Tensor s, Tensor objective, Tensor params, str kernel, int steps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(infovae, CPU, m) {
  m.impl("gram", &infovae::cpu::gram);
  m.impl("pair_reduce", &infovae::cpu::pair_reduce);
  m.impl("quad_form", &infovae::cpu::quad_form);
  m.impl("stein_form", &infovae::cpu::stein_form);
  m.impl("stein_moments", &infovae::cpu::stein_moments);
  m.impl("stein_thin", &infovae::cpu::stein_thin);
}

#ifdef INFOVAE_WITH_CUDA
TORCH_LIBRARY_IMPL(infovae, CUDA, m) {
  m.impl("gram", &infovae::cuda::gram);
  m.impl("pair_reduce", &infovae::cuda::pair_reduce);
  m.impl("quad_form", &infovae::cuda::quad_form);
  m.impl("stein_form", &infovae::cuda::stein_form);
  m.impl("stein_moments", &infovae::cuda::stein_moments);
}
#endif
