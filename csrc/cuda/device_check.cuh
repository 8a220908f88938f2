// Device-side argument checks for values only the GPU sees (user-supplied indices), so bindings need
// no host synchronisation to validate them. A failed check stops the kernel with a device-side
// assert naming the condition; the next CUDA call raises "device-side assert triggered".
#pragma once

// glibc declares __assert_fail only without NDEBUG; these checks must also hold in release builds.
#pragma push_macro("NDEBUG")
#undef NDEBUG
#include <assert.h>
#pragma pop_macro("NDEBUG")
#include <assert.h>  // restores the assert macro the including file expects

#define VIDSEL_DEVICE_CHECK(cond)                                          \
  do {                                                                     \
    if (!(cond)) __assert_fail("vidsel(cuda): " #cond, __FILE__, __LINE__, __func__); \
  } while (0)
