// CUDA gather of gainx::class_attention's weight rows: rows[b, k] =
// weight[classes[b, k]], one launch, with the range check of the classes in
// the kernel (a device-side assert naming the class and the limit), so the op
// never copies classes to the host or waits for the device.
#include "../cam_common.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

namespace gainx {
namespace ops {
namespace {

constexpr int kGatherThreads = 256;

// grid (B*K, ceil(C / kGatherThreads)): block (r, j) copies columns
// [j * kGatherThreads, (j + 1) * kGatherThreads) of row r.
template <typename scalar_t>
__global__ void __launch_bounds__(kGatherThreads)
    class_rows_kernel(const scalar_t* __restrict__ weight, const int64_t* __restrict__ classes,
                      scalar_t* __restrict__ rows, int64_t num_classes, int C) {
  const int64_t c = classes[blockIdx.x];
  CUDA_KERNEL_ASSERT_PRINTF(c >= 0 && c < num_classes,
                            "gainx.class_attention: classes must lie in [0, %lld), got %lld at flat index %u",
                            static_cast<long long>(num_classes), static_cast<long long>(c), blockIdx.x);
  const int col = blockIdx.y * kGatherThreads + threadIdx.x;
  if (col < C) {
    rows[static_cast<int64_t>(blockIdx.x) * C + col] = weight[c * C + col];
  }
}

}  // namespace

at::Tensor class_rows_cuda(const at::Tensor& weight, const at::Tensor& classes) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.contiguous(), idx = classes.contiguous();
  const int64_t rows_n = idx.numel(), C = w.size(1);
  at::Tensor rows = at::empty({classes.size(0), classes.size(1), C}, w.options());
  if (rows.numel() == 0) {
    return rows;
  }
  const int64_t col_blocks = (C + kGatherThreads - 1) / kGatherThreads;
  TORCH_CHECK_VALUE(rows_n <= std::numeric_limits<int32_t>::max() && col_blocks <= 65535,
                    "gainx.class_attention: B*K = ", rows_n, " rows of C = ", C,
                    " channels exceed one launch (limits 2^31 - 1 rows, ", 65535 * kGatherThreads, " channels)");
  const dim3 grid(static_cast<unsigned>(rows_n), static_cast<unsigned>(col_blocks));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "gainx_class_rows_cuda", [&] {
    class_rows_kernel<scalar_t><<<grid, kGatherThreads, 0, stream>>>(
        w.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(), rows.mutable_data_ptr<scalar_t>(),
        w.size(0), static_cast<int>(C));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return rows;
}

}  // namespace ops
}  // namespace gainx
