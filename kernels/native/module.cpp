// svd_fast._C: registers the native CPU ops as torch.ops.svd_fast_native.* (schemas here, CPU
// kernels in the other files). Importing the module is what loads them; Python adds fake
// (meta) implementations and autograd in svd_fast/kernels/native/__init__.py.
#include <Python.h>
#include <torch/library.h>

#include "vec_utils.h"

#ifndef SVD_FAST_ISA
#define SVD_FAST_ISA "unknown"
#endif

namespace svd_fast {
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd(const at::Tensor&, int64_t,
                                                              const std::optional<at::Tensor>&,
                                                              const std::optional<at::Tensor>&, double, bool, int64_t);
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_bwd(const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, const at::Tensor&,
                                                              const std::optional<at::Tensor>&,
                                                              const std::optional<at::Tensor>&, bool, int64_t,
                                                              int64_t);
at::Tensor temporal_attention_fwd(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t);
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_bwd(const at::Tensor&, const at::Tensor&,
                                                                      const at::Tensor&, const at::Tensor&, int64_t,
                                                                      int64_t);
at::Tensor temporal_conv_fwd(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t);
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_conv_bwd(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, int64_t);
at::Tensor geglu_fwd(const at::Tensor&);
at::Tensor geglu_bwd(const at::Tensor&, const at::Tensor&);
at::Tensor blend_fwd(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
at::Tensor winograd_conv3x3_fwd(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
}  // namespace svd_fast

TORCH_LIBRARY(svd_fast_native, m) {
  m.def("group_norm_fwd(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, bool silu, "
        "int frames_per_unit) -> (Tensor, Tensor, Tensor)");
  m.def("group_norm_bwd(Tensor grad, Tensor x, Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias, "
        "bool silu, int groups, int frames_per_unit) -> (Tensor, Tensor, Tensor)");
  m.def("temporal_attention_fwd(Tensor q, Tensor k, Tensor v, int num_frames, int heads) -> Tensor");
  m.def("temporal_attention_bwd(Tensor grad, Tensor q, Tensor k, Tensor v, int num_frames, int heads) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("temporal_conv_fwd(Tensor x, Tensor weight, Tensor? bias, int num_frames) -> Tensor");
  m.def("temporal_conv_bwd(Tensor grad, Tensor x, Tensor weight, int num_frames) -> (Tensor, Tensor, Tensor)");
  m.def("geglu_fwd(Tensor x) -> Tensor");
  m.def("geglu_bwd(Tensor grad, Tensor x) -> Tensor");
  m.def("blend_fwd(Tensor a, Tensor b, Tensor p, Tensor q) -> Tensor");
  m.def("winograd_conv3x3_fwd(Tensor x, Tensor u, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(svd_fast_native, CPU, m) {
  m.impl("group_norm_fwd", &svd_fast::group_norm_fwd);
  m.impl("group_norm_bwd", &svd_fast::group_norm_bwd);
  m.impl("temporal_attention_fwd", &svd_fast::temporal_attention_fwd);
  m.impl("temporal_attention_bwd", &svd_fast::temporal_attention_bwd);
  m.impl("temporal_conv_fwd", &svd_fast::temporal_conv_fwd);
  m.impl("temporal_conv_bwd", &svd_fast::temporal_conv_bwd);
  m.impl("geglu_fwd", &svd_fast::geglu_fwd);
  m.impl("geglu_bwd", &svd_fast::geglu_bwd);
  m.impl("blend_fwd", &svd_fast::blend_fwd);
  m.impl("winograd_conv3x3_fwd", &svd_fast::winograd_conv3x3_fwd);
}

// A plain Python module whose import runs the registrations above; `ISA` names the vector
// instruction set the kernels were compiled for.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "svd_fast native CPU kernels (torch.ops.svd_fast_native)",
                               -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m != nullptr && PyModule_AddStringConstant(m, "ISA", SVD_FAST_ISA) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
