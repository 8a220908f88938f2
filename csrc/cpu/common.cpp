#include "cpu/common.h"

#include <sys/mman.h>


#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstring>
#include <cstdint>
#include <limits>

namespace vidsel {

namespace {
std::atomic<bool> g_debug_fill{false};
}

void set_debug_fill(bool enabled) { g_debug_fill.store(enabled); }
bool debug_fill_enabled() { return g_debug_fill.load(); }

// Large outputs are fresh mappings nobody has touched: on 4 KiB pages their first-touch page faults
// cost as much as the kernel's own writes. madvise asks the OS to back the aligned interior with
// 2 MiB pages (what THP_MEM_ALLOC_ENABLE=1 does for every torch allocation). The tensor still comes
// from torch's allocator, so profilers and memory accounting see it. A hint: failure is harmless.
namespace {
void advise_huge_pages(const at::Tensor& out) {
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  if (out.nbytes() < 2 * kHugePage) return;
  const auto begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + out.nbytes()) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
}
}  // namespace

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge_pages(out);
  if (debug_fill_enabled()) {
    if (at::isFloatingType(out.scalar_type())) {
      out.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      out.fill_(-1);
    }
  }
  return out;
}

void write_row(char* dst, const char* src, int64_t bytes, bool streaming) {
#if defined(__AVX2__)
  if (streaming) {
    const int64_t misalign = static_cast<int64_t>(reinterpret_cast<uintptr_t>(dst) & 31);
    const int64_t head = std::min<int64_t>(bytes, (32 - misalign) & 31);
    int64_t c = 0;
    if (src) std::memcpy(dst, src, head); else std::memset(dst, 0, head);
    for (c = head; c + 32 <= bytes; c += 32) {
      const __m256i v = src ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + c)) : _mm256_setzero_si256();
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + c), v);
    }
    if (src) std::memcpy(dst + c, src + c, bytes - c); else std::memset(dst + c, 0, bytes - c);
    return;
  }
#endif
  if (src) std::memcpy(dst, src, bytes); else std::memset(dst, 0, bytes);
}

void finish_streaming(bool streaming) {
#if defined(__AVX2__)
  if (streaming) _mm_sfence();  // orders this thread's streaming stores before the op returns
#endif
}

void check_index_range(const at::Tensor& index, int64_t upper, const char* name) {
  TORCH_CHECK(index.scalar_type() == at::kLong, "vidsel: ", name, " must be int64, got ", index.scalar_type());
  if (index.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(index);
  const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
  TORCH_CHECK(lo_v >= 0 && hi_v < upper, "vidsel: ", name, " holds values in [", lo_v, ", ", hi_v,
              "], expected all in [0, ", upper, ")");
}

}  // namespace vidsel
