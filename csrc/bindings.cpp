// The Python module: build facts, syncfree.distributed's step list, and
// host-side test hooks. The ops themselves
// are reached through torch.ops.syncfree (ops.cpp, shard_ops.cpp).
#include <ATen/core/PhiloxRNGEngine.h>
#include <torch/python.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/philox.h"
#include "core/shard.h"

namespace {

// n words of syncfree's Philox stream from position pos (Note [syncfree RNG counter layout]).
std::vector<uint32_t> stream_words(uint64_t seed, uint64_t subsequence, uint64_t pos, int64_t n) {
  const syncfree::RowStream s{seed, subsequence, pos};
  std::vector<uint32_t> words;
  for (int64_t i = 0; i < n; ++i) words.push_back(syncfree::token_word(s, i));
  return words;
}

// The same from ATen's Philox4_32 (which matches curand_init(seed, subsequence, 4 * block)).
std::vector<uint32_t> aten_philox_words(uint64_t seed, uint64_t subsequence, uint64_t block, int64_t n) {
  at::Philox4_32 engine(seed, subsequence, block);
  std::vector<uint32_t> words;
  for (int64_t i = 0; i < n; ++i) words.push_back(engine());
  return words;
}

std::vector<std::pair<int32_t, std::optional<std::string>>> shard_steps(int32_t flags) {
  std::vector<std::pair<int32_t, std::optional<std::string>>> out;
  for (const auto& s : syncfree::shard_steps(flags)) {
    const char* names[] = {nullptr, "sum", "max", "gather"};
    const char* name = names[int(s.collective)];
    out.push_back({s.step, name ? std::optional<std::string>(name) : std::nullopt});
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "syncfree native extension";
  m.attr("torch_version") = SYNCFREE_TORCH_VERSION;
  m.attr("group_size") = syncfree::kGroup;
  m.def("shard_steps", &shard_steps,
        "syncfree.distributed's steps for a call's flags: (step, collective) pairs, collective one of "
        "'sum', 'max', 'gather' or None (Note [Vocab-parallel steps])");
  m.def("stream_words", &stream_words, "words of syncfree's Philox stream (test hook)");
  m.def("aten_philox_words", &aten_philox_words, "words of at::Philox4_32 (test hook)");
}
