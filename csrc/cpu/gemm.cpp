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
#include <mutex>

extern "C" {
// Fortran BLAS (column-major), exported by libtorch_cpu.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
}

namespace vidsel {
namespace cpu_gemm {
namespace {

constexpr double kBudgetMs = 50.0;    // the whole calibration of a process
constexpr double kBlasMargin = 0.9;   // BLAS must take <= 90% of vidsel's time to be chosen
constexpr int kTimedRuns = 2;

enum class Mode : int { kAuto = 0, kVidsel = 1, kBlas = 2 };

struct Shape {
  const char* name;
  bool trans_a, trans_b;
  int64_t m, n, k;
  float beta;
};

// Representative products, as the kernels call them (per thread, inside a parallel region).
constexpr std::array<Shape, kShapeClasses> kShapes = {{
    {"attention_tile", false, true, 256, 512, 64, 0.0f},
    {"patch_projection", false, false, 96, 768, 768, 1.0f},
    {"patch_gradient", true, false, 96, 768, 256, 1.0f},
    {"similarity", false, false, 64, 512, 64, 0.0f},
    {"indicator", false, false, 64, 768, 196, 0.0f},
}};

struct Calibration {
  Path path = Path::kVidsel;
  double vidsel_ms = -1, blas_ms = -1;
  const char* why = "";
};

std::array<std::once_flag, kShapeClasses> g_once;
std::array<Calibration, kShapeClasses> g_calibration;
std::mutex g_budget_mutex;
double g_spent_ms = 0;

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

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best-of-kTimedRuns time of one product on `path`, measured by every thread at once (each on its own
// buffers) so the cores are as busy as inside a kernel and BLAS runs single-threaded as it does there.
double time_path(const Shape& s, Path path) {
  const int threads = std::max(1, at::get_num_threads());
  std::vector<double> best(threads, 1e30);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t a_size = s.m * s.k, b_size = s.k * s.n;
      std::vector<float> a(a_size, 0.25f), b(b_size, 0.5f), c(s.m * s.n, 0.0f);  // values do not change the time
      const int64_t lda = s.trans_a ? s.m : s.k, ldb = s.trans_b ? s.k : s.n;
      for (int run = 0; run <= kTimedRuns; ++run) {  // run 0 warms caches and the packing buffers
        const double start = now_ms();
        sgemm(path, s.trans_a, s.trans_b, s.m, s.n, s.k, 1.0f, a.data(), lda, b.data(), ldb, s.beta, c.data(), s.n);
        if (run > 0) best[t] = std::min(best[t], now_ms() - start);
      }
    }
  });
  return *std::max_element(best.begin(), best.end());
}

void calibrate(int index) {
  Calibration& cal = g_calibration[index];
  if (!vidsel_available()) {
    cal = {Path::kBlas, -1, -1, "no AVX-512 in this build"};
    return;
  }
  {
    std::lock_guard<std::mutex> lock(g_budget_mutex);
    if (g_spent_ms >= kBudgetMs) {
      cal = {Path::kVidsel, -1, -1, "calibration budget spent: default"};
      return;
    }
  }
  const double start = now_ms();
  const Shape& s = kShapes[index];
  cal.vidsel_ms = time_path(s, Path::kVidsel);
  cal.blas_ms = time_path(s, Path::kBlas);
  cal.path = cal.blas_ms <= kBlasMargin * cal.vidsel_ms ? Path::kBlas : Path::kVidsel;
  cal.why = "calibrated";
  std::lock_guard<std::mutex> lock(g_budget_mutex);
  g_spent_ms += now_ms() - start;
}

const Calibration& calibration(ShapeClass cls) {
  const int index = static_cast<int>(cls);
  std::call_once(g_once[index], calibrate, index);
  return g_calibration[index];
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
  return calibration(cls).path;
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
  for (int i = 0; i < kShapeClasses; ++i) {
    const Shape& s = kShapes[i];
    char line[256];
    if (forced != "auto") {
      std::snprintf(line, sizeof(line), "%s: %s (forced by VIDSEL_CPU_GEMM=%s)", s.name, forced.c_str(),
                    forced.c_str());
    } else {
      const Calibration& cal = calibration(static_cast<ShapeClass>(i));
      if (cal.vidsel_ms < 0) {  // not timed: no AVX-512, or the budget was spent
        std::snprintf(line, sizeof(line), "%s: %s (%s)", s.name, path_name(cal.path), cal.why);
        lines.emplace_back(line);
        continue;
      }
      std::snprintf(line, sizeof(line), "%s: %s (%s; %lldx%lldx%lld: vidsel %.3f ms, blas %.3f ms)", s.name,
                    path_name(cal.path), cal.why, static_cast<long long>(s.m), static_cast<long long>(s.n),
                    static_cast<long long>(s.k), cal.vidsel_ms, cal.blas_ms);
    }
    lines.emplace_back(line);
  }
  if (forced == "auto") {
    std::lock_guard<std::mutex> lock(g_budget_mutex);
    char line[128];
    std::snprintf(line, sizeof(line), "calibration: %.1f ms of the %.0f ms budget", g_spent_ms, kBudgetMs);
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
