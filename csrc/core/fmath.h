// Float math that gives the same bits on the CPU and the GPU.
//
// Note [Same bits on CPU and CUDA]
// --------------------------------
// CPU and CUDA must pick the same token for the same seed, so every value that
// decides a token (noise, race keys, group weights) is computed here from IEEE
// operations that are correctly rounded on both sides: +, -, *, /, explicit
// fma_f, conversions and comparisons. libm's logf/expf and CUDA's differ in the
// last bit, so log and exp are written out below. Both compilers run with
// contraction off (nvcc --fmad=false, gcc -ffp-contract=off) so that no a*b+c
// is fused on one side only. Never build with --use_fast_math.
#pragma once

#include "host_device.h"

namespace syncfree {

constexpr float kLn2Hi = 0.693145751953125f;       // 15 significant bits: n * kLn2Hi is exact
constexpr float kLn2Lo = 1.42860682030941723e-6f;  // ln 2 - kLn2Hi
constexpr float kSqrt2 = 1.41421356237309515f;

// 2 atanh(s) = log((1 + s) / (1 - s)) for |s| <= 0.1716, by its odd series.
// The first omitted term is below 2^-30 relative.
SF_HD float two_atanh_small(float s) {
  const float s2 = s * s;
  float p = fma_f(s2, 0.0909090936f, 0.111111112f);  // 1/11, 1/9
  p = fma_f(s2, p, 0.142857149f);                    // 1/7
  p = fma_f(s2, p, 0.200000003f);                    // 1/5
  p = fma_f(s2, p, 0.333333343f);                    // 1/3
  const float two_s = s + s;
  return fma_f(two_s * s2, p, two_s);
}

// Natural log of a positive float (subnormals included); about 1 ulp.
SF_HD float log_positive(float x) {
  const bool subnormal = x < 1.17549435e-38f;
  x = subnormal ? x * 8388608.0f : x;  // 2^23
  const uint32_t b = float_bits(x);
  int32_t e = int32_t(b >> 23) - 127;
  float m = bits_float((b & 0x007FFFFFu) | 0x3F800000u);  // [1, 2)
  const bool high = m > kSqrt2;
  m = high ? m * 0.5f : m;  // [sqrt(1/2), sqrt(2)]
  e = high ? e + 1 : e;
  const float fe = float(e) - (subnormal ? 23.0f : 0.0f);
  const float log_m = two_atanh_small((m - 1.0f) / (m + 1.0f));
  return fma_f(fe, kLn2Hi, fma_f(fe, kLn2Lo, log_m));
}

// exp(a) for a <= 0; results below 2^-125 (a < -87) are flushed to 0.
SF_HD float exp_nonpositive(float a) {
  const float clamped = a < -88.0f ? -88.0f : a;  // also maps -inf
  const float t = clamped * 1.44269504f;          // log2(e)
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest: 1.5 * 2^23 trick
  float r = fma_f(-n, kLn2Hi, clamped);
  r = fma_f(-n, kLn2Lo, r);  // |r| <= 0.347
  // Taylor series to r^7: truncation error below 2^-27.
  float p = fma_f(r, 1.98412701e-4f, 1.38888892e-3f);  // 1/5040, 1/720
  p = fma_f(r, p, 8.33333377e-3f);                     // 1/120
  p = fma_f(r, p, 4.16666679e-2f);                     // 1/24
  p = fma_f(r, p, 0.166666672f);                       // 1/6
  p = fma_f(r, p, 0.5f);
  p = fma_f(r, p, 1.0f);
  p = fma_f(r, p, 1.0f);
  const float scale = bits_float(uint32_t(int32_t(n) + 127) << 23);
  return a < -87.0f ? 0.0f : p * scale;
}

constexpr float kTwoPowMinus32 = 2.3283064365386963e-10f;

// An Exp(1) variate from 32 random bits k: E = -log(1 - v) with
// v = (k + 1/2) 2^-32, so E is never 0 or inf, lies in [2^-33, 22.87], and
// resolves 2^-32 near 0 (tail tokens keep their probability; fp32
// exponential_ stops at 2^-24). For small v, -log(1 - v) = 2 atanh(v / (2 - v))
// keeps full relative precision; otherwise 1 - v = (~k + 1/2) 2^-32 is exact
// in the integers and goes through the plain log.
SF_HD float exp1_from_bits(uint32_t k) {
  const float v = (float(k) + 0.5f) * kTwoPowMinus32;
  const float near_zero = two_atanh_small(v / (2.0f - v));
  const float one_minus_v = (float(~k) + 0.5f) * kTwoPowMinus32;
  const float otherwise = -log_positive(one_minus_v);
  return k < 0x40000000u ? near_zero : otherwise;
}

// Gumbel(0, 1) noise: -log E. It lies in [-3.13, 22.87].
SF_HD float gumbel_from_bits(uint32_t k) { return -log_positive(exp1_from_bits(k)); }

// An upper bound on gumbel_from_bits over all 2^32 inputs (22.87 plus margin).
constexpr float kGumbelMax = 23.0f;

SF_HD int leading_zeros(uint32_t k) {
#if defined(__CUDA_ARCH__)
  return __clz(int(k));
#else
  return k == 0u ? 32 : __builtin_clz(k);
#endif
}

// An upper bound on gumbel_from_bits(k) read off k's leading zeros, with no
// log: v = (k + 1/2) 2^-32 >= 2^-(clz + 1) and E = -log(1 - v) >= v, so
// G = -log E <= (clz + 1) ln 2. The 1e-3 covers the rounding of E and of the
// two logs (a few ulps of values below 23). tests/cpp checks it over the same
// inputs as the noise itself.
SF_HD float gumbel_bound(uint32_t k) { return float(leading_zeros(k) + 1) * 0.693147182f + 1e-3f; }

}  // namespace syncfree
