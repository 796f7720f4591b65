// The CUDA sampler: one launch, one pass over the input, no host sync.
//
// Grid: one block per (row, chunk). A large vocabulary at small batch is cut
// into chunks (RowSplit) so that many SMs share a row; the last block of a row
// to finish (a ticket counter) merges the row's partials and writes the
// token. Each thread takes whole groups of kGroup tokens (16-byte loads when
// the row is aligned) and runs them through visit_group, the same code as the
// CPU path (See Note [Two-level exponential race]).
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <nvtx3/nvToolsExt.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "../device_api.h"
#include "block_race.cuh"
#include "launch.h"
#include "plans.h"

namespace syncfree {
namespace {

constexpr int kThreads = kSampleThreads;  // plans.h

struct KernelArgs {
  SampleParams p;
  RowSplit split;
  RacePartial* partials;  // [rows, splits] when split.splits > 1
  unsigned* tickets;      // [rows], zero at launch (Note [Ticket counters])
  RngArgs rng;
  const unsigned char* raced;  // [rows] or null: rows the selection kernel already answered
};

// Partials written by other blocks: read through L2 (never a stale L1 line).
__device__ __forceinline__ RacePartial load_partial(const RacePartial* src) {
  static_assert(sizeof(RacePartial) == 6 * sizeof(int), "RacePartial layout");
  int words[6];
  const int* w = reinterpret_cast<const int*>(src);
#pragma unroll
  for (int i = 0; i < 6; ++i) words[i] = __ldcg(w + i);
  RacePartial p;
  memcpy(&p, words, sizeof p);
  return p;
}

template <typename T, bool kProbs, bool kVec, bool kProcess>
__global__ void __launch_bounds__(kThreads, blocks_per_sm(kProcess)) syncfree_sample_kernel(KernelArgs a) {
  const int32_t splits = a.split.splits;
  const int64_t row = blockIdx.x / splits;
  const int32_t split = blockIdx.x % splits;
  if (a.raced != nullptr && a.raced[row]) return;  // every block of the row leaves: no ticket taken
  SampleParams p = a.p;
  take_rng(p, a.rng);
  const RowRace r = kProcess ? row_race(p, row) : without_processing(row_race(p, row));
  const T* x = static_cast<const T*>(p.input) + row * p.row_stride;

  const ChunkGroups cg = chunk_groups(a.split, split);
  const int64_t full_groups = p.vocab / kGroup;
  RacePartial acc = empty_partial();
  float v[kGroup];
  for (int64_t q = threadIdx.x; q < cg.groups; q += kThreads) {
    const int64_t g = cg.first_group + q;
    if (kVec && g < full_groups) {
      load_group_vec(x, g, kProbs, r, v);
    } else {
      load_group_scalar(x, p.vocab, g, kProbs, r, v);
    }
    visit_group<kProbs>(acc, v, int32_t(g * kGroup), r);
  }
  acc = block_merge<kThreads>(acc);

  if (splits > 1) {
    // The last block of the row to arrive merges every chunk's partial.
    __shared__ bool last;
    if (threadIdx.x == 0) {
      a.partials[row * splits + split] = acc;
      __threadfence();
      last = atomicAdd(a.tickets + row, 1u) == unsigned(splits - 1);
    }
    __syncthreads();
    if (!last) return;
    if (threadIdx.x == 0) a.tickets[row] = 0;  // ready for the next call (Note [Ticket counters])
    __threadfence();
    acc = threadIdx.x < splits ? load_partial(a.partials + row * splits + threadIdx.x) : empty_partial();
    acc = block_merge<kThreads>(acc);
  }
  if (p.shard.partials_out != nullptr) {  // a shard: the row's partial is the answer
    if (threadIdx.x < 32) {
      acc = broadcast_lane0(acc);
      const Best overflow = !kProbs && degenerate(acc) && may_overflow(r) ? raw_argmax_warp(x, p.vocab, r.proc) : no_best();
      if (threadIdx.x == 0) p.shard.partials_out[row] = {acc, overflow};
    }
  } else if (threadIdx.x < 32) {
    finish_row_warp<T, kProbs>(p, row, r, x, acc);
  }
}

// Shard calls with resolve_groups (syncfree.distributed): a warp per row
// races the row's given group token by token (processed: Note [Processing on
// a shard]) and writes the local token, or -1 (shard_resolve_token).
constexpr int kResolveRowsPerBlock = 4;

template <typename T, bool kProbs, bool kProcess>
__global__ void __launch_bounds__(32 * kResolveRowsPerBlock) syncfree_resolve_group_kernel(KernelArgs a) {
  const int64_t row = int64_t(blockIdx.x) * kResolveRowsPerBlock + threadIdx.x / 32;
  if (row >= a.p.rows) return;  // whole warps leave together
  SampleParams p = a.p;
  take_rng(p, a.rng);
  const int64_t group = p.shard.resolve_groups[row];
  int64_t token = -1;
  if (group >= 0) {
    const RowRace r = kProcess ? row_race(p, row) : without_processing(row_race(p, row));
    float y;
    token = shard_resolve_token(
        race_group_warp<T, kProbs>(p, r, static_cast<const T*>(p.input) + row * p.row_stride, group, &y).index);
  }
  if (threadIdx.x % 32 == 0) p.tokens[row * p.tokens_stride] = token;
}

// ---------------------------------------------------------------------------
// Launcher


// Note [Ticket counters]
// ----------------------
// The merge of a split row needs a per-row counter that starts at 0. Eager
// calls use one persistent buffer per (device, stream) — every device's
// default stream has the same handle — which the merging block resets
// to 0 when it is done: kernels on one stream never overlap, so the next call
// finds zeros, and a call costs one kernel launch and no memset. A call being
// captured into a CUDA graph instead gets its own buffer, zeroed by a memset
// node inside the graph, since a graph may be replayed on any stream,
// concurrently with eager calls. At most 64 streams keep a buffer (the least
// recently used one is dropped). A buffer is found by the stream's handle: a
// stream destroyed with split-row calls still in flight and a new stream that
// reuses its handle would share counters, so destroy a stream only after its
// work is done (as torch's pool streams, never destroyed, always are).
unsigned* eager_tickets(c10::DeviceIndex device, cudaStream_t stream, int64_t rows) {
  struct Buffer {
    c10::DataPtr data;
    int64_t capacity = 0;
    uint64_t last_use = 0;
  };
  // At most this many streams keep a buffer; the least recently used gives its buffer back to
  // the caching allocator, which hands that block out again only in its stream's order.
  constexpr size_t kMaxStreams = 64;
  static std::mutex mutex;
  static uint64_t clock = 0;
  // Never destroyed: it must not free device memory after CUDA shuts down at exit.
  static auto* buffers = new std::map<std::pair<c10::DeviceIndex, cudaStream_t>, Buffer>();
  std::lock_guard<std::mutex> lock(mutex);
  if (buffers->size() >= kMaxStreams && buffers->find({device, stream}) == buffers->end()) {
    auto oldest = buffers->begin();
    for (auto it = buffers->begin(); it != buffers->end(); ++it)
      if (it->second.last_use < oldest->second.last_use) oldest = it;
    buffers->erase(oldest);
  }
  Buffer& buffer = (*buffers)[{device, stream}];
  buffer.last_use = ++clock;
  if (buffer.capacity < rows) {
    const int64_t capacity = std::max<int64_t>(rows, 1024);
    buffer.data = c10::cuda::CUDACachingAllocator::get()->allocate(size_t(capacity) * sizeof(unsigned));
    C10_CUDA_CHECK(cudaMemsetAsync(buffer.data.get(), 0, size_t(capacity) * sizeof(unsigned), stream));
    buffer.capacity = capacity;
  }
  return static_cast<unsigned*>(buffer.data.get());
}

struct NvtxRange {
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
};

template <typename T>
void launch(const KernelArgs& args, int64_t blocks, bool aligned, cudaStream_t stream) {
  if (args.p.shard.resolve_groups != nullptr) {
    const dim3 grid(unsigned(ceil_div(args.p.rows, kResolveRowsPerBlock))), block(32 * kResolveRowsPerBlock);
    if (args.p.probs) {
      launch_kernel<syncfree_resolve_group_kernel<T, true, false>>(grid, block, 0, stream, args);
    } else if (has_processing(args.p)) {
      launch_kernel<syncfree_resolve_group_kernel<T, false, true>>(grid, block, 0, stream, args);
    } else {
      launch_kernel<syncfree_resolve_group_kernel<T, false, false>>(grid, block, 0, stream, args);
    }
    return;
  }
  const dim3 grid(static_cast<unsigned>(blocks)), block(kThreads);
  if (args.p.probs) {
    if (aligned) {
      launch_kernel<syncfree_sample_kernel<T, true, true, false>>(grid, block, 0, stream, args);
    } else {
      launch_kernel<syncfree_sample_kernel<T, true, false, false>>(grid, block, 0, stream, args);
    }
  } else if (has_processing(args.p)) {
    if (aligned) {
      launch_kernel<syncfree_sample_kernel<T, false, true, true>>(grid, block, 0, stream, args);
    } else {
      launch_kernel<syncfree_sample_kernel<T, false, false, true>>(grid, block, 0, stream, args);
    }
  } else {
    if (aligned) {
      launch_kernel<syncfree_sample_kernel<T, false, true, false>>(grid, block, 0, stream, args);
    } else {
      launch_kernel<syncfree_sample_kernel<T, false, false, false>>(grid, block, 0, stream, args);
    }
  }
}

}  // namespace

at::PhiloxCudaState draw_generator_cuda(const std::optional<at::Generator>& generator, c10::DeviceIndex device,
                                        int64_t vocab) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(device));
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->philox_cuda_state(uint64_t(ceil_div(vocab, 4) * 4));  // Note [Drawing from the generator]
}

int sm_count(c10::DeviceIndex device) {
  static std::mutex mutex;
  static std::vector<int> counts(size_t(c10::cuda::device_count()), 0);
  std::lock_guard<std::mutex> lock(mutex);
  int& count = counts.at(size_t(device));
  if (count == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

void sample_cuda(SampleParams p, c10::ScalarType dtype, c10::DeviceIndex device,
                 const std::optional<at::Generator>& generator, bool from_generator) {
  NvtxRange range(p.probs ? "syncfree::sample_probs" : "syncfree::sample");
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  const c10::DataPtr tables = build_exceptions_cuda(p, device);  // Note [Processing in the pass]
  c10::DataPtr norms;
  if (logprob_stage(p)) {
    norms = c10::cuda::CUDACachingAllocator::get()->allocate(size_t(p.rows) * sizeof(RowNorm));
    p.norms = static_cast<RowNorm*>(norms.get());
  }

  KernelArgs args{};
  args.p = p;
  args.rng.from_generator = from_generator;
  const SamplePlan plan = plan_sample(p.rows, p.vocab, sm_count(device), has_processing(p) && !p.probs);
  args.split = plan.split;
  TORCH_CHECK(plan.blocks <= int64_t(INT32_MAX), "syncfree: batch of ", p.rows, " rows is too large for one launch");
  if (from_generator) args.rng.philox = draw_generator_cuda(generator, device, p.vocab);

  // Warpers: a selection kernel writes each row's kept set first (Note
  // [Exact warper thresholds]); identity warpers keep the single launch.
  // Rows whose kept set was compacted are sampled there too (raced).
  c10::DataPtr keeps;
  if (p.warped && !p.probs) {
    const size_t keep_bytes = size_t(p.rows) * sizeof(RowKeep);
    keeps = c10::cuda::CUDACachingAllocator::get()->allocate(keep_bytes + size_t(p.rows));
    auto* raced = static_cast<unsigned char*>(keeps.get()) + keep_bytes;
    const bool plain = p.shard.partials_out == nullptr && p.shard.resolve_groups == nullptr;
    select_and_sample_cuda(p, dtype, device, static_cast<RowKeep*>(keeps.get()), false, &args.rng,
                           plain ? raced : nullptr);
    args.p.keeps = static_cast<const RowKeep*>(keeps.get());
    args.raced = plain ? raced : nullptr;
  }

  c10::DataPtr workspace;
  if (plan.partial_rows > 0 && p.shard.resolve_groups == nullptr) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    const bool capturing = capture != cudaStreamCaptureStatusNone;
    const size_t partial_bytes = size_t(plan.partial_rows) * sizeof(RacePartial);
    const size_t ticket_bytes = capturing ? size_t(p.rows) * sizeof(unsigned) : 0;
    workspace = c10::cuda::CUDACachingAllocator::get()->allocate(partial_bytes + ticket_bytes);
    args.partials = static_cast<RacePartial*>(workspace.get());
    if (capturing) {
      args.tickets = reinterpret_cast<unsigned*>(static_cast<char*>(workspace.get()) + partial_bytes);
      C10_CUDA_CHECK(cudaMemsetAsync(args.tickets, 0, ticket_bytes, stream));
    } else {
      args.tickets = eager_tickets(device, stream, p.rows);
    }
  }

  const size_t elem = dtype == at::kFloat ? 4 : 2;
  const bool aligned = reinterpret_cast<uintptr_t>(p.input) % 16 == 0 && (p.row_stride * elem) % 16 == 0;
  dispatch_dtype(dtype, [&](auto tag) { launch<decltype(tag)>(args, plan.blocks, aligned, stream); });
  if (logprob_stage(p)) logprob_stage_cuda(args.p, dtype, device);  // Note [Logprob stage on CUDA]
}

// syncfree.distributed draws from a CUDA generator once per call and hands
// the draw to every shard call: (seed, position) as a sampling call over
// `vocab` tokens would take them, written to out[0..1] on the device, so the
// draw is graph-safe and costs no sync.
__global__ void syncfree_generator_state_kernel(at::PhiloxCudaState philox, int64_t* out) {
  const auto seed_offset = at::cuda::philox::unpack(philox);
  out[0] = int64_t(std::get<0>(seed_offset));
  out[1] = int64_t(std::get<1>(seed_offset));
}

void generator_state_cuda(const std::optional<at::Generator>& generator, c10::DeviceIndex device, int64_t vocab,
                          int64_t* out) {
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  const at::PhiloxCudaState philox = draw_generator_cuda(generator, device, vocab);
  launch_kernel<syncfree_generator_state_kernel>(dim3(1), dim3(1), 0, stream, philox, out);
}

}  // namespace syncfree
