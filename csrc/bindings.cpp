// The Python module: build facts and host-side test hooks. The ops themselves
// are reached through torch.ops.syncfree (ops.cpp).
#include <ATen/core/PhiloxRNGEngine.h>
#include <torch/python.h>

#include <vector>

#include "core/race.h"
#include "core/philox.h"

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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "syncfree native extension";
  m.attr("built_with_cuda") =
#ifdef SYNCFREE_WITH_CUDA
      true;
#else
      false;
#endif
  m.attr("torch_version") = SYNCFREE_TORCH_VERSION;
  m.attr("group_size") = syncfree::kGroup;
  m.def("is_greedy_temperature", [](double t) { return syncfree::is_greedy_temperature(float(t)); },
        "whether the kernels treat this temperature as greedy (a float64 that rounds to 0 in float32 is 0)");
  m.def("stream_words", &stream_words, "words of syncfree's Philox stream (test hook)");
  m.def("aten_philox_words", &aten_philox_words, "words of at::Philox4_32 (test hook)");
}
