// Helpers shared by the C++ CPU ops (declared again at the top of each file that uses them):
// * dvg::empty_cpu_output: fresh contiguous outputs for the allocating ops (pack / unpack / pack_qk_rope /
//   modulated_layer_norm);
// * dvg::half_to_float_row / float_to_half_row: fp16 <-> fp32 conversion of a row, vectorised with F16C.
//
// Fresh outputs.
//
// Why not always at::empty for large outputs: torch's CPU allocator does not cache, and glibc serves a request of
// 32 MiB or more (its largest mmap threshold on 64-bit) with a fresh mmap unless a free chunk of its heap fits, so
// the output is usually faulted in 4 KiB page by page on first touch: 12.5k faults for 50 MB, 3–4 µs each on the
// 2-core test VM, several times the cost of the copy itself (benchmarks/RESULTS.md). Taking those faults in both
// threads at once barely helps (44 vs 47 ms for 50 MB). So for an output of that size:
// * at::empty first; if most of its pages are already faulted in (mincore: glibc recycled heap memory), it is
//   kept — nothing is faster (measured: the allocating pack at 88–110 % of copy_ in such runs);
// * otherwise the output gets its own 2 MiB-aligned private mapping, advised MADV_HUGEPAGE, which takes one fault
//   per 2 MiB (25 instead of 12.5k for 50 MB; the kernel still zeroes the memory): the allocating pack then runs
//   at 35–80 % of copy_ into an existing buffer (the lower figures where copy_ itself is fastest, as the zeroing
//   remains) instead of 10–25 % with 4 KiB faults.
// Smaller outputs are plain at::empty: below the mmap threshold glibc recycles freed heap chunks, so a repeated
// call's output is usually already faulted in.
//
// Is the mapping the op's business? The hint covers only this op's own output mapping, which the tensor's deleter
// unmaps when the tensor dies (no allocator or heap memory is re-purposed, nothing outlives the tensor), and the
// system's THP policy still decides: the path is taken only when /sys/kernel/mm/transparent_hugepage/enabled is
// `always` or `madvise` (under `never` nothing would be gained). DVG_CPP_HUGEPAGES=0 switches it off (at::empty
// for every size); DVG_CPP_HUGEPAGES=1 takes the mapping for every large output without the residency check
// (tests, benchmarks).
//
// Caveat, measured on the test VM (its virtio balloon reports free memory to the host, which discards it): a
// fresh huge page is usually a 2 MiB block the host has discarded, so after an idle period or heavy memory churn
// in other processes the host must back it again, and single calls then took 60–240 ms instead of ~12 ms (4 KiB
// pages, mostly taken from recently freed small blocks, suffer less: ~45–90 ms). DVG_CPP_HUGEPAGES=0 is the switch
// where that tail matters.
//
// The tensor owns its mapping through a from_blob deleter, so its storage is not resizable (resize_ beyond its
// size raises); views, copies, in-place ops, pickling and torch.save are unaffected.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Half.h>
#include "cpu_common.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#define DVG_HUGE_OUTPUTS 1
#else
#define DVG_HUGE_OUTPUTS 0
#endif

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define DVG_F16C 1
#else
#define DVG_F16C 0
#endif

namespace dvg {

// glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: below it a freed chunk may be reused without new page faults.
constexpr int64_t kHugeOutputMinBytes = int64_t{32} << 20;
constexpr uintptr_t kHugePageBytes = uintptr_t{2} << 20;

#if DVG_HUGE_OUTPUTS
namespace {

// DVG_CPP_HUGEPAGES: "0" never, "1" always for large outputs, unset (or anything else) automatic: only when
// at::empty hands back memory that is not faulted in yet. Also off when the THP policy is `never` (or absent).
enum class HugeMode { kOff, kAuto, kAlways };

HugeMode huge_mode_from_environment() {
  const char* value = std::getenv("DVG_CPP_HUGEPAGES");
  const std::string setting = value == nullptr ? "" : value;
  if (setting == "0") return HugeMode::kOff;
  std::ifstream policy("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!policy || !std::getline(policy, line)) return HugeMode::kOff;
  if (line.find("[always]") == std::string::npos && line.find("[madvise]") == std::string::npos)
    return HugeMode::kOff;
  return setting == "1" ? HugeMode::kAlways : HugeMode::kAuto;
}

HugeMode huge_mode() {
  static const HugeMode mode = huge_mode_from_environment();
  return mode;
}

// Whether most pages of [data, data + bytes) are already faulted in (mincore), i.e. at::empty recycled memory that
// glibc had kept in its heap: writing it costs no faults, which no fresh mapping can beat.
bool mostly_resident(const void* data, size_t bytes) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes + page - 1) & ~(page - 1);
  std::vector<unsigned char> resident((end - start) / page);
  if (mincore(reinterpret_cast<void*>(start), end - start, resident.data()) != 0) return false;
  size_t count = 0;
  for (unsigned char flags : resident) count += flags & 1u;
  return 2 * count >= resident.size();
}

// A private anonymous mapping of `bytes` (a multiple of 2 MiB) starting on a 2 MiB boundary, so every piece of it
// can be a huge page; nullptr if the kernel refuses.
void* map_huge_aligned(size_t bytes) {
  const size_t padded = bytes + kHugePageBytes;
  void* raw = mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  // Give back the unaligned head and the unused tail, so the mapping is exactly the output (no extra memory).
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = aligned + bytes, raw_end = start + padded;
  if (raw_end > end) munmap(reinterpret_cast<void*>(end), raw_end - end);
  // Only a hint: with THP compiled out it fails and the mapping keeps 4 KiB pages, still a correct output.
  madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(aligned);
}

}  // namespace
#endif

// A contiguous CPU tensor of `sizes` and `options`' dtype, uninitialised (as at::empty); see the file comment
// for when it gets its own huge-page mapping.
at::Tensor empty_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor plain = at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
#if DVG_HUGE_OUTPUTS
  const int64_t nbytes = plain.numel() * static_cast<int64_t>(plain.element_size());
  const HugeMode mode = huge_mode();
  if (nbytes < kHugeOutputMinBytes || mode == HugeMode::kOff) return plain;
  if (mode == HugeMode::kAuto && mostly_resident(plain.data_ptr(), static_cast<size_t>(nbytes))) return plain;
  plain = at::Tensor();  // a fresh glibc mapping (or untouched heap): given back, replaced by a huge-page one
  // Whole huge pages: a mapping that ended inside the last 2 MiB would fault that tail in 4 KiB pages (up to
  // 511 faults, ~1.5 ms here) to save zeroing at most 2 MiB (~0.2 ms), at most 6 % of an output this large.
  const size_t bytes = (static_cast<size_t>(nbytes) + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  if (void* data = map_huge_aligned(bytes)) {
    try {
      return at::from_blob(data, sizes, [bytes](void* ptr) { munmap(ptr, bytes); },
                           at::TensorOptions().dtype(options.dtype()).device(at::kCPU));
    } catch (...) {  // from_blob failed before its DataPtr took ownership: the mapping is still ours
      munmap(data, bytes);
      throw;
    }
  }
  // mmap refused (address space or map count limits): let torch's allocator try, and report its own error.
  return at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
#else
  return plain;
#endif
}

// fp16 <-> fp32 rows. GCC 12 does not vectorise _Float16 conversions (one vcvtph2ps per element, even in an
// x86-64-v3 clone), so where the CPU has F16C they run on its 8-wide instructions, chosen at run time (the
// extension is built without -march flags). The portable versions (c10::Half: round to nearest even, as
// vcvtps2ph with _MM_FROUND_TO_NEAREST_INT) give the same bits, except for NaNs: F16C keeps a NaN's payload
// (and quiets a signalling one), c10::Half returns the canonical quiet NaN; both are NaN. DVG_CPP_SIMD=0 forces them, as in
// resample_renoise.cpp, so the tests can compare both on one machine.
using HalfRowFn = void (*)(const void* src, void* dst, int64_t n);

namespace {

void half_to_float_portable(const void* src, void* dst, int64_t n) {
  const c10::Half* x = static_cast<const c10::Half*>(src);
  float* y = static_cast<float*>(dst);
  for (int64_t j = 0; j < n; ++j) y[j] = static_cast<float>(x[j]);
}

void float_to_half_portable(const void* src, void* dst, int64_t n) {
  const float* x = static_cast<const float*>(src);
  c10::Half* y = static_cast<c10::Half*>(dst);
  for (int64_t j = 0; j < n; ++j) y[j] = static_cast<c10::Half>(x[j]);
}

#if DVG_F16C
__attribute__((target("avx,f16c"))) void half_to_float_f16c(const void* src, void* dst, int64_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(src);
  float* y = static_cast<float*>(dst);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(y + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + j))));
  for (; j < n; ++j) y[j] = _cvtsh_ss(x[j]);
}

__attribute__((target("avx,f16c"))) void float_to_half_f16c(const void* src, void* dst, int64_t n) {
  const float* x = static_cast<const float*>(src);
  uint16_t* y = static_cast<uint16_t*>(dst);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + j),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; j < n; ++j) y[j] = _cvtss_sh(x[j], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#endif

bool use_f16c() {
#if DVG_F16C
  return simd_allowed() && __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

}  // namespace

bool simd_allowed() {
  const char* value = std::getenv("DVG_CPP_SIMD");
  return value == nullptr || std::string(value) != "0";
}

HalfRowFn half_to_float_row() {
#if DVG_F16C
  static const HalfRowFn fn = use_f16c() ? half_to_float_f16c : half_to_float_portable;
  return fn;
#else
  return half_to_float_portable;
#endif
}

HalfRowFn float_to_half_row() {
#if DVG_F16C
  static const HalfRowFn fn = use_f16c() ? float_to_half_f16c : float_to_half_portable;
  return fn;
#else
  return float_to_half_portable;
#endif
}

}  // namespace dvg
