// Schema and C++ entry point of gainx::gradcam (kernels: cpu/, cuda/;
// fake kernel and autograd: gainx/ops/class_attention.py).
#include "ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace gainx {
namespace ops {

at::Tensor gradcam(const at::Tensor& features, const at::Tensor& grads, at::IntArrayRef out_size, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gainx::gradcam", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, double)>();
  return op.call(features, grads, out_size, eps);
}

TORCH_LIBRARY_FRAGMENT(gainx, m) {
  m.def("gradcam(Tensor features, Tensor grads, int[2] out_size, float eps=1e-07) -> Tensor");
}

}  // namespace ops
}  // namespace gainx
