// The entry points of the CPU and CUDA implementations (cpu/, cuda/); the op
// files (ops.cpp, shard_ops.cpp) run every check first.
#pragma once

#include <ATen/core/Generator.h>
#include <c10/core/Allocator.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <vector>

#include "core/shard.h"
#include "core/verify.h"

namespace at {
struct PhiloxCudaState;  // ATen/cuda/PhiloxCudaState.h
}  // namespace at

namespace syncfree {

// Note [Drawing from the generator]
// ---------------------------------
// A call without seeds takes its noise's seed and start position from the
// torch generator (the device's default one when none is given), one draw per
// call whatever its rows (the rows differ by subsequence):
//   - CPU, an mt19937: seed = one random64(), pos0 = 0;
//   - CUDA, Philox: the generator's (seed, offset), and the offset advances by
//     round_up(V, 4), the token positions each row reads (Note [syncfree RNG
//     counter layout]).
// sample, verify_draft and syncfree.distributed's shared draw all draw so,
// through draw_generator_cpu / draw_generator_cuda; the tests pin the tokens.
struct GeneratorDraw {
  uint64_t seed;
  uint64_t pos0;
};
GeneratorDraw draw_generator_cpu(const std::optional<at::Generator>& generator);

// When from_generator is true, the implementation draws p.seed/p.pos0
// (Note [Drawing from the generator]).
void sample_cpu(SampleParams p, c10::ScalarType dtype, const std::optional<at::Generator>& generator,
                bool from_generator);

// One whole row's race on the calling thread over values v as the race sees
// them (scaled logits with removed tokens at -inf, or clean weights): the
// token, valid, and for a greedy r with want_mass its logprob. The same token
// as syncfree.sample's over the same values (syncfree.verify_draft's stops).
RowResult race_values_cpu(const float* v, int64_t vocab, bool probs, RowRace r);

#if defined(__x86_64__)
// Whether the CPU path takes its AVX2+FMA variants (SYNCFREE_CPU_BASELINE=1: never).
bool cpu_has_avx2_fma();
#endif

// The warpers' kept set of one row of scaled logits (row_keep with the AVX2+FMA variant).
RowKeep row_keep_cpu(const float* y, int64_t vocab, const Warpers& w, SelectScratch& scratch);

// syncfree.verify_draft (Note [Verifying a draft] in core/verify.h).
void verify_cpu(const VerifyParams& v, c10::ScalarType dtype, const std::optional<at::Generator>& generator,
                bool from_generator);

// Writes the warped logits of every row (removed tokens at -inf) into out,
// a contiguous float [rows, vocab].
void warped_logits_cpu(SampleParams p, c10::ScalarType dtype, float* out);

// The host's exception tables of Note [Processing in the pass] (core/adjust.h),
// pointed to by p.proc; nothing when p has no history or bias.
struct ExceptionTables {
  std::vector<ExceptionSlot> slots;
  std::vector<uint32_t> groups;
};
void build_exceptions_cpu(SampleParams& p, ExceptionTables& tables);

// syncfree.distributed's steps (Note [Vocab-parallel steps] in core/shard.h);
// the CUDA twins below.
void shard_rows_cpu(const ShardRowsCall& c);
void shard_pass_cpu(ShardPassCall c, c10::ScalarType dtype);

#ifdef SYNCFREE_WITH_CUDA
struct RngArgs;  // cuda/block_race.cuh

// The draw of a call over `vocab` tokens (Note [Drawing from the generator]).
at::PhiloxCudaState draw_generator_cuda(const std::optional<at::Generator>& generator, c10::DeviceIndex device,
                                        int64_t vocab);

// The warpers' kept set of every row into keeps (device memory, [rows]);
// greedy rows get keep_all unless greedy_rows_too (syncfree.warp). With
// raced (a sampling call, [rows]), rows whose kept set the selection has
// compacted are also sampled there, with the call's noise (rng), and get
// raced[row] = 1; the sampling kernel skips them (Note [Selection passes on
// CUDA] in cuda/warpers_cuda.cu).
void select_and_sample_cuda(const SampleParams& p, c10::ScalarType dtype, c10::DeviceIndex device, RowKeep* keeps,
                            bool greedy_rows_too, const RngArgs* rng = nullptr, unsigned char* raced = nullptr);
// warped_logits_cpu's twin: the exception tables, the selection (greedy rows
// too) and the kept values.
void warped_logits_cuda(SampleParams p, c10::ScalarType dtype, c10::DeviceIndex device, float* out);
// Builds p.proc's exception tables on the device (a memset and one kernel) when
// p has history or bias; the returned memory must outlive the call's kernels.
c10::DataPtr build_exceptions_cuda(SampleParams& p, c10::DeviceIndex device);
// The logprob stage (Note [Logprob stage on CUDA] in cuda/process_cuda.cu)
// after the sampling kernels, which wrote p.norms.
void logprob_stage_cuda(const SampleParams& p, c10::ScalarType dtype, c10::DeviceIndex device);
void sample_cuda(SampleParams p, c10::ScalarType dtype, c10::DeviceIndex device,
                 const std::optional<at::Generator>& generator, bool from_generator);
void verify_cuda(const VerifyParams& v, c10::ScalarType dtype, c10::DeviceIndex device,
                 const std::optional<at::Generator>& generator, bool from_generator);

// syncfree.distributed on CUDA: out[0..1] = the (seed, position) a sampling
// call over `vocab` tokens would draw from the generator, which advances as
// for that call; and the steps.
void generator_state_cuda(const std::optional<at::Generator>& generator, c10::DeviceIndex device, int64_t vocab,
                          int64_t* out);
void shard_rows_cuda(const ShardRowsCall& c, c10::DeviceIndex device);
void shard_pass_cuda(ShardPassCall c, c10::ScalarType dtype, c10::DeviceIndex device);
#endif

}  // namespace syncfree
