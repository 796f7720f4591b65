// Portability macros for code shared by the C++ CPU path and the CUDA kernels.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SF_HD __host__ __device__ __forceinline__
#define SF_HD_METHOD __host__ __device__ __forceinline__
#else
// Internal linkage and forced inlining: a CPU function compiled for AVX2+FMA
// (cpu/sample_cpu.cpp) inlines these and gets their fused, vector form.
#define SF_HD static inline __attribute__((always_inline))
#define SF_HD_METHOD inline __attribute__((always_inline))
#endif

// Host-only helpers (std::vector inside) that the CPU's AVX2 variants must
// inline to get fused, vector code.
#if defined(__CUDACC__)
#define SF_HOST_INLINE inline
#else
#define SF_HOST_INLINE static inline __attribute__((always_inline))
#endif

// The fixed 16-wide group loops. On the GPU both unroll fully (the arrays
// stay in registers). On the CPU, SF_SIMD marks loops whose iterations are
// independent for the vectorizer (`omp simd`, honoured with -fopenmp or
// -fopenmp-simd; gcc's cost model otherwise leaves 16-trip loops scalar, and
// scalar stores read back as vectors stall store forwarding). Vectorizing
// changes no value: each lane does the same IEEE operations.
#if defined(__CUDACC__)
#define SF_UNROLL _Pragma("unroll")
#define SF_SIMD _Pragma("unroll")
#else
#define SF_UNROLL
#define SF_SIMD _Pragma("omp simd")
#endif

namespace syncfree {

// Bit casts that compile to nothing on either side.
SF_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

SF_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// Fused multiply-add, rounded once, on both sides. Every a*b+c in the shared
// math that should be fused says so with this; everything else is compiled
// with contraction off (nvcc --fmad=false, gcc -ffp-contract=off), so CPU and
// GPU round identically. See Note [Same bits on CPU and CUDA] in fmath.h.
SF_HD float fma_f(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}

constexpr float kInf = __builtin_huge_valf();

}  // namespace syncfree
