// C++ CPU implementations of the varlen token pack / unpack and the pack with fused HunyuanVideo 3-D RoPE.
// Text comes padded (B, L, ...) with valid prefixes, or as a stream (N, ...) with cu_text. Layout and math: see
// the docstring of dvg_engine/ops/pack.py.
//
// Registered as private ops: dvg::_cpp_pack_tokens_out, _cpp_unpack_tokens_out, _cpp_pack_qk_rope_out write
// into caller-provided outputs; dvg::_cpp_pack_tokens, _cpp_unpack_tokens, _cpp_pack_qk_rope allocate contiguous
// outputs and run the same kernels. The public ops (dvg_engine/ops/pack.py) validate and dispatch here. Token
// tensors, inputs and outputs alike, are viewed as (rows, heads, head_dim) with arbitrary token and head strides
// and a contiguous last dimension.
//
// Copy paths (pack, unpack): the op is a list of spans, each a run of consecutive output rows whose sources are
// consecutive rows of one input (a sample's latent tokens, its valid text) or zeros (unpack's text padding).
// Where source and destination rows are both dense (token stride = heads · head_dim) a span is one memset or a
// memcpy of its bytes (in 256 KiB pieces, see copy_in_pieces); otherwise one memcpy per row (per head when heads
// are not adjacent). The output rows are split evenly over the threads and each thread walks the spans it
// intersects, so both cores stream at the full copy bandwidth however the samples are sized. Raw bytes move, so
// there is no dtype dispatch.
//
// The cu_* (and grid_sizes) values are checked here as well (O(batch), host memory), so a call with
// validate=False in Python cannot make these kernels read or write out of bounds.
//
// The RoPE path builds, per sample, cos/sin of every (axis position, channel pair) once — T·d_t/2 + H·d_h/2
// + W·d_w/2 values, a few KiB in cache, not a per-token table — then rotates every head of q and k.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_common.h"

namespace {

// Byte strides of a token tensor viewed as (rows, heads, head_dim); `leading` = 1 for (rows, [heads,] dim),
// 2 for (B, rows, [heads,] dim) padded text.
struct TokenView {
  char* data;
  int64_t stride_tok;
  int64_t stride_head;
  int64_t stride_batch;  // padded text only, else 0
};

TokenView view_of(const at::Tensor& x, int leading) {
  const int64_t es = x.element_size();
  TokenView v;
  v.data = static_cast<char*>(x.data_ptr());
  v.stride_batch = leading == 2 ? x.stride(0) * es : 0;
  v.stride_tok = x.stride(leading - 1) * es;
  v.stride_head = (x.dim() == leading + 2) ? x.stride(leading) * es : 0;
  return v;
}

int64_t heads_of(const at::Tensor& x, int leading) { return x.dim() == leading + 2 ? x.size(leading) : 1; }

// One token's heads from src to dst; a single memcpy when the heads of both are adjacent.
inline void copy_row(char* dst, int64_t dst_head, const char* src, int64_t src_head, int64_t heads,
                     int64_t row_bytes) {
  if (heads == 1 || (src_head == row_bytes && dst_head == row_bytes)) {
    std::memcpy(dst, src, static_cast<size_t>(heads * row_bytes));
  } else {
    for (int64_t h = 0; h < heads; ++h) std::memcpy(dst + h * dst_head, src + h * src_head, row_bytes);
  }
}

// A run of output rows [begin, end) of the op's row space whose sources are consecutive rows of one input
// (src = row `begin`'s source) or zeros (src = nullptr); dst = row `begin`'s destination. Byte strides.
struct Span {
  int64_t begin, end;
  char* dst;
  int64_t dst_tok, dst_head;
  const char* src;
  int64_t src_tok, src_head;
};

inline bool dense(int64_t stride_tok, int64_t stride_head, int64_t heads, int64_t row_bytes) {
  return (heads == 1 || stride_head == row_bytes) && stride_tok == heads * row_bytes;
}

// glibc's memcpy switches to non-temporal stores above a size near the last-level cache size; pieces below it
// use regular stores. Into a fresh output that matters: measured on a 50 MB copy into a fresh huge-page output,
// 12.3 ms in one piece, 8.0 ms in pieces of 64 KiB to 2 MiB (likely because the kernel has just zeroed each new
// page through the cache, and non-temporal stores first write those dirty lines back, where regular stores
// overwrite them in cache); into an existing buffer the pieces cost nothing (5.1-5.5 ms either way).
constexpr int64_t kCopyPieceBytes = 256 * 1024;

inline void copy_in_pieces(char* dst, const char* src, int64_t bytes) {
  for (int64_t done = 0; done < bytes; done += kCopyPieceBytes)
    std::memcpy(dst + done, src + done, static_cast<size_t>(std::min(kCopyPieceBytes, bytes - done)));
}

void copy_span_rows(const Span& s, int64_t first, int64_t last, int64_t heads, int64_t row_bytes) {
  const int64_t rows = last - first, skip = first - s.begin, tok_bytes = heads * row_bytes;
  char* dst = s.dst + skip * s.dst_tok;
  const bool dst_dense = dense(s.dst_tok, s.dst_head, heads, row_bytes);
  if (s.src == nullptr) {
    if (dst_dense) {
      std::memset(dst, 0, static_cast<size_t>(rows * tok_bytes));
      return;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t h = 0; h < heads; ++h) std::memset(dst + r * s.dst_tok + h * s.dst_head, 0, row_bytes);
    return;
  }
  const char* src = s.src + skip * s.src_tok;
  if (dst_dense && dense(s.src_tok, s.src_head, heads, row_bytes)) {
    copy_in_pieces(dst, src, rows * tok_bytes);
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    copy_row(dst + r * s.dst_tok, s.dst_head, src + r * s.src_tok, s.src_head, heads, row_bytes);
}

// Fewer bytes than this per thread and the thread start-up costs more than the copy it would take over.
constexpr int64_t kMinBytesPerTask = 256 * 1024;

// Spans sorted by `begin`, non-overlapping and covering [0, rows) (empty spans left out).
void run_spans(const std::vector<Span>& spans, int64_t rows, int64_t heads, int64_t row_bytes) {
  if (spans.empty() || rows == 0 || heads == 0 || row_bytes == 0) return;
  const int64_t grain = std::max<int64_t>(1, kMinBytesPerTask / (heads * row_bytes));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    auto it = std::upper_bound(spans.begin(), spans.end(), begin,
                               [](int64_t row, const Span& s) { return row < s.end; });
    for (; it != spans.end() && it->begin < end; ++it)
      copy_span_rows(*it, std::max(begin, it->begin), std::min(end, it->end), heads, row_bytes);
  });
}

void check_cu(const at::Tensor& cu, const char* op, const char* name, int64_t batch) {
  TORCH_CHECK(cu.scalar_type() == at::kInt && cu.dim() == 1 && cu.is_contiguous() && cu.size(0) == batch + 1 &&
                  cu.is_cpu(),
              op, ": ", name, " must be a contiguous 1-D CPU int32 tensor of shape (", batch + 1, ",)");
}

// Prefix sums starting at 0, non-decreasing, ending at `last` (the row count they index).
void check_prefix_sums(const int32_t* cu, int64_t batch, int64_t last, const char* op, const char* name) {
  TORCH_CHECK(cu[0] == 0, op, ": ", name, "[0]=", cu[0], " must be 0");
  for (int64_t b = 0; b < batch; ++b)
    TORCH_CHECK(cu[b + 1] >= cu[b], op, ": ", name, " must be non-decreasing; ", name, "[", b + 1, "]=", cu[b + 1],
                " < ", name, "[", b, "]=", cu[b]);
  TORCH_CHECK(cu[batch] == last, op, ": ", name, "[-1]=", cu[batch], " must equal the row count ", last);
}

void check_tokens(const at::Tensor& x, int leading, const at::Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(x.is_cpu() && x.scalar_type() == like.scalar_type() && x.dim() == leading + like.dim() - 1, op, ": ",
              name, " must be a CPU tensor of ", leading + like.dim() - 1, " dims in ", like.scalar_type());
  for (int64_t d = 1; d < like.dim(); ++d)
    TORCH_CHECK(x.size(leading - 1 + d) == like.size(d), op, ": ", name, " has per-token shape ",
                x.sizes().slice(leading), ", expected ", like.sizes().slice(1));
  TORCH_CHECK(x.numel() == 0 || x.size(-1) <= 1 || x.stride(-1) == 1, op, ": ", name,
              " needs a contiguous last dimension");
}

// Text rows: padded (B, L, ...) -> row j of sample b at b·stride_batch + j·stride_tok; a stream (N, ...) with
// cu_text -> row cu_text[b] + j (stride_batch is 0 for a stream view).
struct TextSource {
  TokenView view;
  const int32_t* cu_text;  // nullptr for padded text
  char* row(int64_t b, int64_t j) const {
    const int64_t base = cu_text ? cu_text[b] : 0;
    return view.data + b * view.stride_batch + (base + j) * view.stride_tok;
  }
};

TextSource text_source(const at::Tensor& text, const c10::optional<at::Tensor>& cu_text) {
  if (cu_text.has_value()) return {view_of(text, 1), cu_text->data_ptr<int32_t>()};
  return {view_of(text, 2), nullptr};
}

// Shared checks of the pack ops: shapes, cu_* values against the row counts, per-sample text counts.
struct PackLayout {
  int64_t batch;
  const int32_t* cu_lat;
  const int32_t* cu_seq;
};

PackLayout check_pack(const char* op, const at::Tensor& latent, const at::Tensor& text, const at::Tensor& cu_latent,
                      const at::Tensor& cu_seqlens, int64_t total, const c10::optional<at::Tensor>& cu_text,
                      const at::Tensor& out) {
  TORCH_CHECK(latent.is_cpu() && (latent.dim() == 2 || latent.dim() == 3), op, ": latent must be a 2-D or 3-D CPU tensor");
  TORCH_CHECK(latent.numel() == 0 || latent.size(-1) <= 1 || latent.stride(-1) == 1, op,
              ": latent needs a contiguous last dimension");
  const bool stream = cu_text.has_value();
  check_tokens(text, stream ? 1 : 2, latent, op, stream ? "text (a stream with cu_text)" : "text (padded)");
  check_tokens(out, 1, latent, op, "out");
  TORCH_CHECK(out.size(0) == total, op, ": out has ", out.size(0), " rows, expected total=", total);
  const int64_t batch = stream ? cu_text->size(0) - 1 : text.size(0);
  check_cu(cu_latent, op, "cu_latent", batch);
  check_cu(cu_seqlens, op, "cu_seqlens", batch);
  const int32_t* cu_lat = cu_latent.data_ptr<int32_t>();
  const int32_t* cu_seq = cu_seqlens.data_ptr<int32_t>();
  check_prefix_sums(cu_lat, batch, latent.size(0), op, "cu_latent");
  check_prefix_sums(cu_seq, batch, total, op, "cu_seqlens");
  const int32_t* cu_txt = nullptr;
  if (stream) {
    check_cu(*cu_text, op, "cu_text", batch);
    cu_txt = cu_text->data_ptr<int32_t>();
    check_prefix_sums(cu_txt, batch, text.size(0), op, "cu_text");
  }
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t n_txt = (cu_seq[b + 1] - cu_seq[b]) - (cu_lat[b + 1] - cu_lat[b]);
    const int64_t room = stream ? cu_txt[b + 1] - cu_txt[b] : text.size(1);
    TORCH_CHECK(n_txt >= 0 && (stream ? n_txt == room : n_txt <= room), op, ": sample ", b, " would get ", n_txt,
                " text tokens from cu_seqlens - cu_latent; its text holds ", room);
  }
  return {batch, cu_lat, cu_seq};
}

void pack_tokens_out_cpu(const at::Tensor& latent, const at::Tensor& text, const at::Tensor& cu_latent,
                         const at::Tensor& cu_seqlens, int64_t total, const c10::optional<at::Tensor>& cu_text,
                         const at::Tensor& out) {
  const PackLayout lay = check_pack("dvg::_cpp_pack_tokens_out", latent, text, cu_latent, cu_seqlens, total, cu_text,
                                    out);
  const int64_t heads = heads_of(latent, 1);
  const int64_t row_bytes = latent.size(-1) * latent.element_size();
  if (total == 0 || heads == 0 || row_bytes == 0) return;
  const TokenView lat = view_of(latent, 1), dst = view_of(out, 1);
  const TextSource txt = text_source(text, cu_text);
  std::vector<Span> spans;
  spans.reserve(2 * lay.batch);
  for (int64_t b = 0; b < lay.batch; ++b) {
    const int64_t seg = lay.cu_seq[b], lat_len = lay.cu_lat[b + 1] - lay.cu_lat[b], seg_end = lay.cu_seq[b + 1];
    if (lat_len > 0)
      spans.push_back({seg, seg + lat_len, dst.data + seg * dst.stride_tok, dst.stride_tok, dst.stride_head,
                       lat.data + lay.cu_lat[b] * lat.stride_tok, lat.stride_tok, lat.stride_head});
    if (seg_end > seg + lat_len)
      spans.push_back({seg + lat_len, seg_end, dst.data + (seg + lat_len) * dst.stride_tok, dst.stride_tok,
                       dst.stride_head, txt.row(b, 0), txt.view.stride_tok, txt.view.stride_head});
  }
  run_spans(spans, total, heads, row_bytes);
}

void unpack_tokens_out_cpu(const at::Tensor& packed, const at::Tensor& cu_latent, const at::Tensor& cu_seqlens,
                           int64_t total_latent, int64_t text_len, const c10::optional<at::Tensor>& cu_text,
                           const at::Tensor& latent_out, const at::Tensor& text_out) {
  const char* op = "dvg::_cpp_unpack_tokens_out";
  TORCH_CHECK(packed.is_cpu() && (packed.dim() == 2 || packed.dim() == 3), op, ": packed must be a 2-D or 3-D CPU tensor");
  TORCH_CHECK(packed.numel() == 0 || packed.size(-1) <= 1 || packed.stride(-1) == 1, op,
              ": packed needs a contiguous last dimension");
  const bool stream = cu_text.has_value();
  const int64_t batch = cu_seqlens.size(0) - 1;
  check_cu(cu_seqlens, op, "cu_seqlens", batch);
  check_cu(cu_latent, op, "cu_latent", batch);
  check_tokens(latent_out, 1, packed, op, "latent_out");
  check_tokens(text_out, stream ? 1 : 2, packed, op, "text_out");
  TORCH_CHECK(latent_out.size(0) == total_latent, op, ": latent_out has ", latent_out.size(0),
              " rows, expected total_latent=", total_latent);
  TORCH_CHECK(stream ? text_out.size(0) == text_len : (text_out.size(0) == batch && text_out.size(1) == text_len), op,
              ": text_out must be ", stream ? "(text_len, ...)" : "(batch, text_len, ...)", " with text_len=", text_len);
  const int32_t* cu_lat = cu_latent.data_ptr<int32_t>();
  const int32_t* cu_seq = cu_seqlens.data_ptr<int32_t>();
  check_prefix_sums(cu_lat, batch, total_latent, op, "cu_latent");
  check_prefix_sums(cu_seq, batch, packed.size(0), op, "cu_seqlens");
  const int32_t* cu_txt = nullptr;
  if (stream) {
    check_cu(*cu_text, op, "cu_text", batch);
    cu_txt = cu_text->data_ptr<int32_t>();
    check_prefix_sums(cu_txt, batch, text_len, op, "cu_text");
  }
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t n_txt = (cu_seq[b + 1] - cu_seq[b]) - (cu_lat[b + 1] - cu_lat[b]);
    const int64_t room = stream ? cu_txt[b + 1] - cu_txt[b] : text_len;
    TORCH_CHECK(n_txt >= 0 && (stream ? n_txt == room : n_txt <= room), op, ": sample ", b, " would get ", n_txt,
                " text tokens from cu_seqlens - cu_latent; its text holds ", room);
  }
  const int64_t heads = heads_of(packed, 1);
  const int64_t row_bytes = packed.size(-1) * packed.element_size();
  const int64_t rows = total_latent + (stream ? text_len : batch * text_len);
  if (rows == 0 || heads == 0 || row_bytes == 0) return;
  const TokenView src = view_of(packed, 1), lat = view_of(latent_out, 1);
  const TokenView txt = view_of(text_out, stream ? 1 : 2);
  // Row space: the total_latent latent rows, then the text rows (stream: total_text; padded: B·text_len, b-major).
  std::vector<Span> spans;
  spans.reserve(3 * batch);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t lat_len = cu_lat[b + 1] - cu_lat[b];
    if (lat_len > 0)
      spans.push_back({cu_lat[b], cu_lat[b + 1], lat.data + cu_lat[b] * lat.stride_tok, lat.stride_tok,
                       lat.stride_head, src.data + cu_seq[b] * src.stride_tok, src.stride_tok, src.stride_head});
  }
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t lat_len = cu_lat[b + 1] - cu_lat[b];
    const int64_t valid = (cu_seq[b + 1] - cu_seq[b]) - lat_len;
    const char* text_src = src.data + (cu_seq[b] + lat_len) * src.stride_tok;
    if (stream) {
      if (valid > 0)
        spans.push_back({total_latent + cu_txt[b], total_latent + cu_txt[b + 1], txt.data + cu_txt[b] * txt.stride_tok,
                         txt.stride_tok, txt.stride_head, text_src, src.stride_tok, src.stride_head});
      continue;
    }
    const int64_t row0 = total_latent + b * text_len;
    char* text_dst = txt.data + b * txt.stride_batch;
    if (valid > 0)
      spans.push_back({row0, row0 + valid, text_dst, txt.stride_tok, txt.stride_head, text_src, src.stride_tok,
                       src.stride_head});
    if (text_len > valid)
      spans.push_back({row0 + valid, row0 + text_len, text_dst + valid * txt.stride_tok, txt.stride_tok,
                       txt.stride_head, nullptr, 0, 0});
  }
  run_spans(spans, rows, heads, row_bytes);
}

// One head's rotation, on raw storage so the loops vectorise; compiled for AVX-512, AVX2 and baseline
// x86-64 with a runtime choice (the extension is built without -march flags), without FMA contraction so
// every clone rounds like the torch reference. diffusers' formula in fp32:
// out[2i] = x[2i]·cos + (−x[2i+1])·sin, out[2i+1] = x[2i+1]·cos + x[2i]·sin.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
#define DVG_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=off")))
#else
#define DVG_SIMD_CLONES
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

// Scratch of one thread for the fp16 path: GCC 12 leaves _Float16 conversions scalar, so a head is converted to
// fp32 (F16C where the CPU has it), rotated by rotate_f32 and converted back, the same bits as converting each
// element on its own (round to nearest even).
struct HalfScratch {
  std::vector<float> x, y;
  dvg::HalfRowFn to_float, to_half;
};

template <typename scalar_t>
void rotate_heads(scalar_t* dst, int64_t dst_head_stride, const scalar_t* src, int64_t src_head_stride,
                  int64_t heads, int64_t head_dim, const float* cos, const float* sin, HalfScratch& scratch) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    const scalar_t* x = src + h * src_head_stride;
    scalar_t* y = dst + h * dst_head_stride;
    if constexpr (std::is_same<scalar_t, float>::value) {
      rotate_f32(y, x, half, cos, sin);
    } else if constexpr (std::is_same<scalar_t, at::BFloat16>::value) {
      rotate_bf16(reinterpret_cast<uint16_t*>(y), reinterpret_cast<const uint16_t*>(x), half, cos, sin);
    } else {
      scratch.to_float(x, scratch.x.data(), head_dim);
      rotate_f32(scratch.y.data(), scratch.x.data(), half, cos, sin);
      scratch.to_half(scratch.y.data(), y, head_dim);
    }
  }
}

void pack_qk_rope_out_cpu(const at::Tensor& q_latent, const at::Tensor& k_latent, const at::Tensor& q_text,
                          const at::Tensor& k_text, const at::Tensor& cu_latent, const at::Tensor& cu_seqlens,
                          const at::Tensor& grid_sizes, const at::Tensor& inv_freq, at::IntArrayRef rope_axes_dim,
                          int64_t total, const c10::optional<at::Tensor>& cu_text, const at::Tensor& q_out,
                          const at::Tensor& k_out) {
  const char* op = "dvg::_cpp_pack_qk_rope_out";
  TORCH_CHECK(q_latent.dim() == 3 && k_latent.sizes() == q_latent.sizes(), op,
              ": q/k_latent must be (total_latent, heads, head_dim) of one shape");
  TORCH_CHECK(q_latent.scalar_type() == at::kFloat || q_latent.scalar_type() == at::kHalf ||
                  q_latent.scalar_type() == at::kBFloat16,
              op, ": q/k must be float32, float16 or bfloat16");
  // k is read and k_out written with q's element type: a k of another dtype would be reinterpreted
  TORCH_CHECK(k_latent.scalar_type() == q_latent.scalar_type(), op, ": k_latent is ", k_latent.scalar_type(),
              " but q_latent is ", q_latent.scalar_type(), "; q and k must share one dtype");
  const PackLayout lay = check_pack(op, q_latent, q_text, cu_latent, cu_seqlens, total, cu_text, q_out);
  check_pack(op, k_latent, k_text, cu_latent, cu_seqlens, total, cu_text, k_out);
  TORCH_CHECK(rope_axes_dim.size() == 3 && rope_axes_dim[0] + rope_axes_dim[1] + rope_axes_dim[2] == q_latent.size(2),
              op, ": rope_axes_dim must be three ints summing to head_dim");
  const int64_t batch = lay.batch;
  TORCH_CHECK(grid_sizes.scalar_type() == at::kInt && grid_sizes.is_contiguous() && grid_sizes.dim() == 2 &&
                  grid_sizes.size(0) == batch && grid_sizes.size(1) == 3 && inv_freq.scalar_type() == at::kFloat &&
                  inv_freq.is_contiguous() && inv_freq.numel() == q_latent.size(2) / 2,
              op, ": grid_sizes must be contiguous int32 (batch, 3), inv_freq contiguous float32 (head_dim / 2,)");
  const int32_t* cu_lat = lay.cu_lat;
  const int32_t* cu_seq = lay.cu_seq;
  const int32_t* grid = grid_sizes.data_ptr<int32_t>();
  for (int64_t b = 0; b < batch; ++b)
    TORCH_CHECK(grid[b * 3] >= 0 && grid[b * 3 + 1] >= 0 && grid[b * 3 + 2] >= 0 &&
                    static_cast<int64_t>(grid[b * 3]) * grid[b * 3 + 1] * grid[b * 3 + 2] == cu_lat[b + 1] - cu_lat[b],
                op, ": grid_sizes of sample ", b, " must multiply to its ", cu_lat[b + 1] - cu_lat[b], " latent tokens");
  const int64_t heads = q_latent.size(1), head_dim = q_latent.size(2), half = head_dim / 2;
  if (total == 0 || heads == 0 || head_dim == 0) return;
  const float* inv = inv_freq.data_ptr<float>();
  const int64_t pairs[3] = {rope_axes_dim[0] / 2, rope_axes_dim[1] / 2, rope_axes_dim[2] / 2};
  const int64_t pair_offset[3] = {0, pairs[0], pairs[0] + pairs[1]};

  // Per sample and axis: cos/sin[position][pair] for the pairs of that axis (fp32 angle = pos · inv_freq).
  std::vector<int64_t> table_offset(batch * 3 + 1, 0);
  for (int64_t b = 0; b < batch; ++b)
    for (int a = 0; a < 3; ++a)
      table_offset[b * 3 + a + 1] = table_offset[b * 3 + a] + static_cast<int64_t>(grid[b * 3 + a]) * pairs[a];
  std::vector<float> cos_table(table_offset.back()), sin_table(table_offset.back());
  at::parallel_for(0, batch * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ba = begin; ba < end; ++ba) {
      const int a = static_cast<int>(ba % 3);
      const int64_t n = grid[ba];
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
  const TokenView outs[2] = {view_of(q_out, 1), view_of(k_out, 1)};
  auto run = [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    at::parallel_for(0, total, 64, [&](int64_t begin, int64_t end) {
      std::vector<float> cos(half), sin(half);
      HalfScratch scratch{std::vector<float>(head_dim), std::vector<float>(head_dim), dvg::half_to_float_row(),
                          dvg::float_to_half_row()};
      int64_t b = static_cast<int64_t>(std::upper_bound(cu_seq + 1, cu_seq + batch + 1, static_cast<int32_t>(begin)) -
                                       (cu_seq + 1));
      for (int64_t p = begin; p < end; ++p) {
        while (p >= cu_seq[b + 1]) ++b;
        const int64_t local = p - cu_seq[b];
        const int64_t lat_len = cu_lat[b + 1] - cu_lat[b];
        if (local >= lat_len) {
          for (int t = 0; t < 2; ++t)
            copy_row(outs[t].data + p * outs[t].stride_tok, outs[t].stride_head, texts[t].row(b, local - lat_len),
                     texts[t].view.stride_head, heads, row_bytes);
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
          rotate_heads<scalar_t>(reinterpret_cast<scalar_t*>(outs[t].data + p * outs[t].stride_tok),
                                 outs[t].stride_head / es,
                                 reinterpret_cast<const scalar_t*>(lat.data + (cu_lat[b] + local) * lat.stride_tok),
                                 lat.stride_head / es, heads, head_dim, cos.data(), sin.data(), scratch);
        }
      }
    });
  };
  switch (q_latent.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kBFloat16: run(at::BFloat16{}); break;
    default: run(at::Half{}); break;
  }
}

// Allocating entry points: a contiguous output (dvg::empty_cpu_output), then the out kernels above (one kernel
// per op).
std::vector<int64_t> token_shape(int64_t rows, const at::Tensor& like) {
  std::vector<int64_t> shape{rows};
  for (int64_t d = 1; d < like.dim(); ++d) shape.push_back(like.size(d));
  return shape;
}

at::Tensor pack_tokens_cpu(const at::Tensor& latent, const at::Tensor& text, const at::Tensor& cu_latent,
                           const at::Tensor& cu_seqlens, int64_t total, const c10::optional<at::Tensor>& cu_text) {
  at::Tensor out = dvg::empty_cpu_output(token_shape(total, latent), latent.options());
  pack_tokens_out_cpu(latent, text, cu_latent, cu_seqlens, total, cu_text, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> unpack_tokens_cpu(const at::Tensor& packed, const at::Tensor& cu_latent,
                                                     const at::Tensor& cu_seqlens, int64_t total_latent,
                                                     int64_t text_len, const c10::optional<at::Tensor>& cu_text) {
  std::vector<int64_t> text_shape = token_shape(text_len, packed);
  if (!cu_text.has_value()) text_shape.insert(text_shape.begin(), cu_seqlens.size(0) - 1);
  at::Tensor latent = dvg::empty_cpu_output(token_shape(total_latent, packed), packed.options());
  at::Tensor text = dvg::empty_cpu_output(text_shape, packed.options());
  unpack_tokens_out_cpu(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text, latent, text);
  return {latent, text};
}

std::tuple<at::Tensor, at::Tensor> pack_qk_rope_cpu(const at::Tensor& q_latent, const at::Tensor& k_latent,
                                                    const at::Tensor& q_text, const at::Tensor& k_text,
                                                    const at::Tensor& cu_latent, const at::Tensor& cu_seqlens,
                                                    const at::Tensor& grid_sizes, const at::Tensor& inv_freq,
                                                    at::IntArrayRef rope_axes_dim, int64_t total,
                                                    const c10::optional<at::Tensor>& cu_text) {
  at::Tensor q_out = dvg::empty_cpu_output(token_shape(total, q_latent), q_latent.options());
  at::Tensor k_out = dvg::empty_cpu_output(token_shape(total, q_latent), q_latent.options());
  pack_qk_rope_out_cpu(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes, inv_freq, rope_axes_dim,
                       total, cu_text, q_out, k_out);
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
  m.def("_cpp_pack_tokens_out(Tensor latent, Tensor text, Tensor cu_latent, Tensor cu_seqlens, int total, "
        "Tensor? cu_text, Tensor(a!) out) -> ()");
  m.def("_cpp_unpack_tokens_out(Tensor packed, Tensor cu_latent, Tensor cu_seqlens, int total_latent, int text_len, "
        "Tensor? cu_text, Tensor(a!) latent_out, Tensor(b!) text_out) -> ()");
  m.def("_cpp_pack_qk_rope_out(Tensor q_latent, Tensor k_latent, Tensor q_text, Tensor k_text, Tensor cu_latent, "
        "Tensor cu_seqlens, Tensor grid_sizes, Tensor inv_freq, int[] rope_axes_dim, int total, Tensor? cu_text, "
        "Tensor(a!) q_out, Tensor(b!) k_out) -> ()");
}

TORCH_LIBRARY_IMPL(dvg, CPU, m) {
  m.impl("_cpp_pack_tokens", &pack_tokens_cpu);
  m.impl("_cpp_unpack_tokens", &unpack_tokens_cpu);
  m.impl("_cpp_pack_qk_rope", &pack_qk_rope_cpu);
  m.impl("_cpp_pack_tokens_out", &pack_tokens_out_cpu);
  m.impl("_cpp_unpack_tokens_out", &unpack_tokens_out_cpu);
  m.impl("_cpp_pack_qk_rope_out", &pack_qk_rope_out_cpu);
}
