// Input checks of the ops (ops.cpp, shard_ops.cpp), the one copy of each: each raises a ValueError/TypeError that
// names the argument and says what was expected, before any kernel runs.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "sampling_args.h"

namespace syncfree {

using at::Tensor;

// Rows of a [V] or [B, V] input: 1 or B.
int64_t row_count(const Tensor& input);

// logits or probs: dtype, device, dims, V, last-dim stride. A shard
// (syncfree.distributed) may hold no column: the layout check says so on
// every rank.
void check_input(const Tensor& input, const char* name, bool shard = false);

// Whether two tensors may share memory (for out=).
bool may_overlap(const Tensor& a, const Tensor& b);

// A per-row parameter tensor: one value per row, on the input's device;
// int64 when integral, floating-point otherwise, any dtype with any_dtype.
void check_row_tensor(const Tensor& t, const char* name, const Tensor& input, bool integral,
                      bool any_dtype = false);

void check_generator_device(const at::Generator& generator, const Tensor& input, const char* name);

// Scalar ranges and per-row tensors of the temperature and the warpers.
void check_warpers(const SamplingArgs& w, const Tensor& input);

// Every processing argument (probs: sample_probs, which takes none). On the
// CPU also the ids' values: in [-1, V) (-1 pads); CUDA ignores ids outside
// [0, V), which it cannot check without a sync.
void check_processing(const SamplingArgs& a, const Tensor& input, bool probs);

// The logprob stage's options (top-n: at most min(20, V); none for probs).
void check_wanted(const Wanted& wanted, const Tensor& input, bool probs);

// seed / offset / generator as the sampling ops take them (name: the input's).
void check_rng(const RngArgs& rng, const Tensor& input, const char* name);

// out= of a sampling op: int64, shaped like the batch, overlapping nothing it reads.
void check_out(const Tensor& out, const Tensor& input, const std::vector<int64_t>& batch_shape,
               const std::vector<std::optional<Tensor>>& inputs);

// Every tensor a call reads: `inputs`, then the parameters' and the noise's (for check_out).
std::vector<std::optional<Tensor>> read_by(const SamplingArgs& a, const RngArgs& rng,
                                           std::vector<std::optional<Tensor>> inputs);

// syncfree.verify_draft's tensors: target_logits [B, n + 1, V] (2 <= n + 1 <= kMaxTreeNodes; each
// position as check_input checks a sampling input), draft_ids [B, n] int64,
// draft_probs [B, n, V] float32 or None; on the CPU also the draft ids' values
// (in [0, V); on CUDA that would need a sync: README "Speculative decoding").
void check_verify(const Tensor& target_logits, const Tensor& draft_ids, const std::optional<Tensor>& draft_probs);

// syncfree.verify_tree's tensors: target_logits [B, N, V] (1 <= N <= kMaxTreeNodes, core/verify.h), draft_ids
// and parents [B, N] int64, draft_probs [B, N, V] float32 or None; on the CPU also the values
// (Note [Verifying a tree]): parents[:, 0] = -1, parents[:, i] in [-1, i), and the ids of the
// nodes with a parent in [0, V). CUDA leaves a node with a parent outside [0, i) unreached.
void check_verify_tree(const Tensor& target_logits, const Tensor& draft_ids, const Tensor& parents,
                       const std::optional<Tensor>& draft_probs);

// syncfree.verify_draft's processing: as sample's for the [B, V] rows, and allowed_mask may also be
// one mask per position, [B, n + 1, ceil(V / 32)].
void check_verify_processing(const SamplingArgs& a, const Tensor& target_logits);

}  // namespace syncfree
