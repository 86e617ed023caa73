// Python module entry for infovae_kernels._C. The ops register themselves with the dispatcher when
// the shared library loads (TORCH_LIBRARY in ops.cpp); the module exposes the CUDA flag and the CPU
// variant selection (cpu_dispatch.h), which infovae_kernels/backends/native.py drives.
#include <Python.h>

#include <exception>

#include "cpu_dispatch.h"

namespace {

// () -> tuple of the capability names this CPU runs, lowest first.
PyObject* cpu_capabilities(PyObject*, PyObject*) {
  const auto names = infovae::cpu::supported_capabilities();
  PyObject* out = PyTuple_New(static_cast<Py_ssize_t>(names.size()));
  if (out == nullptr) return nullptr;
  for (size_t i = 0; i < names.size(); ++i) {
    PyObject* s = PyUnicode_FromString(names[i].c_str());
    if (s == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyTuple_SET_ITEM(out, static_cast<Py_ssize_t>(i), s);
  }
  return out;
}

// (capsule) -> None: the registered CPU ops call this variant from now on.
PyObject* install_cpu_variant(PyObject*, PyObject* capsule) {
  auto* variant =
      static_cast<const infovae::cpu::Variant*>(PyCapsule_GetPointer(capsule, infovae::cpu::kVariantCapsule));
  if (variant == nullptr) return nullptr;  // PyCapsule_GetPointer set a ValueError
  try {
    infovae::cpu::install(variant);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

// () -> the installed variant's capability name, or None.
PyObject* cpu_variant(PyObject*, PyObject*) {
  const infovae::cpu::Variant* v = infovae::cpu::installed_variant();
  if (v == nullptr) Py_RETURN_NONE;
  return PyUnicode_FromString(v->capability);
}

PyMethodDef methods[] = {
    {"cpu_capabilities", cpu_capabilities, METH_NOARGS, "Capabilities this CPU runs, lowest first."},
    {"install_cpu_variant", install_cpu_variant, METH_O, "Make the CPU ops call this variant's kernels."},
    {"cpu_variant", cpu_variant, METH_NOARGS, "The installed CPU variant's capability, or None."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "infovae compiled ops", -1, methods};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef INFOVAE_WITH_CUDA
  PyModule_AddIntConstant(module, "with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
  return module;
}
