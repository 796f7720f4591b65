// syncfree.distributed's steps on the CPU (Note [Vocab-parallel steps]): the
// per-row parts and the local passes of core/shard.h, row by row.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#include "../device_api.h"

namespace syncfree {
namespace {

// Plain adds and maxima into one row of a pass's buffer.
struct RowSink {
  uint64_t* out;
  void add(int column, uint64_t w) { out[column] += w; }
  void max(int column, uint64_t v) { out[column] = v > out[column] ? v : out[column]; }
};

template <typename T>
void pass_rows(const ShardPassCall& c) {  // c.proc: tables built
  const int columns = shard_step_columns(c.step);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(c.columns, 1));
  at::parallel_for(0, c.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* x = static_cast<const T*>(c.input) + row * c.row_stride;
      const RowKeep& keep = c.state.keeps[row];
      const ShardRow& r = c.state.rows[row];
      const RowProcess proc = row_process(c.proc, row);
      uint64_t* out = c.out + row * columns;
      if (step_kind(c.step) == kStepTokenLogit || step_kind(c.step) == kStepRawTokenLogit) {
        out[0] = uint64_t(token_logit_entry(r, c.step, x, c.first_column, c.columns, proc));
        continue;
      }
      if (top_step(c.step)) {  // every column's entry: out is [rows, c.columns]
        int64_t* entries = reinterpret_cast<int64_t*>(c.out) + row * c.columns;
        for (int64_t i = 0; i < c.columns; ++i)
          entries[i] = top_candidate(float(x[i]), i, c.step, keep, r, proc, c.first_column);
        continue;
      }
      if (!shard_row_in(r, c.step)) continue;
      const float spread = row_spread(keep, r);
      RowSink sink{out};
      const auto tokens = [&](auto process) {  // std::bool_constant: the loop without lookups when false
        for (int64_t i = 0; i < c.columns; ++i)
          shard_token(keep, r, c.step, spread, shard_value<process()>(float(x[i]), i, r, proc), sink);
      };
      if (processes(proc)) {
        tokens(std::true_type{});
      } else {
        tokens(std::false_type{});
      }
    }
  });
}

}  // namespace

void shard_rows_cpu(const ShardRowsCall& c) {
  for (int64_t row = 0; row < c.rows; ++row) run_shard_row(c, row);
}

void shard_pass_cpu(ShardPassCall c, c10::ScalarType dtype) {
  SampleParams p{};  // the exception tables of c.proc (Note [Processing on a shard])
  p.rows = c.rows;
  p.vocab = c.columns;
  p.proc = c.proc;
  ExceptionTables tables;
  build_exceptions_cpu(p, tables);
  c.proc = p.proc;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "syncfree_shard_pass_cpu",
                                  [&] { pass_rows<scalar_t>(c); });
}

}  // namespace syncfree
