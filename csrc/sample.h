// Entry points of the device implementations; ops.cpp does every check first.
#pragma once

#include <ATen/core/Generator.h>
#include <c10/core/ScalarType.h>

#include <optional>

#include "core/params.h"

namespace syncfree {

// When from_generator is true, the implementation takes p.seed/p.pos0 from
// the generator (or the device's default one) and advances it.
void sample_cpu(SampleParams p, c10::ScalarType dtype, const std::optional<at::Generator>& generator,
                bool from_generator);

// Writes the warped logits of every row (removed tokens at -inf) into out,
// a contiguous float [rows, vocab].
void warp_cpu(const SampleParams& p, c10::ScalarType dtype, float* out);

// syncfree.distributed's pieces of the warper selection, over a shard's
// scaled logits y (contiguous [rows, cols]); CUDA twins below.
// token_mass of every y[row, i] with row max m[row] and typical-p spread
// s[row] (select.h), into mass and gap;
void shard_masses_cpu(const float* y, const float* row_max, const float* row_spread, int64_t rows, int64_t cols,
                      int shift, uint64_t* mass, uint64_t* gap);
// hist[row, d] (zeroed by the caller, [rows, 2^digit_bits(done)]) += the
// weights of the row's entries (shard_entry) whose key has digit d and
// matches prefix[row] in its top `done` bits: one radix pass of select_top;
void radix_histogram_cpu(const float* y, const int64_t* weights, const float* centers, const int64_t* prefix,
                         int64_t rows, int64_t cols, int done, uint64_t* hist);
// out[i] = min_p_floor(row_max[i], min_p[i]).
void min_p_floor_cpu(const float* row_max, const float* min_p, int64_t n, float* out);

#ifdef SYNCFREE_WITH_CUDA
// The warpers' kept set of every row into keeps (device memory, [rows]);
// greedy rows get keep_all unless greedy_rows_too (syncfree.warp).
void warp_select_cuda(const SampleParams& p, c10::ScalarType dtype, c10::DeviceIndex device, RowKeep* keeps,
                      bool greedy_rows_too);
// out[row, i] = the row's scaled logit i where kept, -inf elsewhere.
void warp_apply_cuda(const SampleParams& p, c10::ScalarType dtype, c10::DeviceIndex device, const RowKeep* keeps,
                     float* out);
void sample_cuda(SampleParams p, c10::ScalarType dtype, c10::DeviceIndex device,
                 const std::optional<at::Generator>& generator, bool from_generator);

// syncfree.distributed's pieces on CUDA (device arrays; the CPU twins above):
// out[0..1] = the (seed, position) a sampling call over `vocab` tokens would
// draw from the generator, which advances as for that call.
void generator_state_cuda(const std::optional<at::Generator>& generator, c10::DeviceIndex device, int64_t vocab,
                          int64_t* out);
void shard_masses_cuda(const float* y, const float* row_max, const float* row_spread, int64_t rows, int64_t cols,
                       int shift, uint64_t* mass, uint64_t* gap, c10::DeviceIndex device);
void radix_histogram_cuda(const float* y, const int64_t* weights, const float* centers, const int64_t* prefix,
                          int64_t rows, int64_t cols, int done, uint64_t* hist, c10::DeviceIndex device);
void min_p_floor_cuda(const float* row_max, const float* min_p, int64_t n, float* out, c10::DeviceIndex device);
#endif

}  // namespace syncfree
