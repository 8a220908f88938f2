#include "cpu/common.h"

#include <atomic>
#include <limits>

namespace vidsel {

namespace {
std::atomic<bool> g_debug_fill{false};
}

void set_debug_fill(bool enabled) { g_debug_fill.store(enabled); }
bool debug_fill_enabled() { return g_debug_fill.load(); }

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (debug_fill_enabled()) {
    if (at::isFloatingType(out.scalar_type())) {
      out.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      out.fill_(-1);
    }
  }
  return out;
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
