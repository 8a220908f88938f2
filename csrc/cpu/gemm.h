// The one float32 GEMM entry point of the CPU kernels, with a per-shape-class runtime choice.
//
// Contenders: vidsel's register-tiled AVX-512 GEMM (gemm_f32.h) and the BLAS torch links (its exported
// Fortran sgemm_: MKL in the x86 wheels, OpenBLAS elsewhere). Which one wins depends on the CPU, not
// on the code: MKL takes its AVX2 path on AMD CPUs, where vidsel's tiles are ~2x faster, and runs full
// AVX-512 on Intel, where it beats them. oneDNN is not a contender: ATen reaches it for float32
// matmul only through operators that allocate their result, and these products write into tiles.
//
// The choice is made once per process, lazily, on the first use of any class (so every class is
// covered): every thread times every class's representative product on both contenders, in rounds
// (a warm-up, then up to 3 timed rounds alternating which contender goes first), by thread CPU
// time, so a thread preempted on a shared machine does not inflate either side. The whole
// calibration is capped at 50 ms of wall time. BLAS must win by a 10% margin to be chosen. The result
// is saved per machine (CPU model, torch version, thread count) in $VIDSEL_CACHE_DIR (default
// ~/.cache/vidsel; "off" disables it), so later processes on the same machine read the same choice
// instead of timing again. VIDSEL_CPU_GEMM=auto|vidsel|blas (read once) forces a path; set_mode()
// does the same at run time (tests).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vidsel {
namespace cpu_gemm {

enum class ShapeClass : int {
  kAttentionTile = 0,    // chunk attention: Q K^T (256 x 512 x 64) and P V blocks
  kPatchProjection = 1,  // compressed embed: patches x W^T (96 x 768 x 768)
  kPatchGradient = 2,    // compressed embed: grad^T x patches (96 x 768 x 256, A transposed)
  kSimilarity = 3,       // bipartite matching: normalised A x B^T (64 x 512 x 64)
  kIndicator = 4,        // indicator products Y^T x and their x-gradient (k x D x L)
};
constexpr int kShapeClasses = 5;

enum class Path : int { kVidsel = 0, kBlas = 1 };

// The path for a shape class: calibrates every class on the first call. Call it outside parallel regions.
Path choose(ShapeClass cls);

// Row-major C (m x n) = alpha op(A) op(B) + beta C on `path`, single-threaded (safe inside
// at::parallel_for). op(A) is m x k (trans_a: A stored k x m), op(B) is k x n (trans_b: B stored n x k).
// beta must be 0 or 1; with beta 0, C is only written.
void sgemm(Path path, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// "auto" | "vidsel" | "blas"; anything else raises. Calibration results are kept across changes.
void set_mode(const std::string& mode);
std::string mode();

// One line per shape class: "<class>: <path> (<why>)", then "calibration: ..." (unless forced).
std::vector<std::string> report();

bool vidsel_available();  // built with AVX-512
const char* path_name(Path path);

}  // namespace cpu_gemm
}  // namespace vidsel
