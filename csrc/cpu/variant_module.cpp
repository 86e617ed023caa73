// The Python module _cpu_<capability> of one CPU variant: its only attribute, `variant`, is a capsule of
// the Variant table (variant.h) that _C.set_cpu_variant installs. Importing it runs code compiled for
// its capability, so infovae_kernels/backends/native.py imports only a variant this CPU supports.
#include <Python.h>

#include "engine_api.h"
#include "variant.h"

#define INFOVAE_STR_(x) #x
#define INFOVAE_STR(x) INFOVAE_STR_(x)
#define INFOVAE_CAT_(a, b) a##b
#define INFOVAE_CAT(a, b) INFOVAE_CAT_(a, b)

namespace {

constexpr infovae::cpu::Variant kVariant = {
    infovae::cpu::kVariantAbi, INFOVAE_STR(INFOVAE_CPU_CAPABILITY), INFOVAE_VBYTES,
    &infovae::cpu::INFOVAE_CPU_CAPABILITY::gram, &infovae::cpu::INFOVAE_CPU_CAPABILITY::pair_reduce,
    &infovae::cpu::INFOVAE_CPU_CAPABILITY::quad_form, &infovae::cpu::INFOVAE_CPU_CAPABILITY::stein_form,
    &infovae::cpu::INFOVAE_CPU_CAPABILITY::stein_moments, &infovae::cpu::INFOVAE_CPU_CAPABILITY::stein_thin};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_cpu_" INFOVAE_STR(INFOVAE_CPU_CAPABILITY),
                          "infovae CPU kernels compiled for one capability", -1, nullptr};

}  // namespace

PyMODINIT_FUNC INFOVAE_CAT(PyInit__cpu_, INFOVAE_CPU_CAPABILITY)(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  PyObject* capsule =
      PyCapsule_New(const_cast<infovae::cpu::Variant*>(&kVariant), infovae::cpu::kVariantCapsule, nullptr);
  if (capsule == nullptr || PyModule_AddObject(module, "variant", capsule) < 0) {
    Py_XDECREF(capsule);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
