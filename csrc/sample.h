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
#endif

}  // namespace syncfree
