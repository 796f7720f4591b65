// The Python module: build facts, the sampling fields and syncfree.distributed's step list. The ops
// themselves are reached through torch.ops.syncfree (ops.cpp, shard_ops.cpp).
#include <torch/python.h>

#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/shard.h"
#include "sampling_args.h"

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

// Note [One field list] in sampling_args.h: (name, kind, identity, group) in the ops' order; kind is
// "float", "int" (a number or a [B] tensor) or "tensor" (a tensor or None).
std::vector<pybind11::tuple> sampling_fields() {
  std::vector<pybind11::tuple> out;
#define SYNCFREE_ROW_FIELD(name, type, identity, group) \
  out.push_back(pybind11::make_tuple(#name, std::is_integral_v<type> ? "int" : "float", type(identity), #group));
#define SYNCFREE_LIST_FIELD(name) out.push_back(pybind11::make_tuple(#name, "tensor", pybind11::none(), "processing"));
  SYNCFREE_SAMPLING_FIELDS(SYNCFREE_ROW_FIELD, SYNCFREE_LIST_FIELD)
#undef SYNCFREE_ROW_FIELD
#undef SYNCFREE_LIST_FIELD
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "syncfree native extension";
  m.attr("torch_version") = SYNCFREE_TORCH_VERSION;
  m.attr("group_size") = syncfree::kGroup;
  m.def("sampling_fields", &sampling_fields,
        "The sampling parameters in the ops' order: (name, kind, identity, group) tuples (Note [One field list])");
  m.def("shard_steps", &shard_steps,
        "syncfree.distributed's steps for a call's flags: (step, collective) pairs, collective one of "
        "'sum', 'max', 'gather' or None (Note [Vocab-parallel steps])");
}
