// syncfree.distributed's steps on CUDA (Note [Vocab-parallel steps]): the
// per-row parts of core/shard.h one thread per row, and the local passes with
// a block per chunk of a row, a shared buffer and one global atomic per
// non-empty column. Integer adds and maxima: the same result in any order.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#include "../device_api.h"
#include "block_select.cuh"
#include "launch.h"

namespace syncfree {
namespace {

constexpr int kRowsPerBlock = 128;
constexpr int kPassThreads = 256;

__global__ void __launch_bounds__(kRowsPerBlock) syncfree_shard_rows_kernel(ShardRowsCall c) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x;
  if (row < c.rows) run_shard_row(c, row);
}

// The block's buffer: 64-bit sums as two 32-bit words (Note [64-bit sums in shared memory] in
// block_select.cuh); the maxima are 32-bit order keys, kept in the low words.
struct SharedSink {
  SharedCounts<kBins>* bins;
  __device__ void add(int column, uint64_t w) { shared_add(*bins, column, w); }
  __device__ void max(int column, uint32_t v) { atomicMax(&bins->lo[column], unsigned(v)); }
};

template <typename T>
__global__ void __launch_bounds__(kPassThreads) syncfree_shard_pass_kernel(ShardPassCall c) {
  __shared__ SharedCounts<kBins> bins;
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(c.input) + row * c.row_stride;
  const RowKeep keep = c.state.keeps[row];
  const ShardRow& r = c.state.rows[row];
  const RowProcess proc = row_process(c.proc, row);
  const int columns = shard_step_columns(c.step);
  if (step_kind(c.step) == kStepTokenLogit || step_kind(c.step) == kStepRawTokenLogit) {
    if (blockIdx.y == 0 && threadIdx.x == 0)
      c.out[row] = uint64_t(token_logit_entry(r, c.step, x, c.first_column, c.columns, proc));
    return;
  }
  if (top_step(c.step)) {  // every column's entry: out is [rows, c.columns]
    auto* entries = reinterpret_cast<int64_t*>(c.out) + row * c.columns;
    for (int64_t i = int64_t(blockIdx.y) * kPassThreads + threadIdx.x; i < c.columns;
         i += int64_t(gridDim.y) * kPassThreads)
      entries[i] = top_candidate(float(x[i]), i, c.step, keep, r, proc, c.first_column);
    return;
  }
  if (!shard_row_in(r, c.step)) return;  // the whole block: no barrier is skipped by some threads only
  for (int b = threadIdx.x; b < columns; b += kPassThreads) shared_set(bins, b, 0u);
  __syncthreads();
  const float spread = row_spread(keep, r);
  SharedSink sink{&bins};
  const auto tokens = [&](auto process) {  // std::bool_constant: the loop without lookups when false
    for (int64_t i = int64_t(blockIdx.y) * kPassThreads + threadIdx.x; i < c.columns;
         i += int64_t(gridDim.y) * kPassThreads)
      shard_token(keep, r, c.step, spread, shard_value<process()>(float(x[i]), i, r, proc), sink);
  };
  if (processes(proc)) {  // uniform over the block
    tokens(std::true_type{});
  } else {
    tokens(std::false_type{});
  }
  __syncthreads();
  const bool is_max = step_kind(c.step) == kStepRowMax;
  auto* out = reinterpret_cast<unsigned long long*>(c.out + row * columns);
  for (int b = threadIdx.x; b < columns; b += kPassThreads) {
    const unsigned long long v = shared_get(bins, b);
    if (v == 0u) continue;
    if (is_max) {
      atomicMax(out + b, v);
    } else {
      atomicAdd(out + b, v);
    }
  }
}

}  // namespace

void shard_rows_cuda(const ShardRowsCall& c, c10::DeviceIndex device) {
  if (c.rows == 0) return;
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  launch_kernel<syncfree_shard_rows_kernel>(dim3(unsigned(ceil_div(c.rows, kRowsPerBlock))), dim3(kRowsPerBlock), 0,
                                            stream, c);
}

void shard_pass_cuda(ShardPassCall c, c10::ScalarType dtype, c10::DeviceIndex device) {
  if (c.rows == 0 || c.columns == 0) return;
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  SampleParams p{};  // the exception tables of c.proc (Note [Processing on a shard])
  p.rows = c.rows;
  p.vocab = c.columns;
  p.proc = c.proc;
  const c10::DataPtr tables = build_exceptions_cuda(p, device);
  c.proc = p.proc;
  // About 8 elements a thread, at most 64 chunks a row.
  const bool one_token = step_kind(c.step) == kStepTokenLogit || step_kind(c.step) == kStepRawTokenLogit;
  const unsigned chunks = one_token
                              ? 1u
                              : unsigned(std::min<int64_t>(ceil_div(c.columns, 8 * kPassThreads), 64));
  const dim3 grid(unsigned(c.rows), chunks);
  dispatch_dtype(dtype, [&](auto tag) {
    launch_kernel<syncfree_shard_pass_kernel<decltype(tag)>>(grid, dim3(kPassThreads), 0, stream, c);
  });
}

}  // namespace syncfree
