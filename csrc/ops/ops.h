// Public C++ API of the gainx ops (libtorch users). Each call goes through the
// dispatcher, so it runs the CPU or CUDA kernel of its inputs' device.
#pragma once

#include <ATen/ATen.h>

namespace gainx {
namespace ops {

constexpr double kDefaultEps = 1e-7;  // gainx.attention.erase.EPS

// Grad-CAM maps of a GAP + linear head for K classes per image.
//   features (B, C, h, w), weight (num_classes, C), classes (B, K) int64
//   -> (B, K, H, W):  ReLU(sum_k weight[c, k] / (h w) F_k), bilinearly
//   upsampled to out_size = (H, W) and min-max normalized per map (eq. 1-2).
at::Tensor class_attention(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& classes,
                           at::IntArrayRef out_size, double eps = kDefaultEps);

// Grad-CAM maps from features and gradients, both (P, C, h, w) -> (P, H, W):
//   ReLU(sum_k GAP(G_k) F_k), upsampled and min-max normalized per map (eq. 1-2).
at::Tensor gradcam(const at::Tensor& features, const at::Tensor& grads, at::IntArrayRef out_size,
                   double eps = kDefaultEps);

}  // namespace ops
}  // namespace gainx
