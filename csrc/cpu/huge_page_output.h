// Output allocation for the selection kernels (topk_gather, anchor_select): transparent huge pages.
//
// These ops stream rows into fresh outputs of tens of MB. On 4 KiB pages the first-touch page faults
// cost as much as the copy itself; on 2 MiB pages a fraction of it. The tensor comes from the normal
// CPU allocator (so profilers and memory accounting see it); large blocks there are fresh mappings
// nobody has touched yet, and madvise asks the kernel to back their aligned interior with huge pages
// (what THP_MEM_ALLOC_ENABLE=1 does for every torch allocation).
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <limits>

#include "cpu/common.h"

namespace vidsel {

inline at::Tensor huge_page_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  at::Tensor out = at::empty(sizes, options);
  const auto begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + out.nbytes()) & ~(kHugePage - 1);
  if (out.nbytes() >= 2 * kHugePage && last > first) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // a hint; failure is harmless
  }
  if (debug_fill_enabled()) {
    if (at::isFloatingType(out.scalar_type())) {
      out.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      out.fill_(-1);
    }
  }
  return out;
}

}  // namespace vidsel
