// C++ CPU implementation of the segment-modulated LayerNorm, registered as dvg::_cpp_modulated_layer_norm
// (the public op dvg::modulated_layer_norm in dvg_engine/ops/layer_norm.py validates and dispatches here).
//
//   y[r] = (x[r] − mean(x[r])) / sqrt(var(x[r]) + eps) · (1 + scale[seg(r)]) + shift[seg(r)]
//
// x: (total, D) with any row stride and a contiguous last dim; scale, shift: (B, D) likewise; seg(r) is the
// sample whose cu_seqlens segment holds row r. Statistics and math in fp32 (biased variance, as LayerNorm),
// output in x's dtype. One read of x and one write of y: rows are split over threads, (1 + scale) and
// shift are converted to fp32 once per call (B·D values), and each row is converted once into a
// thread-local fp32 buffer so the three passes over it run from L1 and vectorise (omp simd).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace {

template <typename scalar_t>
void modulated_layer_norm_rows(const at::Tensor& x, const int32_t* cu, int64_t batch, const float* one_plus_scale,
                               const float* shift, double eps, at::Tensor& out) {
  const int64_t total = x.size(0), dim = x.size(1), stride_row = x.stride(0);
  const scalar_t* src_base = x.data_ptr<scalar_t>();
  scalar_t* dst_base = out.data_ptr<scalar_t>();
  const float eps_f = static_cast<float>(eps);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1));
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(std::is_same<scalar_t, float>::value ? 0 : dim);
    int64_t b = static_cast<int64_t>(std::upper_bound(cu + 1, cu + batch + 1, static_cast<int32_t>(begin)) - (cu + 1));
    for (int64_t r = begin; r < end; ++r) {
      while (r >= cu[b + 1]) ++b;
      const scalar_t* src = src_base + r * stride_row;
      const float* row;
      if constexpr (std::is_same<scalar_t, float>::value) {
        row = src;
      } else {
        float* buf = buffer.data();
#pragma omp simd
        for (int64_t j = 0; j < dim; ++j) buf[j] = static_cast<float>(src[j]);
        row = buf;
      }
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < dim; ++j) sum += row[j];
      const float mean = sum / static_cast<float>(dim);
      float sq = 0.f;
#pragma omp simd reduction(+ : sq)
      for (int64_t j = 0; j < dim; ++j) {
        const float c = row[j] - mean;
        sq += c * c;
      }
      const float rstd = 1.f / std::sqrt(sq / static_cast<float>(dim) + eps_f);
      const float* g = one_plus_scale + b * dim;
      const float* s = shift + b * dim;
      scalar_t* dst = dst_base + r * dim;
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) dst[j] = static_cast<scalar_t>((row[j] - mean) * rstd * g[j] + s[j]);
    }
  });
}

at::Tensor modulated_layer_norm_cpu(const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& scale,
                                    const at::Tensor& shift, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.is_cpu(), "dvg::_cpp_modulated_layer_norm: x must be a 2-D CPU tensor (total, D)");
  TORCH_CHECK(x.size(1) <= 1 || x.stride(1) == 1, "dvg::_cpp_modulated_layer_norm: x needs a contiguous last dim");
  TORCH_CHECK(cu_seqlens.dtype() == at::kInt && cu_seqlens.dim() == 1 && cu_seqlens.is_contiguous() &&
                  cu_seqlens.size(0) >= 2,
              "dvg::_cpp_modulated_layer_norm: cu_seqlens must be a contiguous 1-D int32 tensor (batch+1,)");
  const int64_t batch = cu_seqlens.size(0) - 1, dim = x.size(1);
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == batch && scale.size(1) == dim && shift.sizes() == scale.sizes(),
              "dvg::_cpp_modulated_layer_norm: scale and shift must be (batch, D)");
  at::Tensor out = at::empty({x.size(0), dim}, x.options());
  if (x.numel() == 0) return out;
  // fp32 copies of (1 + scale) and shift: B·D values, converted once instead of once per row.
  at::Tensor one_plus_scale = scale.to(at::kFloat).add(1.0).contiguous();
  at::Tensor shift_f = shift.to(at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dvg_modulated_layer_norm", [&] {
    modulated_layer_norm_rows<scalar_t>(x, cu_seqlens.data_ptr<int32_t>(), batch, one_plus_scale.data_ptr<float>(),
                                        shift_f.data_ptr<float>(), eps, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dvg, m) {
  m.def("_cpp_modulated_layer_norm(Tensor x, Tensor cu_seqlens, Tensor scale, Tensor shift, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(dvg, CPU, m) { m.impl("_cpp_modulated_layer_norm", &modulated_layer_norm_cpu); }
