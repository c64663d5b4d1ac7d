// CUDA epilogue of gainx::class_attention and gainx::gradcam (the product runs
// through ATen, baddbmm -> cuBLAS, see cam_common.h):
//   Y = (U - min U) / (max U - min U + eps |max U|),  U = bilinear_up(ReLU(S))
// (zeros for a flat map, see cam_common.h), in one launch and without any host
// synchronization. The algorithm is the CPU kernel's (cpu/cam_epilogue_kernel.cpp):
//
// * Bilinear upsampling (align_corners = false, indices as ATen's
//   upsample_bilinear2d) is separable. Along each axis, the output indices that
//   share their two source indices form runs, and within a run a pixel is
//   linear in its lerp weight; so within a block of runs (y-run x x-run) U is
//   bilinear in the two weights and its min and max sit on the runs' end
//   points. min U / max U are reduced over the (y run ends) x (x run ends)
//   candidates only: (2h) x (2w) values (14 x 14 for 7 x 7 -> 224 x 224)
//   instead of H x W.
// * Grid (map, chunk of output rows). Each block finds its map's min / max from
//   the candidates itself (a few hundred lerps: cheaper than a second launch
//   and a round trip through global memory), interpolates the few source rows
//   its output rows need along x into shared memory, normalized (lerp weights
//   sum to 1), and writes every output row once as a lerp of two shared rows,
//   with 16-byte vector stores when rows are 16-byte aligned (W a multiple of
//   the vector width).
// * Indices within a map are 32-bit (H * W and h * w < 2^31, checked).
#include "../cam_common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace gainx {
namespace ops {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxRowsPerBlock = 32;     // output rows per block, at most (fewer when maps are few)
constexpr int kBlocksPerSM = 4;          // blocks wanted per SM when choosing the rows per block
constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory without the opt-in

// V values, 16-byte aligned at most (wider packs load / store as several 16-byte accesses).
template <typename T, int V>
struct alignas(sizeof(T) * V <= 16 ? sizeof(T) * V : 16) Pack {
  T v[V];
};

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
  int i0, i1;
  opmath_t l0, l1;
};

// One axis of the upsampling, in -> out (area_pixel_compute_source_index, align_corners = false).
template <typename opmath_t>
struct Axis {
  int in, out;
  opmath_t scale;

  __device__ Axis(int in_, int out_)
      : in(in_), out(out_), scale(static_cast<opmath_t>(in_) / static_cast<opmath_t>(out_)) {}

  __device__ __forceinline__ opmath_t src(int d) const {
    const opmath_t s = scale * (static_cast<opmath_t>(d) + opmath_t(0.5)) - opmath_t(0.5);
    return s < opmath_t(0) ? opmath_t(0) : s;
  }
  __device__ __forceinline__ int index(int d) const {
    return min(static_cast<int>(src(d)), in - 1);  // src >= 0: truncation is floor
  }
  __device__ __forceinline__ Source<opmath_t> source(int d) const {
    const opmath_t s = src(d);
    const int i = min(static_cast<int>(s), in - 1);
    opmath_t lambda = s - static_cast<opmath_t>(i);
    lambda = lambda < opmath_t(0) ? opmath_t(0) : (lambda > opmath_t(1) ? opmath_t(1) : lambda);
    return {i, i + (i < in - 1 ? 1 : 0), opmath_t(1) - lambda, lambda};
  }
  // First or last index of its run of equal source indices.
  __device__ __forceinline__ bool run_end(int d) const {
    if (d == 0 || d == out - 1) {
      return true;
    }
    const int i = index(d);
    return i != index(d - 1) || i != index(d + 1);
  }
};

// ReLU (eq. 2) that keeps NaN, as F.relu does.
template <typename opmath_t, typename scalar_t>
__device__ __forceinline__ opmath_t relu(scalar_t v) {
  const opmath_t x = static_cast<opmath_t>(v);
  return x < opmath_t(0) ? opmath_t(0) : x;
}

// Row `row` (w values) of ReLU(S) interpolated along x at source sx.
template <typename opmath_t, typename scalar_t>
__device__ __forceinline__ opmath_t row_lerp(const scalar_t* __restrict__ row, const Source<opmath_t>& sx) {
  return sx.l0 * relu<opmath_t>(row[sx.i0]) + sx.l1 * relu<opmath_t>(row[sx.i1]);
}

// min / max over the block, broadcast to every thread.
template <typename opmath_t>
__device__ __forceinline__ void block_minmax(opmath_t& lo, opmath_t& hi) {
  __shared__ opmath_t s_lo[kWarps], s_hi[kWarps];
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
  for (int i = 1; i < kWarps; ++i) {
    lo = nan_min(lo, s_lo[i]);
    hi = nan_max(hi, s_hi[i]);
  }
}

// dst[0:V] = l0 * r0[0:V] + l1 * r1[0:V] (shared rows, opmath) cast to scalar_t, one V-wide store.
template <int V, typename scalar_t, typename opmath_t>
__device__ __forceinline__ void lerp_store(scalar_t* dst, const opmath_t* r0, const opmath_t* r1, opmath_t l0,
                                           opmath_t l1) {
  const Pack<opmath_t, V> p0 = *reinterpret_cast<const Pack<opmath_t, V>*>(r0);
  const Pack<opmath_t, V> p1 = *reinterpret_cast<const Pack<opmath_t, V>*>(r1);
  Pack<scalar_t, V> v;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    v.v[k] = static_cast<scalar_t>(l0 * p0.v[k] + l1 * p1.v[k]);
  }
  *reinterpret_cast<Pack<scalar_t, V>*>(dst) = v;
}

// Dynamic shared memory of one block, in this order (opmath first: alignment):
//   rows   max_span x W  normalized source rows interpolated along x  (opmath)
//   l0, l1 R each        y lerp weights of the block's output rows     (opmath)
//   s0, s1 R each        offsets of their two source rows in `rows`    (int)
//   ys, xs H, W          run ends along y and x                        (int)
template <typename opmath_t>
size_t smem_bytes(int64_t rows_per_block, int64_t max_span, int64_t H, int64_t W) {
  return static_cast<size_t>(max_span * W + 2 * rows_per_block) * sizeof(opmath_t) +
         static_cast<size_t>(2 * rows_per_block + H + W) * sizeof(int);
}

// grid (N maps, ceil(H / rows_per_block)); V: values per store (W % V == 0).
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    cam_epilogue_kernel(const scalar_t* __restrict__ scores, scalar_t* __restrict__ out, int h, int w, int H, int W,
                        int rows_per_block, int max_span, double eps) {
  using opmath_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int run_count[2];
  opmath_t* rows = reinterpret_cast<opmath_t*>(smem);
  opmath_t* row_l0 = rows + max_span * W;
  opmath_t* row_l1 = row_l0 + rows_per_block;
  int* row_s0 = reinterpret_cast<int*>(row_l1 + rows_per_block);
  int* row_s1 = row_s0 + rows_per_block;
  int* ys = row_s1 + rows_per_block;
  int* xs = ys + H;

  const Axis<opmath_t> ay(h, H), ax(w, W);
  const int y_begin = blockIdx.y * rows_per_block;
  const int R = min(rows_per_block, H - y_begin);
  const scalar_t* __restrict__ a = scores + static_cast<int64_t>(blockIdx.x) * h * w;
  scalar_t* o = out + (static_cast<int64_t>(blockIdx.x) * H + y_begin) * W;

  // 1. Run ends of both axes (order does not matter for a min / max).
  if (threadIdx.x < 2) {
    run_count[threadIdx.x] = 0;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < H + W; d += kThreads) {
    const bool along_y = d < H;
    const int e = along_y ? d : d - H;
    if (along_y ? ay.run_end(e) : ax.run_end(e)) {
      (along_y ? ys : xs)[atomicAdd(&run_count[along_y ? 0 : 1], 1)] = e;
    }
  }
  __syncthreads();

  // 2. min / max of the map over the candidates, with the arithmetic of the write pass.
  const int ny = run_count[0], nx = run_count[1];
  opmath_t lo = INFINITY, hi = -INFINITY;
  for (int c = threadIdx.x; c < ny * nx; c += kThreads) {
    const int cy = c / nx;
    const Source<opmath_t> sy = ay.source(ys[cy]), sx = ax.source(xs[c - cy * nx]);
    const opmath_t v = sy.l0 * row_lerp(a + sy.i0 * w, sx) + sy.l1 * row_lerp(a + sy.i1 * w, sx);
    lo = nan_min(lo, v);
    hi = nan_max(hi, v);
  }
  block_minmax(lo, hi);

  const int n_vec = R * W / V;
  if (is_flat(lo, hi)) {  // the same for every thread of the block
    const Pack<scalar_t, V> zeros{};
    for (int q = threadIdx.x; q < n_vec; q += kThreads) {
      *reinterpret_cast<Pack<scalar_t, V>*>(o + q * V) = zeros;
    }
    return;
  }
  const opmath_t denom = norm_denominator(lo, hi, eps);

  // 3. The source rows of this block's output rows, interpolated along x and
  //    normalized. span <= max_span: the host bounds it from rows_per_block.
  const int base = ay.index(y_begin);
  const int span = ay.source(y_begin + R - 1).i1 - base + 1;
  for (int e = threadIdx.x; e < span * W; e += kThreads) {
    const int r = e / W, x = e - r * W;
    rows[e] = (row_lerp(a + (base + r) * w, ax.source(x)) - lo) / denom;
  }
  for (int r = threadIdx.x; r < R; r += kThreads) {
    const Source<opmath_t> sy = ay.source(y_begin + r);
    row_s0[r] = (sy.i0 - base) * W;
    row_s1[r] = (sy.i1 - base) * W;
    row_l0[r] = sy.l0;
    row_l1[r] = sy.l1;
  }
  __syncthreads();

  // 4. Every output value once: a lerp of two shared rows, V per store.
  for (int q = threadIdx.x; q < n_vec; q += kThreads) {
    const int e = q * V, r = e / W, x = e - r * W;
    lerp_store<V>(o + e, rows + row_s0[r] + x, rows + row_s1[r] + x, row_l0[r], row_l1[r]);
  }
}

// Launch shape: output rows per block and the shared memory they need.
struct Plan {
  int rows_per_block, chunks, max_span;
  size_t smem;
};

// Bound on the source rows that R consecutive output rows read: their first
// source indices differ by at most ceil((R - 1) h / H) plus one for rounding,
// and the last row adds its second source; at most h rows exist.
int64_t max_source_rows(int64_t R, int64_t h, int64_t H) {
  return std::min<int64_t>(h, R == 1 ? 2 : (R - 1) * h / H + 4);
}

int device_attribute(cudaDeviceAttr attr, c10::DeviceIndex device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

template <typename opmath_t>
Plan plan_launch(int64_t N, int64_t h, int64_t H, int64_t W, c10::DeviceIndex device) {
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount, device);
  const auto smem_limit = static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  // Enough blocks to fill the device, at least one value per thread, at most kMaxRowsPerBlock rows.
  const int64_t chunks_wanted = std::max<int64_t>(1, kBlocksPerSM * sms / N);
  const int64_t min_rows = std::min<int64_t>(H, (kThreads + W - 1) / W);
  int64_t R = std::clamp<int64_t>((H + chunks_wanted - 1) / chunks_wanted, min_rows,
                                  std::max<int64_t>(min_rows, kMaxRowsPerBlock));
  R = std::max<int64_t>(R, (H + 65534) / 65535);  // grid.y <= 65535
  while (R > 1 && smem_bytes<opmath_t>(R, max_source_rows(R, h, H), H, W) > kDefaultSmem) {
    R = std::max<int64_t>(1, R / 2);
  }
  const int64_t span = max_source_rows(R, h, H);
  const size_t smem = smem_bytes<opmath_t>(R, span, H, W);
  TORCH_CHECK_VALUE(smem <= smem_limit, "gainx: out_size width W = ", W, " needs ", smem,
                    " bytes of shared memory per block in the CUDA epilogue; this device has ", smem_limit);
  return {static_cast<int>(R), static_cast<int>((H + R - 1) / R), static_cast<int>(span), smem};
}

template <typename scalar_t>
void launch_epilogue(const at::Tensor& s, at::Tensor& out, double eps) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int64_t N = s.size(0), h = s.size(1), w = s.size(2), H = out.size(1), W = out.size(2);
  const Plan plan = plan_launch<opmath_t>(N, h, H, W, s.device().index());
  const bool vec = W % kVec == 0 && reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0;
  const auto kernel = vec ? cam_epilogue_kernel<scalar_t, kVec> : cam_epilogue_kernel<scalar_t, 1>;
  if (plan.smem > kDefaultSmem) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(plan.smem)));
  }
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>(plan.chunks));
  kernel<<<grid, kThreads, plan.smem, c10::cuda::getCurrentCUDAStream()>>>(
      s.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), static_cast<int>(h), static_cast<int>(w),
      static_cast<int>(H), static_cast<int>(W), plan.rows_per_block, plan.max_span, eps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor cam_epilogue_cuda(const at::Tensor& scores, int64_t H, int64_t W, double eps) {
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor s = scores.contiguous();
  at::Tensor out = at::empty({s.size(0), H, W}, s.options());
  if (s.numel() == 0) {
    return out;
  }
  constexpr int64_t kMax32 = std::numeric_limits<int32_t>::max();
  TORCH_CHECK_VALUE(s.size(0) <= kMax32, "gainx: ", s.size(0), " maps exceed one launch (2^31 - 1)");
  TORCH_CHECK_VALUE(H * W <= kMax32 && s.size(1) * s.size(2) <= kMax32, "gainx: maps of ", s.size(1), " x ",
                    s.size(2), " -> ", H, " x ", W, " exceed 32-bit indexing (2^31 - 1 values per map)");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "gainx_cam_epilogue_cuda",
                                  [&] { launch_epilogue<scalar_t>(s, out, eps); });
  return out;
}

TORCH_LIBRARY_IMPL(gainx, CUDA, m) {
  m.impl("class_attention", &detail::class_attention_impl<class_rows_cuda, cam_epilogue_cuda>);
  m.impl("gradcam", &detail::gradcam_impl<cam_epilogue_cuda>);
}

}  // namespace ops
}  // namespace gainx
