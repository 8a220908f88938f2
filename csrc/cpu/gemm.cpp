// Runtime choice between vidsel's AVX-512 GEMM and the BLAS torch links (see gemm.h).
#include "cpu/gemm.h"

#include "cpu/common.h"
#include "cpu/gemm_f32.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>

#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif

extern "C" {
// Fortran BLAS (column-major), exported by libtorch_cpu.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
}

namespace vidsel {
namespace cpu_gemm {
namespace {

constexpr double kBudgetMs = 50.0;    // the whole calibration of a process, wall time
constexpr double kBlasMargin = 0.9;   // BLAS must take <= 90% of vidsel's time to be chosen
constexpr int kMaxTimedRounds = 3;
constexpr const char* kCacheVersion = "vidsel-cpu-gemm-1";

enum class Mode : int { kAuto = 0, kVidsel = 1, kBlas = 2 };

struct Shape {
  const char* name;
  bool trans_a, trans_b;
  int64_t m, n, k;
  float beta;
};

// Representative products, as the kernels call them (per thread, inside a parallel region); the patch
// projection's depth is cut from 768 to 384 (3 of the GEMM's depth blocks instead of 6) to fit the budget.
constexpr std::array<Shape, kShapeClasses> kShapes = {{
    {"attention_tile", false, true, 256, 512, 64, 0.0f},
    {"patch_projection", false, false, 96, 768, 384, 1.0f},
    {"patch_gradient", true, false, 96, 768, 256, 1.0f},
    {"similarity", false, false, 64, 512, 64, 0.0f},
    {"indicator", false, false, 64, 768, 196, 0.0f},
}};

struct Calibration {
  Path path = Path::kVidsel;
  double vidsel_ms = -1, blas_ms = -1;
};

// Filled once per process by calibrate_all (every class at once, on the first choose() in auto mode).
struct State {
  std::array<Calibration, kShapeClasses> classes;
  std::string source;  // "calibrated" | "cached" | "no AVX-512 in this build"
  std::string cache_file;
  double spent_ms = 0;  // wall time
  double cpu_ms = 0;    // CPU time of the busiest calibrating thread (what the machine owed us)
  int timed_rounds = 0;
};

std::once_flag g_once;
State g_state;

Mode mode_from(const std::string& text) {
  if (text.empty() || text == "auto") return Mode::kAuto;
  if (text == "vidsel") return Mode::kVidsel;
  if (text == "blas") return Mode::kBlas;
  TORCH_CHECK(false, "VIDSEL_CPU_GEMM must be 'auto', 'vidsel' or 'blas', got '", text, "'");
}

std::atomic<int>& mode_flag() {
  static std::atomic<int> flag{[] {
    const char* env = std::getenv("VIDSEL_CPU_GEMM");
    return static_cast<int>(mode_from(env ? env : ""));
  }()};
  return flag;
}

void blas_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  // Column-major BLAS sees C^T = op(B)^T op(A)^T.
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int mm = int(n), nn = int(m), kk = int(k), la = int(ldb), lb = int(lda), lc = int(ldc);
  sgemm_(&ta, &tb, &mm, &nn, &kk, &alpha, b, &la, a, &lb, &beta, c, &lc);
}

double wall_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU time of the calling thread: on a shared machine the time a thread spends descheduled does not
// count, so the comparison of two paths does not depend on what else runs.
double thread_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// The CPU's brand string (cpuid leaves 0x80000002..4), e.g. "AMD EPYC 9R14 96-Core Processor".
std::string cpu_brand() {
  unsigned int regs[12] = {};
#if defined(__x86_64__) || defined(__i386__)
  unsigned int max_leaf = __get_cpuid_max(0x80000000u, nullptr);
  if (max_leaf >= 0x80000004u) {
    for (unsigned int i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002u + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2], &regs[4 * i + 3]);
    }
  }
#endif
  std::string brand(reinterpret_cast<const char*>(regs), sizeof(regs));
  brand = brand.substr(0, brand.find('\0'));
  const auto first = brand.find_first_not_of(' '), last = brand.find_last_not_of(' ');
  return first == std::string::npos ? "unknown" : brand.substr(first, last - first + 1);
}

// What a cached choice depends on: the CPU model, torch's BLAS (its version), the thread count.
std::string cache_key() {
  std::string key = std::string(kCacheVersion) + "|" + cpu_brand() + "|torch " +
#if defined(TORCH_VERSION)
                    TORCH_VERSION +
#endif
                    "|threads " + std::to_string(std::max(1, at::get_num_threads()));
  for (const Shape& s : kShapes) key += "|" + std::string(s.name);
  return key;
}

// $VIDSEL_CACHE_DIR (empty or "off": no cache), else $XDG_CACHE_HOME/vidsel, else ~/.cache/vidsel.
std::string cache_dir() {
  if (const char* dir = std::getenv("VIDSEL_CACHE_DIR")) {
    const std::string d(dir);
    return d == "off" ? "" : d;
  }
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/vidsel";
  if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/vidsel";
  return "";
}

std::string cache_path(const std::string& key) {
  const std::string dir = cache_dir();
  if (dir.empty()) return "";
  uint64_t hash = 1469598103934665603ull;  // FNV-1a: a stable file name per key
  for (unsigned char ch : key) hash = (hash ^ ch) * 1099511628211ull;
  char name[64];
  std::snprintf(name, sizeof(name), "/cpu_gemm-%016llx.txt", static_cast<unsigned long long>(hash));
  return dir + name;
}

// The file: the key on line 1, then "<class> <vidsel|blas> <vidsel ms> <blas ms>" per class in order.
bool read_cache(const std::string& path, const std::string& key, State& state) {
  std::ifstream in(path);
  std::string line;
  if (path.empty() || !in || !std::getline(in, line) || line != key) return false;
  std::array<Calibration, kShapeClasses> classes;
  for (int i = 0; i < kShapeClasses; ++i) {
    std::string name, path_text;
    Calibration cal;
    if (!(in >> name >> path_text >> cal.vidsel_ms >> cal.blas_ms) || name != kShapes[i].name ||
        (path_text != "vidsel" && path_text != "blas")) {
      return false;
    }
    cal.path = path_text == "blas" ? Path::kBlas : Path::kVidsel;
    classes[i] = cal;
  }
  state.classes = classes;
  return true;
}

void write_cache(const std::string& path, const std::string& key, const State& state) {
  if (path.empty()) return;
  const std::string dir = path.substr(0, path.rfind('/'));
  for (size_t at = 1; at != std::string::npos; at = dir.find('/', at + 1)) ::mkdir(dir.substr(0, at).c_str(), 0755);
  ::mkdir(dir.c_str(), 0755);
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp);
    if (!out) return;  // a read-only home: calibrate again next time
    out << key << "\n";
    for (int i = 0; i < kShapeClasses; ++i) {
      const Calibration& cal = state.classes[i];
      out << kShapes[i].name << " " << path_name(cal.path) << " " << cal.vidsel_ms << " " << cal.blas_ms << "\n";
    }
  }
  std::rename(tmp.c_str(), path.c_str());  // atomic: a concurrent process reads the old file or the new one
}

struct Buffers {
  std::vector<float> a, b, c;
};

// One product of class s on `path` (only its first `rows` rows); returns its CPU time.
double time_once(const Shape& s, int64_t rows, Path path, Buffers& buf) {
  const int64_t lda = s.trans_a ? s.m : s.k, ldb = s.trans_b ? s.k : s.n;
  const double start = thread_cpu_ms();
  sgemm(path, s.trans_a, s.trans_b, rows, s.n, s.k, 1.0f, buf.a.data(), lda, buf.b.data(), ldb, s.beta, buf.c.data(),
        s.n);
  return thread_cpu_ms() - start;
}

// Times every class on both paths in rounds, every thread at once on its own buffers (the cores as busy
// as inside a kernel; BLAS single-threaded as it runs there). Round 0 (a few rows per product) touches
// the buffers and warms the code and the BLAS's dispatch; timed rounds alternate which path goes first.
// A path's time is its fastest CPU time over threads and rounds. Rounds stop before the next one would
// cross the budget; the first timed round always runs, so every class is covered.
void calibrate_by_timing(State& state) {
  const int threads = std::max(1, at::get_num_threads());
  std::vector<std::array<std::array<double, 2>, kShapeClasses>> best(threads);
  for (auto& per_thread : best) {
    for (auto& pair : per_thread) pair = {1e30, 1e30};
  }
  std::vector<Buffers> buffers(threads);
  std::vector<double> cpu_ms(threads, 0.0);
  // One round of thread t: every class on both paths.
  auto run_round = [&](int64_t t, int round) {
    Buffers& buf = buffers[t];
    for (int i = 0; i < kShapeClasses; ++i) {
      const Shape& s = kShapes[i];
      if (round == 0) {  // values do not change the time
        buf.a.assign(std::max<size_t>(buf.a.size(), s.m * s.k), 0.25f);
        buf.b.assign(std::max<size_t>(buf.b.size(), s.k * s.n), 0.5f);
        buf.c.assign(std::max<size_t>(buf.c.size(), s.m * s.n), 0.0f);
      }
      for (int order = 0; order < 2; ++order) {
        const int p = (order + round) % 2;
        const int64_t rows = round == 0 ? std::min<int64_t>(s.m, 8) : s.m;
        const double ms = time_once(s, rows, p == 0 ? Path::kVidsel : Path::kBlas, buf);
        if (round > 0) best[t][i][p] = std::min(best[t][i][p], ms);
      }
    }
  };
  // Rounds [first, last] in one parallel region (each region end waits for every thread).
  auto run_rounds = [&](int first, int last) {
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const double cpu_start = thread_cpu_ms();
        for (int round = first; round <= last; ++round) run_round(t, round);
        cpu_ms[t] += thread_cpu_ms() - cpu_start;
      }
    });
  };
  const double start = wall_ms();
  run_rounds(0, 1);  // warm-up and the first timed round: every class covered
  state.timed_rounds = 1;
  for (int round = 2; round <= kMaxTimedRounds; ++round) {
    const double elapsed = wall_ms() - start;
    if (elapsed + elapsed / state.timed_rounds > kBudgetMs) break;
    run_rounds(round, round);
    state.timed_rounds = round;
  }
  for (int i = 0; i < kShapeClasses; ++i) {
    Calibration& cal = state.classes[i];
    cal.vidsel_ms = cal.blas_ms = 1e30;
    for (int t = 0; t < threads; ++t) {
      cal.vidsel_ms = std::min(cal.vidsel_ms, best[t][i][0]);
      cal.blas_ms = std::min(cal.blas_ms, best[t][i][1]);
    }
    cal.path = cal.blas_ms <= kBlasMargin * cal.vidsel_ms ? Path::kBlas : Path::kVidsel;
  }
  state.spent_ms = wall_ms() - start;
  state.cpu_ms = *std::max_element(cpu_ms.begin(), cpu_ms.end());
}

void calibrate_all() {
  State& state = g_state;
  if (!vidsel_available()) {
    for (Calibration& cal : state.classes) cal = {Path::kBlas, -1, -1};
    state.source = "no AVX-512 in this build";
    return;
  }
  const double start = wall_ms();
  const std::string key = cache_key();
  state.cache_file = cache_path(key);
  if (read_cache(state.cache_file, key, state)) {
    state.source = "cached";
    state.spent_ms = wall_ms() - start;
    return;
  }
  calibrate_by_timing(state);
  state.source = "calibrated";
  write_cache(state.cache_file, key, state);
}

const State& state() {
  std::call_once(g_once, calibrate_all);
  return g_state;
}

}  // namespace

bool vidsel_available() {
#if defined(VIDSEL_HAVE_AVX512_GEMM)
  return true;
#else
  return false;
#endif
}

const char* path_name(Path path) { return path == Path::kBlas ? "blas" : "vidsel"; }

Path choose(ShapeClass cls) {
  const Mode mode = static_cast<Mode>(mode_flag().load());
  if (mode == Mode::kBlas) return Path::kBlas;
  if (mode == Mode::kVidsel) {
    TORCH_CHECK(vidsel_available(), "VIDSEL_CPU_GEMM=vidsel: this build of vidsel has no AVX-512 GEMM");
    return Path::kVidsel;
  }
  return state().classes[static_cast<int>(cls)].path;
}

void sgemm(Path path, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
#if defined(VIDSEL_HAVE_AVX512_GEMM)
  if (path == Path::kVidsel) {
    const gemm_f32::StridedA a_view{a, trans_a ? 1 : lda, trans_a ? lda : 1};
    if (trans_b) {
      gemm_f32::gemm_b_transposed(m, n, k, alpha, a_view, b, ldb, beta, c, ldc);
    } else {
      gemm_f32::gemm(m, n, k, alpha, a_view, b, ldb, beta, c, ldc);
    }
    return;
  }
#endif
  if (k == 0) {  // BLAS with k = 0 is C = beta C too, but some implementations reject lda < 1
    if (beta == 0.0f) {
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    }
    return;
  }
  blas_sgemm(trans_a, trans_b, m, n, k, alpha, a, std::max<int64_t>(lda, 1), b, std::max<int64_t>(ldb, 1), beta,
             c, std::max<int64_t>(ldc, 1));
}

void set_mode(const std::string& text) { mode_flag().store(static_cast<int>(mode_from(text))); }

std::string mode() {
  switch (static_cast<Mode>(mode_flag().load())) {
    case Mode::kVidsel: return "vidsel";
    case Mode::kBlas: return "blas";
    default: return "auto";
  }
}

std::vector<std::string> report() {
  std::vector<std::string> lines;
  const std::string forced = mode();
  const State* st = forced == "auto" ? &state() : nullptr;
  for (int i = 0; i < kShapeClasses; ++i) {
    const Shape& s = kShapes[i];
    char line[256];
    if (!st) {
      std::snprintf(line, sizeof(line), "%s: %s (forced by VIDSEL_CPU_GEMM=%s)", s.name, forced.c_str(),
                    forced.c_str());
    } else if (st->classes[i].vidsel_ms < 0) {  // not timed: no AVX-512
      std::snprintf(line, sizeof(line), "%s: %s (%s)", s.name, path_name(st->classes[i].path), st->source.c_str());
    } else {
      const Calibration& cal = st->classes[i];
      std::snprintf(line, sizeof(line), "%s: %s (%s; %lldx%lldx%lld: vidsel %.3f ms, blas %.3f ms)", s.name,
                    path_name(cal.path), st->source.c_str(), static_cast<long long>(s.m),
                    static_cast<long long>(s.n), static_cast<long long>(s.k), cal.vidsel_ms, cal.blas_ms);
    }
    lines.emplace_back(line);
  }
  if (st) {
    char line[512];
    if (st->source == "cached") {
      std::snprintf(line, sizeof(line), "calibration: %.1f ms of the %.0f ms budget (choice read from %s)",
                    st->spent_ms, kBudgetMs, st->cache_file.c_str());
    } else if (st->source == "calibrated") {
      std::snprintf(line, sizeof(line),
                    "calibration: %.1f ms of the %.0f ms budget (%.1f ms CPU per thread; %d timed round%s; "
                    "saved to %s)",
                    st->spent_ms, kBudgetMs, st->cpu_ms, st->timed_rounds, st->timed_rounds == 1 ? "" : "s",
                    st->cache_file.empty() ? "no cache" : st->cache_file.c_str());
    } else {
      std::snprintf(line, sizeof(line), "calibration: %.1f ms of the %.0f ms budget (%s)", st->spent_ms, kBudgetMs,
                    st->source.c_str());
    }
    lines.emplace_back(line);
  }
  return lines;
}

}  // namespace cpu_gemm
}  // namespace vidsel

namespace vidsel {
namespace cpu_gemm {

// Test hook: alpha op(A) op(B) + beta C (alpha = 1.5) on one named path, for tensors a, b, c as stored.
at::Tensor gemm_on_path(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& c_in, bool trans_a,
                        bool trans_b, double beta, std::string path) {
  TORCH_CHECK(a_in.dim() == 2 && b_in.dim() == 2 && c_in.dim() == 2, "cpu_gemm: a, b, c must be matrices");
  TORCH_CHECK(a_in.scalar_type() == at::kFloat && b_in.scalar_type() == at::kFloat && c_in.scalar_type() == at::kFloat,
              "cpu_gemm: float32 only");
  TORCH_CHECK(path == "vidsel" || path == "blas", "cpu_gemm: path must be 'vidsel' or 'blas', got '", path, "'");
  TORCH_CHECK(beta == 0.0 || beta == 1.0, "cpu_gemm: beta must be 0 or 1");
  const Path p = path == "blas" ? Path::kBlas : Path::kVidsel;
  TORCH_CHECK(p == Path::kBlas || vidsel_available(), "cpu_gemm: no AVX-512 GEMM in this build");
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t m = trans_a ? a.size(1) : a.size(0), k = trans_a ? a.size(0) : a.size(1);
  const int64_t n = trans_b ? b.size(0) : b.size(1);
  TORCH_CHECK((trans_b ? b.size(1) : b.size(0)) == k && c_in.size(0) == m && c_in.size(1) == n,
              "cpu_gemm: shapes disagree");
  at::Tensor c = c_in.contiguous().clone();
  sgemm(p, trans_a, trans_b, m, n, k, 1.5f, a.data_ptr<float>(), a.size(1), b.data_ptr<float>(), b.size(1),
        float(beta), c.data_ptr<float>(), n);
  return c;
}

}  // namespace cpu_gemm
}  // namespace vidsel
