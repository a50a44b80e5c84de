// C++ CPU implementation of the segment-modulated LayerNorm, registered as dvg::_cpp_modulated_layer_norm_out
// (writes into a caller-provided `out`, any row stride) and dvg::_cpp_modulated_layer_norm (a contiguous output,
// then the same kernel); the public ops in dvg_engine/ops/layer_norm.py validate and dispatch here.
//
//   y[r] = (x[r] − mean(x[r])) / sqrt(var(x[r]) + eps) · (1 + scale[seg(r)]) + shift[seg(r)]
//
// x: (total, D) with any row stride and a contiguous last dim; scale, shift: (B, D) likewise; seg(r) is the
// sample whose cu_seqlens segment holds row r. Statistics and math in fp32 (biased variance, as LayerNorm),
// output in x's dtype. One read of x and one write of y: rows are split over threads, (1 + scale) and
// shift are converted to fp32 once per call (B·D values), and each row is converted once into a
// thread-local fp32 buffer so the passes over it run from L1.
//
// The row loops are written on raw floats / bf16 bit patterns so they vectorise, and compiled for
// AVX-512, AVX2 and baseline x86-64 with a runtime choice (GCC target_clones): the extension is built
// without -march flags, which alone would leave it at SSE2 (and a wheel built with -march=native would not
// load on an older CPU). fp16 rows are converted with F16C instructions where the CPU has them (chosen at run
// time), since GCC 12 leaves _Float16 conversions scalar. The allocating op's output comes from
// dvg::empty_cpu_output. Both helpers are in csrc/cpu_common.cpp.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
// x86-64-v3 = AVX2 + FMA + F16C, x86-64-v4 = AVX-512.
// fp-contract=off: no fused multiply-adds, so every clone rounds alike (separate mul, add), as the reference does.
#define DVG_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=off")))
#define DVG_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define DVG_ALWAYS_INLINE inline
#define DVG_SIMD_CLONES
#endif

#include "cpu_common.h"

namespace {

// Row sums are accumulated in this many independent lanes, lane k taking elements k, k + kLanes, …, then the
// lanes are added pairwise. Independent chains keep the adds pipelined (GCC kept the old `omp simd reduction`
// accumulator in memory, one store and reload per vector), and the fixed layout makes the result the same
// whatever vector width a clone uses (4, 8 or 16 floats divide the 32 lanes).
constexpr int64_t kLanes = 32;

DVG_ALWAYS_INLINE float fold_lanes(float* acc) {
  for (int64_t width = kLanes / 2; width >= 1; width /= 2)
    for (int64_t k = 0; k < width; ++k) acc[k] += acc[k + width];
  return acc[0];
}

// Mean and 1/sqrt(biased variance + eps) of one fp32 row, by two passes (no E[x²] − E[x]² cancellation).
// always_inline: GCC does not inline a default-target function into the target_clones below on its own (their
// arch differs), and the out-of-line copy would run these two passes with baseline SSE2 vectors.
DVG_ALWAYS_INLINE void row_stats(const float* row, int64_t dim, float eps, float& mean, float& rstd) {
  const int64_t body = dim - dim % kLanes;
  float acc[kLanes] = {};
  for (int64_t j = 0; j < body; j += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += row[j + k];
  for (int64_t j = body; j < dim; ++j) acc[j - body] += row[j];
  mean = fold_lanes(acc) / static_cast<float>(dim);
  const float m = mean;
  float sq[kLanes] = {};
  for (int64_t j = 0; j < body; j += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) {
      const float c = row[j + k] - m;
      sq[k] += c * c;
    }
  for (int64_t j = body; j < dim; ++j) {
    const float c = row[j] - m;
    sq[j - body] += c * c;
  }
  rstd = 1.f / std::sqrt(fold_lanes(sq) / static_cast<float>(dim) + eps);
}

// y = (x − mean)·rstd·g + s, each product and sum rounded to fp32 in this order (Y may alias X).
DVG_ALWAYS_INLINE void modulate(const float* x, float* y, const float* g, const float* s, int64_t dim, float mean,
                                float rstd) {
#pragma omp simd
  for (int64_t j = 0; j < dim; ++j) y[j] = (x[j] - mean) * rstd * g[j] + s[j];
}

DVG_SIMD_CLONES
void ln_row_f32(const float* x, float* y, const float* g, const float* s, int64_t dim, float eps) {
  float mean, rstd;
  row_stats(x, dim, eps, mean, rstd);
  modulate(x, y, g, s, dim, mean, rstd);
}

// fp32 in place: buf = LayerNorm(buf)·g + s (the fp16 path converts around it).
DVG_SIMD_CLONES
void ln_row_f32_inplace(float* buf, const float* g, const float* s, int64_t dim, float eps) {
  float mean, rstd;
  row_stats(buf, dim, eps, mean, rstd);
  modulate(buf, buf, g, s, dim, mean, rstd);
}

DVG_SIMD_CLONES
void ln_row_bf16(const uint16_t* x, uint16_t* y, float* buf, const float* g, const float* s, int64_t dim,
                 float eps) {
#pragma omp simd
  for (int64_t j = 0; j < dim; ++j) {
    buf[j] = __builtin_bit_cast(float, static_cast<uint32_t>(x[j]) << 16);
  }
  float mean, rstd;
  row_stats(buf, dim, eps, mean, rstd);
#pragma omp simd
  for (int64_t j = 0; j < dim; ++j) {
    const float v = (buf[j] - mean) * rstd * g[j] + s[j];
    const uint32_t bits = __builtin_bit_cast(uint32_t, v);
    // round to nearest even, as c10::BFloat16; NaN -> canonical quiet NaN
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    y[j] = (v != v) ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
  }
}

void ln_row_f16(const at::Half* x, at::Half* y, float* buf, const float* g, const float* s, int64_t dim, float eps,
                dvg::HalfRowFn to_float, dvg::HalfRowFn to_half) {
  to_float(x, buf, dim);
  ln_row_f32_inplace(buf, g, s, dim, eps);
  to_half(buf, y, dim);
}

template <typename scalar_t>
void modulated_layer_norm_rows(const at::Tensor& x, const int32_t* cu, int64_t batch, const float* one_plus_scale,
                               const float* shift, double eps, const at::Tensor& out) {
  const int64_t total = x.size(0), dim = x.size(1), stride_row = x.stride(0), out_stride_row = out.stride(0);
  const scalar_t* src_base = x.data_ptr<scalar_t>();
  scalar_t* dst_base = out.data_ptr<scalar_t>();
  const float eps_f = static_cast<float>(eps);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1));
  const dvg::HalfRowFn to_float = dvg::half_to_float_row(), to_half = dvg::float_to_half_row();
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(dim);
    int64_t b = static_cast<int64_t>(std::upper_bound(cu + 1, cu + batch + 1, static_cast<int32_t>(begin)) - (cu + 1));
    for (int64_t r = begin; r < end; ++r) {
      while (r >= cu[b + 1]) ++b;
      const scalar_t* src = src_base + r * stride_row;
      scalar_t* dst = dst_base + r * out_stride_row;
      const float* g = one_plus_scale + b * dim;
      const float* s = shift + b * dim;
      if constexpr (std::is_same<scalar_t, float>::value) {
        ln_row_f32(src, dst, g, s, dim, eps_f);
      } else if constexpr (std::is_same<scalar_t, at::BFloat16>::value) {
        ln_row_bf16(reinterpret_cast<const uint16_t*>(src), reinterpret_cast<uint16_t*>(dst), buffer.data(), g, s, dim,
                    eps_f);
      } else {
        ln_row_f16(src, dst, buffer.data(), g, s, dim, eps_f, to_float, to_half);
      }
    }
  });
}

void modulated_layer_norm_out_cpu(const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& scale,
                                   const at::Tensor& shift, double eps, const at::Tensor& out) {
  const char* op = "dvg::_cpp_modulated_layer_norm_out";
  TORCH_CHECK(x.dim() == 2 && x.is_cpu(), op, ": x must be a 2-D CPU tensor (total, D)");
  TORCH_CHECK(x.size(1) <= 1 || x.stride(1) == 1, op, ": x needs a contiguous last dim");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
              ": x must be float32, float16 or bfloat16");
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt && cu_seqlens.dim() == 1 && cu_seqlens.is_contiguous() &&
                  cu_seqlens.size(0) >= 2 && cu_seqlens.is_cpu(),
              op, ": cu_seqlens must be a contiguous 1-D CPU int32 tensor (batch+1,)");
  const int64_t batch = cu_seqlens.size(0) - 1, dim = x.size(1);
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == batch && scale.size(1) == dim && shift.sizes() == scale.sizes() &&
                  scale.is_cpu() && shift.is_cpu(),
              op, ": scale and shift must be CPU tensors of shape (batch, D)");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == x.size(0) && out.size(1) == dim && out.is_cpu() &&
                  out.scalar_type() == x.scalar_type() && (dim <= 1 || out.stride(1) == 1),
              op, ": out must be a CPU tensor of x's shape and dtype with a contiguous last dim");
  // The kernel finds each row's sample from cu_seqlens: its values must index x's rows (checked here too, so a
  // call with validate=False in Python cannot read or write out of bounds).
  const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
  TORCH_CHECK(cu[0] == 0 && cu[batch] == x.size(0), op, ": cu_seqlens must run from 0 to ", x.size(0));
  for (int64_t b = 0; b < batch; ++b) TORCH_CHECK(cu[b + 1] >= cu[b], op, ": cu_seqlens must be non-decreasing");
  if (x.numel() == 0) return;
  // fp32 copies of (1 + scale) and shift: B·D values, converted once instead of once per row.
  at::Tensor one_plus_scale = scale.to(at::kFloat).add(1.0).contiguous();
  at::Tensor shift_f = shift.to(at::kFloat).contiguous();
  const float* g = one_plus_scale.data_ptr<float>();
  const float* s = shift_f.data_ptr<float>();
  switch (x.scalar_type()) {
    case at::kFloat: modulated_layer_norm_rows<float>(x, cu, batch, g, s, eps, out); break;
    case at::kBFloat16: modulated_layer_norm_rows<at::BFloat16>(x, cu, batch, g, s, eps, out); break;
    default: modulated_layer_norm_rows<at::Half>(x, cu, batch, g, s, eps, out); break;
  }
}

at::Tensor modulated_layer_norm_cpu(const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& scale,
                                    const at::Tensor& shift, double eps) {
  TORCH_CHECK(x.dim() == 2, "dvg::_cpp_modulated_layer_norm: x must be a 2-D tensor (total, D)");
  at::Tensor out = dvg::empty_cpu_output({x.size(0), x.size(1)}, x.options());
  modulated_layer_norm_out_cpu(x, cu_seqlens, scale, shift, eps, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dvg, m) {
  m.def("_cpp_modulated_layer_norm(Tensor x, Tensor cu_seqlens, Tensor scale, Tensor shift, float eps) -> Tensor");
  m.def("_cpp_modulated_layer_norm_out(Tensor x, Tensor cu_seqlens, Tensor scale, Tensor shift, float eps, "
        "Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(dvg, CPU, m) {
  m.impl("_cpp_modulated_layer_norm", &modulated_layer_norm_cpu);
  m.impl("_cpp_modulated_layer_norm_out", &modulated_layer_norm_out_cpu);
}
