// Shared helpers for vidsel's C++ CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

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

// Jobs 0 .. count-1 handed out one at a time to whichever thread asks first (take() returns -1 when
// none is left). at::parallel_for splits a range statically: on a shared machine, or a CPU with fast and
// slow cores, a thread that is descheduled or slow then holds up the whole region with its share,
// while with a queue the other threads take over its jobs. List expensive jobs first.
class JobQueue {
 public:
  explicit JobQueue(int64_t count) : count_(count) {}
  int64_t take() {
    const int64_t job = next_.fetch_add(1, std::memory_order_relaxed);
    return job < count_ ? job : -1;
  }

 private:
  std::atomic<int64_t> next_{0};
  const int64_t count_;
};

// How many workers share `jobs` jobs: min(threads, jobs), at least 1.
inline int64_t worker_count(int64_t jobs) { return std::clamp<int64_t>(jobs, 1, std::max(1, at::get_num_threads())); }

// Runs body(worker) once for every worker 0 .. worker_count(jobs)-1, each on its own thread when there
// are threads to spare; body typically drains a JobQueue with per-worker scratch.
template <class Body>
void on_workers(int64_t jobs, const Body& body) {
  at::parallel_for(0, worker_count(jobs), 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) body(w);
  });
}

}  // namespace vidsel

#define VIDSEL_CHECK_CPU(t, name) \
  TORCH_CHECK((t).device().is_cpu(), "vidsel(cpu): ", name, " must be a CPU tensor, got ", (t).device())
#define VIDSEL_CHECK_DIM(t, d, name) \
  TORCH_CHECK((t).dim() == (d), "vidsel(cpu): ", name, " must have ", d, " dimensions, got ", (t).dim())
