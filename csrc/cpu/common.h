// Shared helpers for vidsel's C++ CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace vidsel {

// When enabled (tests do this), fresh outputs are filled with NaN (floating) or -1 (integer)
// before a kernel runs, so any element a kernel forgets to write shows up in comparisons.
void set_debug_fill(bool enabled);
bool debug_fill_enabled();

// Outputs of 4 MiB and more are advised onto transparent huge pages (fewer first-touch faults).
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Outputs at least this large are written with non-temporal (streaming) stores: they skip the
// read-for-ownership of every destination line, a third of the memory traffic of a row copy.
constexpr int64_t kStreamingBytes = int64_t{4} << 20;

// Copies `bytes` from src to dst (src == nullptr: writes zeros), streaming the 32-byte-aligned body
// when `streaming`. Call finish_streaming(streaming) at the end of the parallel job.
void write_row(char* dst, const char* src, int64_t bytes, bool streaming);
void finish_streaming(bool streaming);

// Checks every index in `index` lies in [0, upper); raises before any kernel reads memory with it.
void check_index_range(const at::Tensor& index, int64_t upper, const char* name);

}  // namespace vidsel

#define VIDSEL_CHECK_CPU(t, name) \
  TORCH_CHECK((t).device().is_cpu(), "vidsel(cpu): ", name, " must be a CPU tensor, got ", (t).device())
#define VIDSEL_CHECK_DIM(t, d, name) \
  TORCH_CHECK((t).dim() == (d), "vidsel(cpu): ", name, " must have ", d, " dimensions, got ", (t).dim())
