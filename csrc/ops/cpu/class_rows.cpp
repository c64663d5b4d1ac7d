// CPU gather of gainx::class_attention's weight rows, with the range check of
// the classes (a host loop over B*K int64 values, no ATen reduction).
#include "../cam_common.h"

namespace gainx {
namespace ops {

at::Tensor class_rows_cpu(const at::Tensor& weight, const at::Tensor& classes) {
  const at::Tensor idx = classes.contiguous();
  const int64_t num_classes = weight.size(0), K = classes.size(1);
  const int64_t* c = idx.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < idx.numel(); ++i) {
    TORCH_CHECK_VALUE(c[i] >= 0 && c[i] < num_classes, "gainx.class_attention: classes must lie in [0, ", num_classes,
                      "), got classes[", i / K, ", ", i % K, "] = ", c[i]);
  }
  return weight.index_select(0, idx.view({idx.numel()})).view({classes.size(0), K, weight.size(1)});
}

}  // namespace ops
}  // namespace gainx
