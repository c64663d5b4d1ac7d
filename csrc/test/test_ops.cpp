// C++ test of libgainx_ops (run by ctest): the CPU kernels against an ATen
// composition of the same math (ReLU, bilinear upsample with
// align_corners = false, per-map min-max normalization), and the input checks.
#include "ops/ops.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <iostream>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::cerr << "FAIL: " << what << "\n";
  }
}

// (N, h, w) raw scores -> (N, H, W) normalized maps, composed from ATen ops.
at::Tensor reference_maps(const at::Tensor& raw, int64_t H, int64_t W, double eps) {
  const at::Tensor up = at::upsample_bilinear2d(raw.relu().unsqueeze(1), {H, W}, /*align_corners=*/false).squeeze(1);
  const at::Tensor lo = up.amin({1, 2}, true), hi = up.amax({1, 2}, true);
  return at::where(hi > lo, (up - lo) / (hi - lo + eps * hi.abs()), at::zeros_like(up));  // all-zero map: zeros
}

void check_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  const bool same_shape = got.sizes() == want.sizes();
  expect(same_shape, what + ": shape " + c10::str(got.sizes()) + " != " + c10::str(want.sizes()));
  if (same_shape) {
    expect(at::allclose(got, want, 1e-10, 1e-12), what + ": max error " + c10::str((got - want).abs().max().item<double>()));
  }
}

template <typename F>
void expect_throws(F&& f, const std::string& needle, const std::string& what) {
  try {
    f();
    expect(false, what + ": no error");
  } catch (const c10::Error& e) {
    expect(std::string(e.what()).find(needle) != std::string::npos, what + ": message lacks '" + needle + "': " + e.what());
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const int64_t B = 3, C = 5, h = 7, w = 6, K = 4, N = 10, H = 31, W = 17;
  const at::Tensor features = at::randn({B, C, h, w}, opts);
  const at::Tensor weight = at::randn({N, C}, opts);
  const at::Tensor classes = at::randint(0, N, {B, K}, at::kLong);

  // class_attention: rows weight[c] / (h w) against every feature map.
  const at::Tensor rows = weight.index_select(0, classes.reshape(-1)).view({B, K, C}) / static_cast<double>(h * w);
  const at::Tensor raw = at::einsum("bkc,bchw->bkhw", {rows, features}).reshape({B * K, h, w});
  check_close(gainx::ops::class_attention(features, weight, classes, {H, W}),
              reference_maps(raw, H, W, gainx::ops::kDefaultEps).view({B, K, H, W}), "class_attention");

  // gradcam: weights GAP(G).
  const at::Tensor grads = at::randn({B, C, h, w}, opts);
  const at::Tensor raw_g = (grads.mean({2, 3}, true) * features).sum(1);
  check_close(gainx::ops::gradcam(features, grads, {H, W}), reference_maps(raw_g, H, W, gainx::ops::kDefaultEps),
              "gradcam");

  // A constant map normalizes to zeros; an empty batch gives an empty result.
  const at::Tensor flat = gainx::ops::gradcam(at::ones({2, C, h, w}, opts), at::ones({2, C, h, w}, opts), {H, W});
  expect(flat.abs().max().item<double>() == 0.0, "constant map must give zeros");
  expect(gainx::ops::class_attention(features.narrow(0, 0, 0), weight, classes.narrow(0, 0, 0), {H, W}).sizes() ==
             at::IntArrayRef({0, K, H, W}),
         "empty batch shape");

  expect_throws([&] { gainx::ops::class_attention(features, weight.to(at::kFloat), classes, {H, W}); }, "dtype",
                "dtype mismatch");
  expect_throws([&] { gainx::ops::class_attention(features, weight, classes + N, {H, W}); }, "classes must lie in",
                "class out of range");
  expect_throws([&] { gainx::ops::class_attention(features, weight, classes.to(at::kInt), {H, W}); }, "int64",
                "classes dtype");
  expect_throws([&] { gainx::ops::gradcam(features, grads.narrow(1, 0, 2), {H, W}); }, "grads must have the shape",
                "grads shape");
  expect_throws([&] { gainx::ops::gradcam(features, grads, {0, W}); }, "out_size", "out_size");

  if (failures == 0) {
    std::cout << "gainx ops C++ test: all checks passed\n";
  }
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
