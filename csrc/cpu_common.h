// Shared CPU helpers of the C++ kernels, defined in csrc/cpu_common.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dvg {
// at::empty, or for a large output its own huge-page mapping (far fewer first-touch faults).
at::Tensor empty_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options);
// fp16 <-> fp32 of n contiguous values: F16C where the CPU has it, else c10::Half (the same bits).
using HalfRowFn = void (*)(const void* src, void* dst, int64_t n);
HalfRowFn half_to_float_row();
HalfRowFn float_to_half_row();
// False when DVG_CPP_SIMD=0: the kernels then take their portable paths (the tests compare both on one machine).
bool simd_allowed();
}  // namespace dvg
