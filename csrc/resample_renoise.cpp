// Fused resample + re-noise of a DVG stage transition, CPU (dvg-spec.md §9–§11, §12.3 steps 4–7).
//
//   x0 (B, C, ts, hs, ws) any float dtype, any strides      anchors int32 (ts,) (hs,) (ws,)
//   coords int64 (td,) (hd,) (wd,)     seeds int64 (B,)      out: (B, C, td, hd, wd) or tokens
//   (B, N, C·pt·ph·pw) contiguous, written in place.
//
//   out = (1 − σ)·V + σ·ε,  V = lerp_t(area_resize_hw(x0) with exact anchor restore),
//   optionally V ← 0.7·V + 0.3·avg3×3(V) (0→1 transition), ε = coordinate-hash Box–Muller noise.
//
// Registered as dvg::_cpp_resample_renoise; the public op dvg::resample_renoise (Python,
// dvg_engine/ops/resample.py) validates the arguments and dispatches here.
//
// Parallel over (c, t) planes with at::parallel_for (torch's intra-op pool, so torch.set_num_threads
// applies), samples inner so that samples with equal seeds compute the noise once. Every float
// operation is rounded as the torch reference rounds it (area sum in row-major order then halvings,
// lerp as one fused multiply-add from the nearer end, 0.7·x and 0.3·pooled rounded separately, IEEE
// divisions), the hash runs in uint64 with explicit arithmetic shifts and Box–Muller in double with
// the same SLEEF log/cos torch uses, so the result equals the reference bit for bit on the same CPU
// (tested); fp contraction is switched off below because a compiler-fused a·b + c·d would round
// differently.
//
// Cost: the hash and the fp64 log/cos dominate (the op runs at ~1–2 % of the memory-copy bandwidth:
// compute-bound). On x86-64 they run on AVX-512 (hash and SLEEF, 8 lanes) or AVX2 (SLEEF, 4 lanes)
// per torch's CPU capability, and the lerp row loop is compiled for FMA; DVG_CPP_SIMD=0 forces the
// portable paths (libm), which the tests also check.
#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include "cpu_common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DVG_X86_SIMD 1
#include <immintrin.h>
// SLEEF's vector log/cos, exported by libtorch_cpu: the very functions torch.log / torch.cos run on
// float64 tensors at the AVX512 / AVX2 CPU capability, i.e. what the reference noise is computed
// with. Weak, so the extension still loads (and falls back to libm) with a torch build without them.
extern "C" {
__m512d Sleef_logd8_u10(__m512d) __attribute__((weak));
__m512d Sleef_cosd8_u10(__m512d) __attribute__((weak));
__m256d Sleef_logd4_u10(__m256d) __attribute__((weak));
__m256d Sleef_cosd4_u10(__m256d) __attribute__((weak));
}
#endif

// After the includes, so only this file's functions are affected.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace {

// dvg-spec §11 constants (unsigned; multiplication wraps mod 2^64).
constexpr uint64_t K_T = 0x9E3779B185EBCA87ULL;
constexpr uint64_t K_H = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t K_W = 0x165667B19E3779F9ULL;
constexpr uint64_t K_C = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t K_S = 0x27D4EB2F165667C5ULL;
constexpr uint64_t K_G = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t K_M1 = 0xBF58476D1CE4E5B9ULL;
constexpr uint64_t K_M2 = 0x94D049BB133111EBULL;
constexpr uint64_t LOW53 = (uint64_t(1) << 53) - 1;
constexpr double TWO_POW_M53 = 1.0 / 9007199254740992.0;  // 2^-53, exact
constexpr double U_LOW = 1e-12;
constexpr double U_HIGH = 1.0 - 1e-12;
constexpr double TWO_PI = 2.0 * 3.141592653589793;
constexpr double SMOOTHING_WEIGHT = 0.3;

// The reference shifts the int64 reading of the hash arithmetically; spelled out on uint64 so it does
// not rest on the (pre-C++20) implementation-defined signed right shift.
inline uint64_t shift_right_arithmetic(uint64_t x, int k) {
  const uint64_t sign_fill = (uint64_t(0) - (x >> 63)) << (64 - k);
  return (x >> k) | sign_fill;
}

inline uint64_t mix64(uint64_t x) {
  x = (x ^ shift_right_arithmetic(x, 30)) * K_M1;
  x = (x ^ shift_right_arithmetic(x, 27)) * K_M2;
  return x ^ shift_right_arithmetic(x, 31);
}

inline double uniform_from_hash(uint64_t h) {
  // (low 53 bits) + 0.5 rounds to nearest in double above 2^52, exactly as the reference's float64 add
  const double u = (static_cast<double>(h & LOW53) + 0.5) * TWO_POW_M53;
  return std::min(std::max(u, U_LOW), U_HIGH);
}

inline float coordinate_noise(uint64_t base) {
  const double u1 = uniform_from_hash(mix64(base));
  const double u2 = uniform_from_hash(mix64(base + K_G));
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(TWO_PI * u2));
}

// One row of the noise field: out[i] = ε(row_hash + col_hash[i]) for i < n. The log and cos dominate the
// op's CPU cost (scalar libm: ~3/4 of it), so they run on SIMD vectors where the CPU has them.
void noise_row_scalar(uint64_t row_hash, const uint64_t* col_hash, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = coordinate_noise(row_hash + col_hash[i]);
}

#ifdef DVG_X86_SIMD
// AVX-512: the hash too runs 8 lanes wide (AVX512DQ has the 64-bit multiply, AVX512F the arithmetic
// 64-bit shift the reference's int64 `>>` needs).
__attribute__((target("avx512f,avx512dq"))) inline __m512i mix64_avx512(__m512i x) {
  x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srai_epi64(x, 30)), _mm512_set1_epi64(static_cast<int64_t>(K_M1)));
  x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srai_epi64(x, 27)), _mm512_set1_epi64(static_cast<int64_t>(K_M2)));
  return _mm512_xor_si512(x, _mm512_srai_epi64(x, 31));
}

__attribute__((target("avx512f,avx512dq"))) inline __m512d uniform_avx512(__m512i h) {
  // low 53 bits → double is exact; + 0.5 rounds to nearest as the reference's float64 add does
  const __m512d low = _mm512_cvtepi64_pd(_mm512_and_si512(h, _mm512_set1_epi64(static_cast<int64_t>(LOW53))));
  const __m512d u = _mm512_mul_pd(_mm512_add_pd(low, _mm512_set1_pd(0.5)), _mm512_set1_pd(TWO_POW_M53));
  return _mm512_min_pd(_mm512_max_pd(u, _mm512_set1_pd(U_LOW)), _mm512_set1_pd(U_HIGH));
}

__attribute__((target("avx512f,avx512dq"))) void noise_row_avx512(uint64_t row_hash, const uint64_t* col_hash,
                                                                  int64_t n, float* out) {
  alignas(32) float result[8];
  const __m512i row = _mm512_set1_epi64(static_cast<int64_t>(row_hash));
  const __m512i second_stream = _mm512_set1_epi64(static_cast<int64_t>(K_G));
  for (int64_t start = 0; start < n; start += 8) {
    const int64_t count = std::min<int64_t>(8, n - start);
    const __mmask8 lanes = static_cast<__mmask8>((1u << count) - 1u);
    const __m512i base = _mm512_add_epi64(row, _mm512_maskz_loadu_epi64(lanes, col_hash + start));
    const __m512d u1 = uniform_avx512(mix64_avx512(base));
    const __m512d u2 = uniform_avx512(mix64_avx512(_mm512_add_epi64(base, second_stream)));
    // the reference's order: sqrt(−2·log u1) · cos((2π)·u2), each op rounded in float64
    const __m512d radius = _mm512_sqrt_pd(_mm512_mul_pd(_mm512_set1_pd(-2.0), Sleef_logd8_u10(u1)));
    const __m512d angle = Sleef_cosd8_u10(_mm512_mul_pd(_mm512_set1_pd(TWO_PI), u2));
    const __m256 noise = _mm512_cvtpd_ps(_mm512_mul_pd(radius, angle));
    if (count == 8) {
      _mm256_storeu_ps(out + start, noise);
    } else {
      _mm256_store_ps(result, noise);
      for (int64_t i = 0; i < count; ++i) out[start + i] = result[i];
    }
  }
}

__attribute__((target("avx2,fma"))) void noise_row_avx2(uint64_t row_hash, const uint64_t* col_hash, int64_t n,
                                                        float* out) {
  alignas(32) double u1[4], u2[4];
  alignas(16) float result[4];
  for (int64_t start = 0; start < n; start += 4) {
    const int64_t count = std::min<int64_t>(4, n - start);
    for (int64_t i = 0; i < 4; ++i) {
      const uint64_t base = row_hash + col_hash[start + std::min<int64_t>(i, count - 1)];
      u1[i] = uniform_from_hash(mix64(base));
      u2[i] = uniform_from_hash(mix64(base + K_G));
    }
    const __m256d radius = _mm256_sqrt_pd(_mm256_mul_pd(_mm256_set1_pd(-2.0), Sleef_logd4_u10(_mm256_load_pd(u1))));
    const __m256d angle = Sleef_cosd4_u10(_mm256_mul_pd(_mm256_set1_pd(TWO_PI), _mm256_load_pd(u2)));
    _mm_store_ps(result, _mm256_cvtpd_ps(_mm256_mul_pd(radius, angle)));
    for (int64_t i = 0; i < count; ++i) out[start + i] = result[i];
  }
}
#endif

using NoiseRowFn = void (*)(uint64_t, const uint64_t*, int64_t, float*);

// Follows torch's own CPU capability (ATEN_CPU_CAPABILITY), so the vector width matches the one the
// reference's torch.log / torch.cos use.
// DVG_CPP_SIMD=0 forces the portable paths (how the tests cover them on a machine with AVX): dvg::simd_allowed.
using dvg::simd_allowed;

NoiseRowFn select_noise_row() {
#ifdef DVG_X86_SIMD
  if (!simd_allowed()) return noise_row_scalar;
  const std::string capability = at::get_cpu_capability();
  if (capability == "AVX512" && Sleef_logd8_u10 && Sleef_cosd8_u10 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512dq"))
    return noise_row_avx512;
  if ((capability == "AVX512" || capability == "AVX2") && Sleef_logd4_u10 && Sleef_cosd4_u10 &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return noise_row_avx2;
#endif
  return noise_row_scalar;
}

NoiseRowFn noise_row() {
  static const NoiseRowFn fn = select_noise_row();
  return fn;
}

// Per target position on one spatial axis: the area window [first, first + (two ? 2 : 1)) of the
// adaptive-average-pool resize (1 or 2 source indices because the source is not larger), and the
// source index when the position is an anchor (-1 otherwise).
struct AxisTap {
  int64_t first;
  bool two;
  int64_t anchor_src;
};

std::vector<AxisTap> axis_taps(const int32_t* anchors, int64_t n_src, int64_t n_dst) {
  std::vector<AxisTap> taps(n_dst);
  for (int64_t p = 0; p < n_dst; ++p) {
    const int64_t first = (p * n_src) / n_dst;
    const int64_t end = ((p + 1) * n_src + n_dst - 1) / n_dst;
    taps[p] = AxisTap{first, end - first > 1, -1};
  }
  for (int64_t j = 0; j < n_src; ++j) taps[anchors[j]].anchor_src = j;
  return taps;
}

struct FrameLerp {
  int64_t left, right;
  float weight;
};

std::vector<FrameLerp> frame_lerps(const int32_t* anchors, int64_t n_src, int64_t n_dst) {
  std::vector<FrameLerp> out(n_dst);
  for (int64_t p = 0; p < n_dst; ++p) {
    int64_t count = 0;  // anchors ≤ p
    while (count < n_src && anchors[count] <= p) ++count;
    int64_t left = std::min<int64_t>(std::max<int64_t>(count - 1, 0), std::max<int64_t>(n_src - 2, 0));
    int64_t right = std::min<int64_t>(left + 1, n_src - 1);
    const int64_t a_left = anchors[left], a_right = anchors[right];
    float weight = static_cast<float>(p - a_left) / static_cast<float>(std::max<int64_t>(a_right - a_left, 1));
    if (p <= anchors[0]) weight = 0.0f;
    if (p >= anchors[n_src - 1]) weight = 1.0f;
    out[p] = FrameLerp{left, right, weight};
  }
  return out;
}

template <typename in_t>
inline float area_value(const in_t* frame, int64_t stride_h, int64_t stride_w, const AxisTap& th,
                        const AxisTap& tw) {
  if (th.anchor_src >= 0 && tw.anchor_src >= 0)
    return static_cast<float>(frame[th.anchor_src * stride_h + tw.anchor_src * stride_w]);
  const in_t* row0 = frame + th.first * stride_h;
  const int64_t col0 = tw.first * stride_w;
  float sum = static_cast<float>(row0[col0]);
  if (tw.two) sum += static_cast<float>(row0[col0 + stride_w]);
  if (th.two) {
    sum += static_cast<float>(row0[stride_h + col0]);
    if (tw.two) sum += static_cast<float>(row0[stride_h + col0 + stride_w]);
  }
  // torch divides the window sum by its height, then its width: exact halvings here
  if (th.two) sum *= 0.5f;
  if (tw.two) sum *= 0.5f;
  return sum;
}

// torch.lerp on the CPU: coeff·(end − start) + base in one fused multiply-add, from the nearer end.
inline float lerp_like_torch(float start, float end, float weight) {
  const bool small = weight < 0.5f;
  return std::fma(small ? weight : weight - 1.0f, end - start, small ? start : end);
}

// One output row of the upsampled frame: lerp(S_l, S_r, weight) at every column. Anchor frames
// (weight 0 or 1) read one source frame only.
template <typename in_t>
__attribute__((always_inline)) inline void upsample_row_body(const in_t* frame_l, const in_t* frame_r, float weight,
                                                             const AxisTap& th, const AxisTap* taps_w, int64_t w_d,
                                                             int64_t stride_h, int64_t stride_w, float* out) {
  if (weight == 0.0f) {
    for (int64_t w = 0; w < w_d; ++w) out[w] = area_value(frame_l, stride_h, stride_w, th, taps_w[w]);
  } else if (weight == 1.0f) {
    for (int64_t w = 0; w < w_d; ++w) out[w] = area_value(frame_r, stride_h, stride_w, th, taps_w[w]);
  } else {
    for (int64_t w = 0; w < w_d; ++w)
      out[w] = lerp_like_torch(area_value(frame_l, stride_h, stride_w, th, taps_w[w]),
                               area_value(frame_r, stride_h, stride_w, th, taps_w[w]), weight);
  }
}

// Without an FMA target, std::fma is a libm call per element; compiled for FMA it is one instruction.
template <typename in_t>
void upsample_row_generic(const in_t* frame_l, const in_t* frame_r, float weight, const AxisTap& th,
                          const AxisTap* taps_w, int64_t w_d, int64_t stride_h, int64_t stride_w, float* out) {
  upsample_row_body(frame_l, frame_r, weight, th, taps_w, w_d, stride_h, stride_w, out);
}

#ifdef DVG_X86_SIMD
template <typename in_t>
__attribute__((target("avx2,fma"))) void upsample_row_fma(const in_t* frame_l, const in_t* frame_r, float weight,
                                                          const AxisTap& th, const AxisTap* taps_w, int64_t w_d,
                                                          int64_t stride_h, int64_t stride_w, float* out) {
  upsample_row_body(frame_l, frame_r, weight, th, taps_w, w_d, stride_h, stride_w, out);
}
#endif

template <typename in_t>
using UpsampleRowFn = void (*)(const in_t*, const in_t*, float, const AxisTap&, const AxisTap*, int64_t, int64_t,
                               int64_t, float*);

template <typename in_t>
UpsampleRowFn<in_t> select_upsample_row() {
#ifdef DVG_X86_SIMD
  if (simd_allowed() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return upsample_row_fma<in_t>;
#endif
  return upsample_row_generic<in_t>;
}

template <typename in_t, typename out_t>
void run_kernel(const torch::Tensor& x0, const int32_t* anchor_t, const int32_t* anchor_h,
                const int32_t* anchor_w, const int64_t* coord_t, const int64_t* coord_h, const int64_t* coord_w,
                const int64_t* seeds, double sigma, int64_t smoothing, bool tokens, int64_t pt, int64_t ph,
                int64_t pw, torch::Tensor& out, int64_t t_d, int64_t h_d, int64_t w_d) {
  const int64_t batch = x0.size(0), channels = x0.size(1);
  const int64_t t_s = x0.size(2), h_s = x0.size(3), w_s = x0.size(4);
  const int64_t sx_b = x0.stride(0), sx_c = x0.stride(1), sx_t = x0.stride(2), sx_h = x0.stride(3),
                sx_w = x0.stride(4);
  const in_t* x = x0.data_ptr<in_t>();
  out_t* y = out.data_ptr<out_t>();

  const std::vector<AxisTap> taps_h = axis_taps(anchor_h, h_s, h_d);
  const std::vector<AxisTap> taps_w = axis_taps(anchor_w, w_s, w_d);
  const std::vector<FrameLerp> lerps = frame_lerps(anchor_t, t_s, t_d);

  const float sigma32 = static_cast<float>(sigma);
  const float keep = 1.0f - sigma32;  // the reference's (1 − σ) in float32
  const float smooth_keep = static_cast<float>(1.0 - SMOOTHING_WEIGHT);
  const float smooth_mix = static_cast<float>(SMOOTHING_WEIGHT);

  const int64_t tokens_h = h_d / ph, tokens_w = w_d / pw;
  const int64_t token_dim = channels * pt * ph * pw;
  const int64_t n_tokens = (t_d / pt) * tokens_h * tokens_w;
  std::vector<uint64_t> col_hash(w_d);
  std::vector<int64_t> col_off(w_d);
  for (int64_t w = 0; w < w_d; ++w) {
    col_hash[w] = static_cast<uint64_t>(coord_w[w]) * K_W;
    col_off[w] = tokens ? (w / pw) * token_dim + w % pw : w;
  }

  // Parallel over (c, t) planes with the samples inner: the noise of a plane depends on the seed, not on
  // the sample, so samples sharing a seed (the reference's 12345 for every sample) reuse one field.
  const NoiseRowFn fill_noise_row = noise_row();
  const UpsampleRowFn<in_t> upsample_row = select_upsample_row<in_t>();
  const int64_t n_planes = channels * t_d;
  at::parallel_for(0, n_planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> plane_values(smoothing ? h_d * w_d : 0);
    std::vector<float> plane_noise(h_d * w_d);
    std::vector<float> row_values(w_d);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t t = plane % t_d;
      const int64_t c = plane / t_d;
      const FrameLerp& lt = lerps[t];
      for (int64_t b = 0; b < batch; ++b) {
        if (b == 0 || seeds[b] != seeds[b - 1]) {
          const uint64_t plane_hash = static_cast<uint64_t>(coord_t[t]) * K_T + static_cast<uint64_t>(c) * K_C +
                                      static_cast<uint64_t>(seeds[b]) * K_S;
          for (int64_t h = 0; h < h_d; ++h)
            fill_noise_row(plane_hash + static_cast<uint64_t>(coord_h[h]) * K_H, col_hash.data(), w_d,
                           plane_noise.data() + h * w_d);
        }
        const in_t* frame_l = x + b * sx_b + c * sx_c + lt.left * sx_t;
        const in_t* frame_r = x + b * sx_b + c * sx_c + lt.right * sx_t;
        if (smoothing) {
          for (int64_t h = 0; h < h_d; ++h)
            upsample_row(frame_l, frame_r, lt.weight, taps_h[h], taps_w.data(), w_d, sx_h, sx_w,
                         plane_values.data() + h * w_d);
        }
        for (int64_t h = 0; h < h_d; ++h) {
          if (smoothing) {
            const int64_t h_lo = std::max<int64_t>(h - 1, 0), h_hi = std::min<int64_t>(h + 1, h_d - 1);
            const bool full_rows = h_hi - h_lo == 2;
            for (int64_t w = 0; w < w_d; ++w) {
              float pooled = 0.0f;  // torch's avg_pool2d order: window rows outer, columns inner
              float count;
              if (full_rows && w >= 1 && w + 1 < w_d) {  // interior: the whole window, unrolled
                const float* r0 = plane_values.data() + (h - 1) * w_d + (w - 1);
                const float* r1 = r0 + w_d;
                const float* r2 = r1 + w_d;
                pooled = ((((((((pooled + r0[0]) + r0[1]) + r0[2]) + r1[0]) + r1[1]) + r1[2]) + r2[0]) + r2[1]) + r2[2];
                count = 9.0f;
              } else {
                const int64_t w_lo = std::max<int64_t>(w - 1, 0), w_hi = std::min<int64_t>(w + 1, w_d - 1);
                for (int64_t ih = h_lo; ih <= h_hi; ++ih)
                  for (int64_t iw = w_lo; iw <= w_hi; ++iw) pooled += plane_values[ih * w_d + iw];
                count = smoothing == 1 ? 9.0f : static_cast<float>((h_hi - h_lo + 1) * (w_hi - w_lo + 1));
              }
              pooled = pooled / count;
              row_values[w] = plane_values[h * w_d + w] * smooth_keep + pooled * smooth_mix;
            }
          } else {
            upsample_row(frame_l, frame_r, lt.weight, taps_h[h], taps_w.data(), w_d, sx_h, sx_w, row_values.data());
          }
          const float* noise = plane_noise.data() + h * w_d;
          if (tokens) {
            const int64_t row_off = b * n_tokens * token_dim + ((t / pt) * tokens_h + h / ph) * tokens_w * token_dim +
                                    ((c * pt + t % pt) * ph + h % ph) * pw;
            for (int64_t w = 0; w < w_d; ++w)
              y[row_off + col_off[w]] = static_cast<out_t>(row_values[w] * keep + noise[w] * sigma32);
          } else {
            out_t* row_out = y + ((b * channels + c) * t_d + t) * h_d * w_d + h * w_d;
            for (int64_t w = 0; w < w_d; ++w) row_out[w] = static_cast<out_t>(row_values[w] * keep + noise[w] * sigma32);
          }
        }
      }
    }
  });
}

void check_anchors(const char* name, const torch::Tensor& anchors, int64_t n_src, int64_t n_dst) {
  TORCH_CHECK(anchors.dim() == 1 && anchors.scalar_type() == at::kInt && anchors.size(0) == n_src &&
                  anchors.is_contiguous(),
              "dvg::_cpp_resample_renoise: ", name, " must be a contiguous 1-D int32 tensor of ", n_src, " entries");
  const int32_t* a = anchors.data_ptr<int32_t>();
  // the kernel indexes with these values: checked here unconditionally (cheap, host memory)
  // a single source coordinate is the anchor [0] (a nested axis of size 1 is [0], dvg-spec §8)
  TORCH_CHECK(a[0] == 0 && (n_src == 1 || a[n_src - 1] == n_dst - 1), "dvg::_cpp_resample_renoise: ", name,
              " must start at 0 and end at ", n_dst - 1);
  for (int64_t j = 1; j < n_src; ++j)
    TORCH_CHECK(a[j] > a[j - 1], "dvg::_cpp_resample_renoise: ", name, " must be strictly increasing (entry ", j,
                " is ", a[j], " after ", a[j - 1], ")");
}

void check_index(const char* name, const torch::Tensor& v, at::ScalarType dtype, int64_t length) {
  TORCH_CHECK(v.dim() == 1 && v.scalar_type() == dtype && v.size(0) == length && v.is_contiguous() &&
                  v.device().is_cpu(),
              "dvg::_cpp_resample_renoise: ", name, " must be a contiguous 1-D CPU tensor of ", length, " entries of ",
              dtype);
}

}  // namespace

void cpp_resample_renoise(const torch::Tensor& x0, const torch::Tensor& anchor_t, const torch::Tensor& anchor_h,
                          const torch::Tensor& anchor_w, const torch::Tensor& coord_t, const torch::Tensor& coord_h,
                          const torch::Tensor& coord_w, const torch::Tensor& seeds, double sigma, int64_t smoothing,
                          bool tokens, at::IntArrayRef patch, torch::Tensor out) {
  TORCH_CHECK(x0.dim() == 5 && x0.device().is_cpu(), "dvg::_cpp_resample_renoise: x0 must be a 5-D CPU tensor");
  TORCH_CHECK(patch.size() == 3 && patch[0] >= 1 && patch[1] >= 1 && patch[2] >= 1,
              "dvg::_cpp_resample_renoise: patch must be three positive ints");
  TORCH_CHECK(smoothing >= 0 && smoothing <= 2, "dvg::_cpp_resample_renoise: smoothing must be 0, 1 or 2");
  const int64_t batch = x0.size(0), channels = x0.size(1);
  const int64_t t_d = coord_t.size(0), h_d = coord_h.size(0), w_d = coord_w.size(0);
  TORCH_CHECK(x0.size(2) >= 1 && x0.size(3) >= 1 && x0.size(4) >= 1 && x0.size(2) <= t_d && x0.size(3) <= h_d &&
                  x0.size(4) <= w_d,
              "dvg::_cpp_resample_renoise: the source grid ", x0.sizes().slice(2),
              " must be non-empty and not larger than the target (", t_d, ", ", h_d, ", ", w_d, ")");
  check_index("coord_t", coord_t, at::kLong, t_d);
  check_index("coord_h", coord_h, at::kLong, h_d);
  check_index("coord_w", coord_w, at::kLong, w_d);
  check_index("seeds", seeds, at::kLong, batch);
  check_anchors("anchor_t", anchor_t, x0.size(2), t_d);
  check_anchors("anchor_h", anchor_h, x0.size(3), h_d);
  check_anchors("anchor_w", anchor_w, x0.size(4), w_d);
  const int64_t pt = patch[0], ph = patch[1], pw = patch[2];
  std::vector<int64_t> expected;
  if (tokens) {
    TORCH_CHECK(t_d % pt == 0 && h_d % ph == 0 && w_d % pw == 0, "dvg::_cpp_resample_renoise: the target grid (",
                t_d, ", ", h_d, ", ", w_d, ") is not divisible by the patch (", pt, ", ", ph, ", ", pw, ")");
    expected = {batch, (t_d / pt) * (h_d / ph) * (w_d / pw), channels * pt * ph * pw};
  } else {
    expected = {batch, channels, t_d, h_d, w_d};
  }
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous() && out.sizes().vec() == expected,
              "dvg::_cpp_resample_renoise: out must be a contiguous CPU tensor of shape ", at::IntArrayRef(expected),
              ", got ", out.sizes());
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "resample_renoise_in", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "resample_renoise_out", [&] {
      run_kernel<in_t, scalar_t>(x0, anchor_t.data_ptr<int32_t>(), anchor_h.data_ptr<int32_t>(),
                                 anchor_w.data_ptr<int32_t>(), coord_t.data_ptr<int64_t>(), coord_h.data_ptr<int64_t>(),
                                 coord_w.data_ptr<int64_t>(), seeds.data_ptr<int64_t>(), sigma, smoothing, tokens, pt,
                                 ph, pw, out, t_d, h_d, w_d);
    });
  });
}

TORCH_LIBRARY_FRAGMENT(dvg, m) {
  m.def(
      "_cpp_resample_renoise(Tensor x0, Tensor anchor_t, Tensor anchor_h, Tensor anchor_w, Tensor coord_t, "
      "Tensor coord_h, Tensor coord_w, Tensor seeds, float sigma, int smoothing, bool tokens, int[] patch, "
      "Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(dvg, CPU, m) { m.impl("_cpp_resample_renoise", &cpp_resample_renoise); }
