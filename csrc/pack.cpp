// C++ CPU implementations of the varlen token pack / unpack and the pack with fused HunyuanVideo 3-D RoPE.
// Text comes padded (B, L, ...) with valid prefixes, or as a stream (N, ...) with cu_text.
// Registered as private ops dvg::_cpp_pack_tokens, dvg::_cpp_unpack_tokens, dvg::_cpp_pack_qk_rope; the
// public ops (dvg_engine/ops/pack.py) validate their inputs and dispatch here. Layout and math: see the
// docstring of dvg_engine/ops/pack.py. Tokens are viewed as (rows, heads, head_dim) with arbitrary token
// and head strides and a contiguous last dimension; outputs are contiguous.
//
// The copy paths move raw bytes (no dtype dispatch), one memcpy per token when its heads are adjacent.
// The RoPE path builds, per sample, cos/sin of every (axis position, channel pair) once — T·d_t/2 + H·d_h/2
// + W·d_w/2 values, a few KiB in cache, not a per-token table — then rotates every head of q and k.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

struct TokenView {
  const char* data;
  int64_t stride_tok;   // bytes
  int64_t stride_head;  // bytes
  int64_t stride_batch; // bytes (text only)
};

TokenView view_of(const at::Tensor& x, int leading) {
  // leading = 1 for (rows, [heads,] dim), 2 for (B, rows, [heads,] dim)
  const int64_t es = x.element_size();
  TokenView v;
  v.data = static_cast<const char*>(x.data_ptr());
  v.stride_batch = leading == 2 ? x.stride(0) * es : 0;
  v.stride_tok = x.stride(leading - 1) * es;
  v.stride_head = (x.dim() == leading + 2) ? x.stride(leading) * es : 0;
  return v;
}

int64_t heads_of(const at::Tensor& x, int leading) { return x.dim() == leading + 2 ? x.size(leading) : 1; }

inline void copy_row(char* dst, const char* src, int64_t heads, int64_t row_bytes, int64_t src_head_stride) {
  if (heads == 1 || src_head_stride == row_bytes) {
    std::memcpy(dst, src, static_cast<size_t>(heads * row_bytes));
  } else {
    for (int64_t h = 0; h < heads; ++h) std::memcpy(dst + h * row_bytes, src + h * src_head_stride, row_bytes);
  }
}

// Sample b with cu[b] <= p < cu[b+1]; empty samples are skipped (upper_bound over cu[1..B]).
inline int64_t sample_of(const int32_t* cu, int64_t batch, int64_t p) {
  return static_cast<int64_t>(std::upper_bound(cu + 1, cu + batch + 1, static_cast<int32_t>(p)) - (cu + 1));
}

// Text rows: padded (B, L, ...) -> row j of sample b at b·stride_batch + j·stride_tok; a stream (N, ...) with
// cu_text -> row cu_text[b] + j (stride_batch is 0 for a stream view).
struct TextSource {
  TokenView view;
  const int32_t* cu_text;  // nullptr for padded text
  const char* row(int64_t b, int64_t j) const {
    const int64_t base = cu_text ? cu_text[b] : 0;
    return view.data + b * view.stride_batch + (base + j) * view.stride_tok;
  }
};

TextSource text_source(const at::Tensor& text, const c10::optional<at::Tensor>& cu_text) {
  if (cu_text.has_value()) return {view_of(text, 1), cu_text->data_ptr<int32_t>()};
  return {view_of(text, 2), nullptr};
}

void check_cu(const at::Tensor& cu, const char* name) {
  TORCH_CHECK(cu.dtype() == at::kInt && cu.dim() == 1 && cu.is_contiguous() && cu.size(0) >= 2 && cu.is_cpu(),
              "dvg::_cpp pack: ", name, " must be a contiguous 1-D CPU int32 tensor of shape (batch+1,)");
}

at::Tensor pack_tokens_cpu(const at::Tensor& latent, const at::Tensor& text, const at::Tensor& cu_latent,
                           const at::Tensor& cu_seqlens, int64_t total, const c10::optional<at::Tensor>& cu_text) {
  check_cu(cu_latent, "cu_latent");
  check_cu(cu_seqlens, "cu_seqlens");
  if (cu_text.has_value()) check_cu(*cu_text, "cu_text");
  TORCH_CHECK(latent.dim() == 2 || latent.dim() == 3, "dvg::_cpp_pack_tokens: latent must be 2-D or 3-D");
  TORCH_CHECK(text.dim() == latent.dim() + (cu_text.has_value() ? 0 : 1) && text.dtype() == latent.dtype(),
              "dvg::_cpp_pack_tokens: text must be (B, L, ...) padded or (N, ...) with cu_text, in latent's dtype");
  std::vector<int64_t> out_shape{total};
  for (int64_t d = 1; d < latent.dim(); ++d) out_shape.push_back(latent.size(d));
  at::Tensor out = at::empty(out_shape, latent.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t heads = heads_of(latent, 1);
  const int64_t row_bytes = latent.size(-1) * latent.element_size();
  if (total == 0 || heads == 0 || row_bytes == 0) return out;
  const TokenView lat = view_of(latent, 1);
  const TextSource txt = text_source(text, cu_text);
  const int32_t* cu_lat = cu_latent.data_ptr<int32_t>();
  const int32_t* cu_seq = cu_seqlens.data_ptr<int32_t>();
  const int64_t batch = cu_seqlens.size(0) - 1;
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t out_tok = heads * row_bytes;
  at::parallel_for(0, total, 256, [&](int64_t begin, int64_t end) {
    int64_t b = sample_of(cu_seq, batch, begin);
    for (int64_t p = begin; p < end; ++p) {
      while (p >= cu_seq[b + 1]) ++b;
      const int64_t local = p - cu_seq[b];
      const int64_t lat_len = cu_lat[b + 1] - cu_lat[b];
      if (local < lat_len) {
        copy_row(dst + p * out_tok, lat.data + (cu_lat[b] + local) * lat.stride_tok, heads, row_bytes, lat.stride_head);
      } else {
        copy_row(dst + p * out_tok, txt.row(b, local - lat_len), heads, row_bytes, txt.view.stride_head);
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> unpack_tokens_cpu(const at::Tensor& packed, const at::Tensor& cu_latent,
                                                     const at::Tensor& cu_seqlens, int64_t total_latent,
                                                     int64_t text_len, const c10::optional<at::Tensor>& cu_text) {
  check_cu(cu_latent, "cu_latent");
  check_cu(cu_seqlens, "cu_seqlens");
  if (cu_text.has_value()) check_cu(*cu_text, "cu_text");
  TORCH_CHECK(packed.dim() == 2 || packed.dim() == 3, "dvg::_cpp_unpack_tokens: packed must be 2-D or 3-D");
  const int64_t batch = cu_seqlens.size(0) - 1;
  const bool stream = cu_text.has_value();
  std::vector<int64_t> lat_shape{total_latent}, txt_shape{batch, text_len};
  if (stream) txt_shape = {text_len};
  for (int64_t d = 1; d < packed.dim(); ++d) {
    lat_shape.push_back(packed.size(d));
    txt_shape.push_back(packed.size(d));
  }
  at::Tensor latent = at::empty(lat_shape, packed.options());
  at::Tensor text = at::empty(txt_shape, packed.options());
  const int64_t heads = heads_of(packed, 1);
  const int64_t row_bytes = packed.size(-1) * packed.element_size();
  const int64_t rows = total_latent + (stream ? text_len : batch * text_len);
  const int32_t* cu_txt = stream ? cu_text->data_ptr<int32_t>() : nullptr;
  if (rows == 0 || heads == 0 || row_bytes == 0) return {latent, text};
  const TokenView src = view_of(packed, 1);
  const int32_t* cu_lat = cu_latent.data_ptr<int32_t>();
  const int32_t* cu_seq = cu_seqlens.data_ptr<int32_t>();
  char* lat_dst = static_cast<char*>(latent.data_ptr());
  char* txt_dst = static_cast<char*>(text.data_ptr());
  const int64_t out_tok = heads * row_bytes;
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (r < total_latent) {
        const int64_t b = sample_of(cu_lat, batch, r);
        const int64_t p = cu_seq[b] + (r - cu_lat[b]);
        copy_row(lat_dst + r * out_tok, src.data + p * src.stride_tok, heads, row_bytes, src.stride_head);
      } else if (stream) {
        const int64_t t = r - total_latent;
        const int64_t b = sample_of(cu_txt, batch, t);
        const int64_t p = cu_seq[b] + (cu_lat[b + 1] - cu_lat[b]) + (t - cu_txt[b]);
        copy_row(txt_dst + t * out_tok, src.data + p * src.stride_tok, heads, row_bytes, src.stride_head);
      } else {
        const int64_t t = r - total_latent;
        const int64_t b = t / text_len, j = t % text_len;
        const int64_t lat_len = cu_lat[b + 1] - cu_lat[b];
        const int64_t valid = (cu_seq[b + 1] - cu_seq[b]) - lat_len;
        char* dst = txt_dst + t * out_tok;
        if (j < valid) {
          copy_row(dst, src.data + (cu_seq[b] + lat_len + j) * src.stride_tok, heads, row_bytes, src.stride_head);
        } else {
          std::memset(dst, 0, static_cast<size_t>(out_tok));
        }
      }
    }
  });
  return {latent, text};
}

// One head's rotation, on raw storage so the loops vectorise; compiled for AVX-512, AVX2 (+F16C) and baseline
// x86-64 with a runtime choice (the extension is built without -march flags), without FMA contraction so
// every clone rounds like the torch reference. diffusers' formula in fp32:
// out[2i] = x[2i]·cos + (−x[2i+1])·sin, out[2i+1] = x[2i+1]·cos + x[2i]·sin.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
#define DVG_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=off")))
using half_storage = _Float16;  // IEEE binary16 = at::Half's layout; conversions round to nearest even
#else
#define DVG_SIMD_CLONES
using half_storage = at::Half;
#endif

inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN -> quiet NaN (as c10::BFloat16)
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return (f != f) ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}

DVG_SIMD_CLONES
void rotate_f32(float* y, const float* x, int64_t half, const float* cos, const float* sin) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float x_real = x[2 * i], x_imag = x[2 * i + 1];
    y[2 * i] = x_real * cos[i] + (-x_imag) * sin[i];
    y[2 * i + 1] = x_imag * cos[i] + x_real * sin[i];
  }
}

DVG_SIMD_CLONES
void rotate_bf16(uint16_t* y, const uint16_t* x, int64_t half, const float* cos, const float* sin) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float x_real = bf16_to_float(x[2 * i]), x_imag = bf16_to_float(x[2 * i + 1]);
    y[2 * i] = float_to_bf16(x_real * cos[i] + (-x_imag) * sin[i]);
    y[2 * i + 1] = float_to_bf16(x_imag * cos[i] + x_real * sin[i]);
  }
}

DVG_SIMD_CLONES
void rotate_f16(half_storage* y, const half_storage* x, int64_t half, const float* cos, const float* sin) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float x_real = static_cast<float>(x[2 * i]), x_imag = static_cast<float>(x[2 * i + 1]);
    y[2 * i] = static_cast<half_storage>(x_real * cos[i] + (-x_imag) * sin[i]);
    y[2 * i + 1] = static_cast<half_storage>(x_imag * cos[i] + x_real * sin[i]);
  }
}

template <typename scalar_t>
void rotate_heads(scalar_t* dst, const scalar_t* src, int64_t heads, int64_t head_dim, int64_t src_head_stride,
                  const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    const scalar_t* x = src + h * src_head_stride;
    scalar_t* y = dst + h * head_dim;
    if constexpr (std::is_same<scalar_t, float>::value) {
      rotate_f32(y, x, half, cos, sin);
    } else if constexpr (std::is_same<scalar_t, at::BFloat16>::value) {
      rotate_bf16(reinterpret_cast<uint16_t*>(y), reinterpret_cast<const uint16_t*>(x), half, cos, sin);
    } else {
      rotate_f16(reinterpret_cast<half_storage*>(y), reinterpret_cast<const half_storage*>(x), half, cos, sin);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> pack_qk_rope_cpu(const at::Tensor& q_latent, const at::Tensor& k_latent,
                                                    const at::Tensor& q_text, const at::Tensor& k_text,
                                                    const at::Tensor& cu_latent, const at::Tensor& cu_seqlens,
                                                    const at::Tensor& grid_sizes, const at::Tensor& inv_freq,
                                                    at::IntArrayRef rope_axes_dim, int64_t total,
                                                    const c10::optional<at::Tensor>& cu_text) {
  check_cu(cu_latent, "cu_latent");
  check_cu(cu_seqlens, "cu_seqlens");
  if (cu_text.has_value()) check_cu(*cu_text, "cu_text");
  TORCH_CHECK(q_latent.dim() == 3 && k_latent.sizes() == q_latent.sizes() &&
                  q_text.dim() == (cu_text.has_value() ? 3 : 4) && k_text.sizes() == q_text.sizes(),
              "dvg::_cpp_pack_qk_rope: q/k_latent must be (total_latent, heads, head_dim), q/k_text (B, L, heads, "
              "head_dim) or with cu_text (total_text, heads, head_dim)");
  TORCH_CHECK(rope_axes_dim.size() == 3 && rope_axes_dim[0] + rope_axes_dim[1] + rope_axes_dim[2] == q_latent.size(2),
              "dvg::_cpp_pack_qk_rope: rope_axes_dim must be three ints summing to head_dim");
  TORCH_CHECK(grid_sizes.dtype() == at::kInt && grid_sizes.is_contiguous() && inv_freq.dtype() == at::kFloat &&
                  inv_freq.is_contiguous(),
              "dvg::_cpp_pack_qk_rope: grid_sizes must be contiguous int32, inv_freq contiguous float32");
  const int64_t heads = q_latent.size(1), head_dim = q_latent.size(2), half = head_dim / 2;
  at::Tensor q_out = at::empty({total, heads, head_dim}, q_latent.options());
  at::Tensor k_out = at::empty({total, heads, head_dim}, q_latent.options());
  if (total == 0 || heads == 0 || head_dim == 0) return {q_out, k_out};
  const int64_t batch = cu_seqlens.size(0) - 1;
  const int32_t* cu_lat = cu_latent.data_ptr<int32_t>();
  const int32_t* cu_seq = cu_seqlens.data_ptr<int32_t>();
  const int32_t* grid = grid_sizes.data_ptr<int32_t>();
  const float* inv = inv_freq.data_ptr<float>();
  const int64_t pairs[3] = {rope_axes_dim[0] / 2, rope_axes_dim[1] / 2, rope_axes_dim[2] / 2};
  const int64_t pair_offset[3] = {0, pairs[0], pairs[0] + pairs[1]};

  // Per sample and axis: cos/sin[position][pair] for the pairs of that axis (fp32 angle = pos · inv_freq).
  std::vector<int64_t> table_offset(batch * 3 + 1, 0);
  for (int64_t b = 0; b < batch; ++b)
    for (int a = 0; a < 3; ++a)
      table_offset[b * 3 + a + 1] = table_offset[b * 3 + a] + static_cast<int64_t>(std::max(grid[b * 3 + a], 0)) * pairs[a];
  std::vector<float> cos_table(table_offset.back()), sin_table(table_offset.back());
  at::parallel_for(0, batch * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ba = begin; ba < end; ++ba) {
      const int a = static_cast<int>(ba % 3);
      const int64_t n = std::max(grid[ba], 0);
      float* c = cos_table.data() + table_offset[ba];
      float* s = sin_table.data() + table_offset[ba];
      for (int64_t pos = 0; pos < n; ++pos)
        for (int64_t i = 0; i < pairs[a]; ++i) {
          const float angle = static_cast<float>(pos) * inv[pair_offset[a] + i];
          c[pos * pairs[a] + i] = std::cos(angle);
          s[pos * pairs[a] + i] = std::sin(angle);
        }
    }
  });

  const int64_t es = q_latent.element_size();
  const int64_t row_bytes = head_dim * es;
  const TokenView latents[2] = {view_of(q_latent, 1), view_of(k_latent, 1)};
  const TextSource texts[2] = {text_source(q_text, cu_text), text_source(k_text, cu_text)};
  TORCH_CHECK(q_latent.scalar_type() == at::kFloat || q_latent.scalar_type() == at::kHalf ||
                  q_latent.scalar_type() == at::kBFloat16,
              "dvg::_cpp_pack_qk_rope: q/k must be float32, float16 or bfloat16");
  auto run = [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    scalar_t* outs[2] = {q_out.data_ptr<scalar_t>(), k_out.data_ptr<scalar_t>()};
    at::parallel_for(0, total, 64, [&](int64_t begin, int64_t end) {
      std::vector<float> cos(half), sin(half);
      int64_t b = sample_of(cu_seq, batch, begin);
      for (int64_t p = begin; p < end; ++p) {
        while (p >= cu_seq[b + 1]) ++b;
        const int64_t local = p - cu_seq[b];
        const int64_t lat_len = cu_lat[b + 1] - cu_lat[b];
        if (local >= lat_len) {
          for (int t = 0; t < 2; ++t) {
            copy_row(reinterpret_cast<char*>(outs[t] + p * heads * head_dim), texts[t].row(b, local - lat_len), heads,
                     row_bytes, texts[t].view.stride_head);
          }
          continue;
        }
        const int64_t gh = grid[b * 3 + 1], gw = grid[b * 3 + 2];
        const int64_t pos[3] = {local / (gh * gw), (local % (gh * gw)) / gw, local % gw};
        for (int a = 0; a < 3; ++a) {
          const int64_t base = table_offset[b * 3 + a] + pos[a] * pairs[a];
          std::memcpy(cos.data() + pair_offset[a], cos_table.data() + base, pairs[a] * sizeof(float));
          std::memcpy(sin.data() + pair_offset[a], sin_table.data() + base, pairs[a] * sizeof(float));
        }
        for (int t = 0; t < 2; ++t) {
          const TokenView& lat = latents[t];
          rotate_heads<scalar_t>(outs[t] + p * heads * head_dim,
                                 reinterpret_cast<const scalar_t*>(lat.data + (cu_lat[b] + local) * lat.stride_tok),
                                 heads, head_dim, lat.stride_head / es, cos.data(), sin.data());
        }
      }
    });
  };
  switch (q_latent.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kBFloat16: run(at::BFloat16{}); break;
    default: run(at::Half{}); break;
  }
  return {q_out, k_out};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dvg, m) {
  m.def("_cpp_pack_tokens(Tensor latent, Tensor text, Tensor cu_latent, Tensor cu_seqlens, int total, "
        "Tensor? cu_text) -> Tensor");
  m.def("_cpp_unpack_tokens(Tensor packed, Tensor cu_latent, Tensor cu_seqlens, int total_latent, int text_len, "
        "Tensor? cu_text) -> (Tensor, Tensor)");
  m.def("_cpp_pack_qk_rope(Tensor q_latent, Tensor k_latent, Tensor q_text, Tensor k_text, Tensor cu_latent, "
        "Tensor cu_seqlens, Tensor grid_sizes, Tensor inv_freq, int[] rope_axes_dim, int total, Tensor? cu_text) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dvg, CPU, m) {
  m.impl("_cpp_pack_tokens", &pack_tokens_cpu);
  m.impl("_cpp_unpack_tokens", &unpack_tokens_cpu);
  m.impl("_cpp_pack_qk_rope", &pack_qk_rope_cpu);
}
