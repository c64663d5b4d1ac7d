// CPU kernels of gainx::class_attention and gainx::gradcam: the product runs
// through ATen (bmm, see cam_common.h); this file holds the fused epilogue
//   Y = (U - min U) / (max U - min U + eps |max U|),  U = bilinear_up(ReLU(S))
// (zeros for a flat map, see cam_common.h),
// parallelized over maps with at::parallel_for and vectorized with at::vec.
//
// Bilinear upsampling (align_corners = false) is separable: each map is first
// interpolated along x into h rows of width W (small, stays in cache), then
// every output row is a lerp of two of those rows. Within a run of output rows
// that share their two source rows, each column is linear in the lerp weight,
// so its min and max over the run sit on the run's first or last row: pass 1
// reduces min / max over those rows only (about 2h rows instead of H), without
// writing. The normalization is then folded into the h intermediate rows (lerp
// weights sum to 1), and pass 2 writes each output row once.
// On x86-64 the write pass has an AVX2 + FMA build, used when the CPU has
// them unless ATEN_CPU_CAPABILITY=default.
#include "../cam_common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GAINX_AVX2_DISPATCH 1
#else
#define GAINX_AVX2_DISPATCH 0
#endif

namespace gainx {
namespace ops {
namespace {

// Source indices and weights of one axis, as ATen's upsample_bilinear2d
// computes them (area_pixel_compute_source_index, align_corners = false).
template <typename opmath_t>
struct AxisWeights {
  std::vector<int64_t> i0, i1;
  std::vector<opmath_t> l0, l1;
  std::vector<int64_t> run_ends;  // first and last index of each run of equal i0

  AxisWeights(int64_t in, int64_t out) : i0(out), i1(out), l0(out), l1(out) {
    const opmath_t scale = static_cast<opmath_t>(in) / static_cast<opmath_t>(out);
    for (int64_t d = 0; d < out; ++d) {
      const opmath_t src = std::max(scale * (static_cast<opmath_t>(d) + opmath_t(0.5)) - opmath_t(0.5), opmath_t(0));
      const int64_t i = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
      const opmath_t lambda = std::min(std::max(src - static_cast<opmath_t>(i), opmath_t(0)), opmath_t(1));
      i0[d] = i;
      i1[d] = i + (i < in - 1 ? 1 : 0);
      l1[d] = lambda;
      l0[d] = opmath_t(1) - lambda;
    }
    for (int64_t d = 0; d < out; ++d) {
      if (d == 0 || d == out - 1 || i0[d] != i0[d - 1] || i0[d] != i0[d + 1]) {
        run_ends.push_back(d);
      }
    }
  }
};

// min / max that propagate NaN like at::amin / at::amax.
template <typename T>
inline T nan_min(T a, T b) {
  return (std::isnan(a) || a < b) ? a : b;
}
template <typename T>
inline T nan_max(T a, T b) {
  return (std::isnan(a) || a > b) ? a : b;
}

template <typename opmath_t>
inline void lerp_minmax(const opmath_t* r0, const opmath_t* r1, opmath_t a, opmath_t b, int64_t n, opmath_t& lo,
                        opmath_t& hi) {
  using Vec = at::vec::Vectorized<opmath_t>;
  const Vec va(a), vb(b);
  Vec vlo(lo), vhi(hi);
  int64_t x = 0;
  for (; x + Vec::size() <= n; x += Vec::size()) {
    const Vec v = Vec::loadu(r0 + x) * va + Vec::loadu(r1 + x) * vb;
    vlo = at::vec::minimum(vlo, v);
    vhi = at::vec::maximum(vhi, v);
  }
  lo = at::vec::vec_reduce_all<opmath_t>([](Vec& p, Vec& q) { return at::vec::minimum(p, q); }, vlo);
  hi = at::vec::vec_reduce_all<opmath_t>([](Vec& p, Vec& q) { return at::vec::maximum(p, q); }, vhi);
  for (; x < n; ++x) {
    const opmath_t v = r0[x] * a + r1[x] * b;
    lo = nan_min(lo, v);
    hi = nan_max(hi, v);
  }
}

#if GAINX_AVX2_DISPATCH
// The write pass dominates the epilogue; this build of it runs on CPUs with
// AVX2 + FMA (the portable at::vec build is limited to the baseline ISA).
__attribute__((target("avx2,fma"))) void lerp_store_avx2(const float* __restrict__ r0, const float* __restrict__ r1,
                                                         float a, float b, int64_t n, float* __restrict__ out) {
  for (int64_t x = 0; x < n; ++x) {
    out[x] = r0[x] * a + r1[x] * b;
  }
}

bool use_avx2() {
  static const bool ok = [] {
    const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
    if (forced != nullptr && std::strcmp(forced, "default") == 0) {
      return false;
    }
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}
#endif

template <typename opmath_t>
inline void lerp_store(const opmath_t* r0, const opmath_t* r1, opmath_t a, opmath_t b, int64_t n, opmath_t* out) {
#if GAINX_AVX2_DISPATCH
  if constexpr (std::is_same_v<opmath_t, float>) {
    if (use_avx2()) {
      lerp_store_avx2(r0, r1, a, b, n, out);
      return;
    }
  }
#endif
  using Vec = at::vec::Vectorized<opmath_t>;
  const Vec va(a), vb(b);
  int64_t x = 0;
  for (; x + Vec::size() <= n; x += Vec::size()) {
    (Vec::loadu(r0 + x) * va + Vec::loadu(r1 + x) * vb).store(out + x);
  }
  for (; x < n; ++x) {
    out[x] = r0[x] * a + r1[x] * b;
  }
}

template <typename scalar_t>
void cam_epilogue_cpu_impl(const at::Tensor& scores, at::Tensor& out, double eps) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool reduced = !std::is_same_v<scalar_t, opmath_t>;
  const int64_t N = scores.size(0), h = scores.size(1), w = scores.size(2);
  const int64_t H = out.size(1), W = out.size(2);
  const AxisWeights<opmath_t> ax(w, W), ay(h, H);
  const scalar_t* src = scores.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> rows(h * W);                // the map interpolated along x
    std::vector<opmath_t> line(reduced ? W : 0);      // one output row before the cast
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* a = src + n * h * w;
      for (int64_t i = 0; i < h; ++i) {
        const scalar_t* arow = a + i * w;
        opmath_t* r = rows.data() + i * W;
        for (int64_t x = 0; x < W; ++x) {
          const opmath_t v0 = std::max(static_cast<opmath_t>(arow[ax.i0[x]]), opmath_t(0));
          const opmath_t v1 = std::max(static_cast<opmath_t>(arow[ax.i1[x]]), opmath_t(0));
          r[x] = ax.l0[x] * v0 + ax.l1[x] * v1;
        }
      }
      opmath_t lo = std::numeric_limits<opmath_t>::infinity(), hi = -lo;
      for (const int64_t y : ay.run_ends) {  // lerp_minmax folds each run's rows into lo / hi
        lerp_minmax(rows.data() + ay.i0[y] * W, rows.data() + ay.i1[y] * W, ay.l0[y], ay.l1[y], W, lo, hi);
      }
      scalar_t* o = dst + n * H * W;
      if (is_flat(lo, hi)) {
        std::fill(o, o + H * W, scalar_t(0));
        continue;
      }
      const opmath_t denom = norm_denominator(lo, hi, eps);
      for (opmath_t& v : rows) {
        v = (v - lo) / denom;
      }
      for (int64_t y = 0; y < H; ++y) {
        const opmath_t* r0 = rows.data() + ay.i0[y] * W;
        const opmath_t* r1 = rows.data() + ay.i1[y] * W;
        if constexpr (reduced) {
          lerp_store(r0, r1, ay.l0[y], ay.l1[y], W, line.data());
          at::vec::convert(line.data(), o + y * W, W);
        } else {
          lerp_store(r0, r1, ay.l0[y], ay.l1[y], W, o + y * W);
        }
      }
    }
  });
}

// Large outputs are written once, right after allocation, so the first-touch
// page faults (zeroing 4 KiB pages) can cost more than the kernel itself; ask
// Linux for transparent huge pages on the 2 MiB-aligned part of the buffer.
// Advice only: without THP support it is a no-op.
void advise_huge_pages(void* ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + bytes) & ~(kHuge - 1);
  if (end > begin) {
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#else
  (void)ptr;
  (void)bytes;
#endif
}

}  // namespace

at::Tensor cam_epilogue_cpu(const at::Tensor& scores, int64_t H, int64_t W, double eps) {
  const at::Tensor s = scores.contiguous();
  at::Tensor out = at::empty({s.size(0), H, W}, s.options());
  if (s.numel() == 0) {
    return out;
  }
  advise_huge_pages(out.mutable_data_ptr(), out.nbytes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "gainx_cam_epilogue_cpu",
                                  [&] { cam_epilogue_cpu_impl<scalar_t>(s, out, eps); });
  return out;
}

TORCH_LIBRARY_IMPL(gainx, CPU, m) {
  m.impl("class_attention", &detail::class_attention_impl<class_rows_cpu, cam_epilogue_cpu>);
  m.impl("gradcam", &detail::gradcam_impl<cam_epilogue_cpu>);
}

}  // namespace ops
}  // namespace gainx
