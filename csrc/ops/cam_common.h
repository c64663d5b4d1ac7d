// Shared pieces of the gainx CAM ops: input checks, the class-score product
// (ATen: baddbmm -> cuBLAS / CPU BLAS) and the per-device fused epilogues.
//
// Both ops reduce to  S = W_sel x F  (one row of Grad-CAM weights per map,
// paper eq. 1) followed by the epilogue of eq. 2 plus normalization:
//   A = ReLU(S) at feature resolution,
//   U = bilinear_upsample(A, out_size)   (align_corners = false),
//   Y = (U - min U) / (max U - min U + eps |max U|)   per map (eps relative to the
//   peak: Y does not depend on the scale of the scores),
// and Y = 0 for a map whose range is at most kFlat times its maximum (constant
// up to the interpolation's rounding noise), as the eager reference does.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace gainx {
namespace ops {

// gainx.attention.erase.FLAT: a map with max U - min U <= kFlat * |max U| becomes zeros.
constexpr double kFlat = 1e-5;

template <typename T>
C10_HOST_DEVICE inline bool is_flat(T lo, T hi) {
  return hi - lo <= static_cast<T>(kFlat) * (hi < T(0) ? -hi : hi);  // false for NaN, as in eager
}

// The normalization's denominator, max U - min U + eps |max U| (gainx.ops.cam.normalize_cam).
template <typename T>
C10_HOST_DEVICE inline T norm_denominator(T lo, T hi, double eps) {
  return hi - lo + static_cast<T>(eps) * (hi < T(0) ? -hi : hi);
}

// (N, h, w) pre-ReLU scores -> (N, H, W) normalized maps.
at::Tensor cam_epilogue_cpu(const at::Tensor& scores, int64_t H, int64_t W, double eps);
// weight (num_classes, C), classes (B, K) int64 -> rows weight[classes[b, k]], (B, K, C).
// A class outside [0, num_classes) is an error: a ValueError naming it on the
// CPU; on CUDA a device-side assert (checked in the gather kernel, so the op
// never waits for the device).
at::Tensor class_rows_cpu(const at::Tensor& weight, const at::Tensor& classes);
#ifdef WITH_CUDA
at::Tensor cam_epilogue_cuda(const at::Tensor& scores, int64_t H, int64_t W, double eps);
at::Tensor class_rows_cuda(const at::Tensor& weight, const at::Tensor& classes);
#endif

namespace detail {

inline std::string shape_str(const at::Tensor& t) {
  return c10::str(t.sizes());
}

inline void check_out_size(const char* op, at::IntArrayRef out_size) {
  TORCH_CHECK_VALUE(out_size.size() == 2 && out_size[0] > 0 && out_size[1] > 0,
              op, ": out_size must be two positive ints (H, W), got ", out_size);
}

inline void check_features(const char* op, const at::Tensor& features) {
  TORCH_CHECK_VALUE(features.dim() == 4, op, ": features must be a 4-D (B, C, h, w) tensor, got shape ",
              shape_str(features));
  TORCH_CHECK_TYPE(at::isFloatingType(features.scalar_type()), op,
              ": features must be a floating-point tensor, got dtype ", features.scalar_type());
  TORCH_CHECK_VALUE(features.size(2) > 0 && features.size(3) > 0, op,
              ": features must have a non-empty spatial size (h, w), got shape ", shape_str(features));
}

inline void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& features) {
  TORCH_CHECK_VALUE(t.device() == features.device(), op, ": ", name, " is on ", t.device(),
              " but features is on ", features.device(), "; move both to the same device");
  TORCH_CHECK_TYPE(t.scalar_type() == features.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but features has dtype ", features.scalar_type(), "; cast both to the same dtype");
}

inline void check_class_attention(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& classes,
                                  at::IntArrayRef out_size) {
  const char* op = "gainx.class_attention";
  check_features(op, features);
  check_out_size(op, out_size);
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == features.size(1), op,
              ": weight must be (num_classes, C) with C = features.size(1) = ", features.size(1), ", got shape ",
              shape_str(weight));
  check_same(op, "weight", weight, features);
  TORCH_CHECK_VALUE(classes.dim() == 2 && classes.size(0) == features.size(0), op,
              ": classes must be (B, K) with B = features.size(0) = ", features.size(0), ", got shape ",
              shape_str(classes));
  TORCH_CHECK_TYPE(classes.scalar_type() == at::kLong, op, ": classes must be int64, got dtype ", classes.scalar_type());
  TORCH_CHECK_VALUE(classes.device() == features.device(), op, ": classes is on ", classes.device(),
              " but features is on ", features.device(), "; move both to the same device");
}

inline void check_gradcam(const at::Tensor& features, const at::Tensor& grads, at::IntArrayRef out_size) {
  const char* op = "gainx.gradcam";
  check_features(op, features);
  check_out_size(op, out_size);
  TORCH_CHECK_VALUE(grads.sizes() == features.sizes(), op, ": grads must have the shape of features ",
              shape_str(features), ", got ", shape_str(grads));
  check_same(op, "grads", grads, features);
}

// S = alpha * (rows x F[b]) as one batched GEMM, alpha = 1 / (h w) folded into
// the GEMM's scaling (no separate pass over rows or scores): rows (P, K, C),
// features (P, C, h, w) -> (P, K, h, w).
inline at::Tensor scaled_scores(const at::Tensor& rows, const at::Tensor& features) {
  const int64_t P = features.size(0), C = features.size(1), h = features.size(2), w = features.size(3);
  at::Tensor scores = at::empty({P, rows.size(1), h * w}, features.options());
  // beta = 0: the uninitialized contents of scores are never read.
  scores.baddbmm_(rows, features.reshape({P, C, h * w}), /*beta=*/0, /*alpha=*/1.0 / static_cast<double>(h * w));
  return scores.view({P, rows.size(1), h, w});
}

// S[p] = GAP(G[p]) . F[p] = (sum_hw G[p] / (h w)) . F[p]  -> (P, h, w)  (eq. 1-2 before the ReLU).
inline at::Tensor gradcam_scores(const at::Tensor& features, const at::Tensor& grads) {
  const at::Tensor sums = grads.sum({2, 3}).unsqueeze(1);
  return scaled_scores(sums, features).squeeze(1);
}

using Epilogue = at::Tensor (*)(const at::Tensor&, int64_t, int64_t, double);
using Rows = at::Tensor (*)(const at::Tensor&, const at::Tensor&);

template <Rows rows, Epilogue epilogue>
at::Tensor class_attention_impl(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& classes,
                                at::IntArrayRef out_size, double eps) {
  check_class_attention(features, weight, classes, out_size);
  // S[b, k] = (weight[classes[b, k]] / (h w)) . F[b]  -> (B, K, h, w).  The row
  // divided by h w is the Grad-CAM weight GAP(dS_c/dF) of a GAP + linear head.
  const at::Tensor scores = scaled_scores(rows(weight, classes), features);
  const int64_t B = scores.size(0), K = scores.size(1), h = scores.size(2), w = scores.size(3);
  return epilogue(scores.view({B * K, h, w}), out_size[0], out_size[1], eps).view({B, K, out_size[0], out_size[1]});
}

template <Epilogue epilogue>
at::Tensor gradcam_impl(const at::Tensor& features, const at::Tensor& grads, at::IntArrayRef out_size, double eps) {
  check_gradcam(features, grads, out_size);
  return epilogue(gradcam_scores(features, grads), out_size[0], out_size[1], eps);
}

}  // namespace detail
}  // namespace ops
}  // namespace gainx
