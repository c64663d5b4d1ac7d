// CUDA kernels of gainx::class_attention and gainx::gradcam: the product runs
// through ATen (bmm -> cuBLAS, see cam_common.h); this file holds the fused
// epilogue, one thread block per map:
//   pass 1: every thread samples U = bilinear_up(ReLU(S)) at its pixels
//           (align_corners = false, indices as ATen's upsample_bilinear2d) and
//           keeps a running min / max; block reduction (warp shuffles);
//   pass 2: every thread writes (U - min) / (max - min + eps |max|), coalesced
//           (zeros for a flat map, see cam_common.h).
// The low-resolution map (h*w values, const __restrict__) stays in cache.
#include "../cam_common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

namespace gainx {
namespace ops {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T nan_min(T a, T b) {
  return (isnan(a) || a < b) ? a : b;
}
template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (isnan(a) || a > b) ? a : b;
}

template <typename opmath_t>
struct Source {
  int64_t i0, i1;
  opmath_t l0, l1;
};

template <typename opmath_t>
__device__ __forceinline__ Source<opmath_t> source(int64_t d, int64_t in, opmath_t scale) {
  opmath_t src = scale * (static_cast<opmath_t>(d) + opmath_t(0.5)) - opmath_t(0.5);
  src = src < opmath_t(0) ? opmath_t(0) : src;
  int64_t i = static_cast<int64_t>(floor(src));
  i = i < in - 1 ? i : in - 1;
  opmath_t lambda = src - static_cast<opmath_t>(i);
  lambda = lambda < opmath_t(0) ? opmath_t(0) : (lambda > opmath_t(1) ? opmath_t(1) : lambda);
  return {i, i + (i < in - 1 ? 1 : 0), opmath_t(1) - lambda, lambda};
}

template <typename scalar_t, typename opmath_t>
__device__ __forceinline__ opmath_t sample(const scalar_t* __restrict__ a, int64_t p, int64_t w, int64_t h,
                                           int64_t W, opmath_t scale_h, opmath_t scale_w) {
  const Source<opmath_t> sy = source(p / W, h, scale_h);
  const Source<opmath_t> sx = source(p % W, w, scale_w);
  auto at = [&](int64_t i, int64_t j) {
    const opmath_t v = static_cast<opmath_t>(a[i * w + j]);
    return v > opmath_t(0) ? v : opmath_t(0);  // ReLU (eq. 2)
  };
  return sy.l0 * (sx.l0 * at(sy.i0, sx.i0) + sx.l1 * at(sy.i0, sx.i1)) +
         sy.l1 * (sx.l0 * at(sy.i1, sx.i0) + sx.l1 * at(sy.i1, sx.i1));
}

template <typename opmath_t>
__device__ __forceinline__ void block_minmax(opmath_t& lo, opmath_t& hi) {
  __shared__ opmath_t s_lo[kThreads / 32], s_hi[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    lo = nan_min(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = nan_max(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_lo[warp] = lo;
    s_hi[warp] = hi;
  }
  __syncthreads();
  lo = s_lo[0];
  hi = s_hi[0];
  for (int i = 1; i < kThreads / 32; ++i) {
    lo = nan_min(lo, s_lo[i]);
    hi = nan_max(hi, s_hi[i]);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) cam_epilogue_kernel(const scalar_t* __restrict__ scores,
                                                                scalar_t* __restrict__ out, int64_t h, int64_t w,
                                                                int64_t H, int64_t W, double eps) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t scale_h = static_cast<opmath_t>(h) / static_cast<opmath_t>(H);
  const opmath_t scale_w = static_cast<opmath_t>(w) / static_cast<opmath_t>(W);
  const scalar_t* a = scores + static_cast<int64_t>(blockIdx.x) * h * w;
  scalar_t* o = out + static_cast<int64_t>(blockIdx.x) * H * W;
  const int64_t HW = H * W;

  opmath_t lo = INFINITY, hi = -INFINITY;
  for (int64_t p = threadIdx.x; p < HW; p += kThreads) {
    const opmath_t v = sample(a, p, w, h, W, scale_h, scale_w);
    lo = nan_min(lo, v);
    hi = nan_max(hi, v);
  }
  block_minmax(lo, hi);
  if (is_flat(lo, hi)) {  // the same for every thread of the block
    for (int64_t p = threadIdx.x; p < HW; p += kThreads) {
      o[p] = scalar_t(0);
    }
    return;
  }
  const opmath_t denom = norm_denominator(lo, hi, eps);
  for (int64_t p = threadIdx.x; p < HW; p += kThreads) {
    o[p] = static_cast<scalar_t>((sample(a, p, w, h, W, scale_h, scale_w) - lo) / denom);
  }
}

}  // namespace

at::Tensor cam_epilogue_cuda(const at::Tensor& scores, int64_t H, int64_t W, double eps) {
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor s = scores.contiguous();
  at::Tensor out = at::empty({s.size(0), H, W}, s.options());
  if (s.numel() == 0) {
    return out;
  }
  TORCH_CHECK(s.size(0) <= std::numeric_limits<int32_t>::max(), "gainx: too many maps for one launch: ", s.size(0));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "gainx_cam_epilogue_cuda", [&] {
    cam_epilogue_kernel<scalar_t><<<static_cast<unsigned>(s.size(0)), kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s.size(1), s.size(2), H, W, eps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(gainx, CUDA, m) {
  m.impl("class_attention", &detail::class_attention_impl<cam_epilogue_cuda>);
  m.impl("gradcam", &detail::gradcam_impl<cam_epilogue_cuda>);
}

}  // namespace ops
}  // namespace gainx
