// The Python module gainx._C. Importing it loads this library, whose static
// initializers register the gainx:: ops (csrc/ops) with the dispatcher.
#include <pybind11/pybind11.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "gainx C++/CUDA ops: torch.ops.gainx.class_attention, torch.ops.gainx.gradcam";
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
