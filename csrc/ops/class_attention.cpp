// Schema and C++ entry point of gainx::class_attention (kernels: cpu/, cuda/;
// fake kernel and autograd: gainx/ops/class_attention.py).
#include "ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace gainx {
namespace ops {

at::Tensor class_attention(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& classes,
                           at::IntArrayRef out_size, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gainx::class_attention", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                         double)>();
  return op.call(features, weight, classes, out_size, eps);
}

TORCH_LIBRARY_FRAGMENT(gainx, m) {
  m.def("class_attention(Tensor features, Tensor weight, Tensor classes, int[2] out_size, float eps=1e-07) -> Tensor");
}

}  // namespace ops
}  // namespace gainx
