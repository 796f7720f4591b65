// The Python module: build facts and syncfree.distributed's step list. The ops themselves
// are reached through torch.ops.syncfree (ops.cpp, shard_ops.cpp).
#include <torch/python.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/shard.h"

namespace {

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
}
