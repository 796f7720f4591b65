// The Python module: build facts, syncfree.distributed's step list and the
// CUDA warpers' napkin model. The ops themselves
// are reached through torch.ops.syncfree (ops.cpp, shard_ops.cpp).
#include <torch/python.h>

#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/shard.h"
#include "cuda/plans.h"
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

// The napkin model of the CUDA warpers for one row of scaled logits (Note
// [Selection passes on CUDA]): what the plan reads and launches for it.
pybind11::dict select_napkin(const at::Tensor& y, int64_t top_k, double top_p, double min_p, double typical_p,
                             int64_t rows, int64_t sm_count) {
  TORCH_CHECK(y.dim() == 1 && y.scalar_type() == at::kFloat && y.device().is_cpu(),
              "select_napkin: y must be a 1-D float32 CPU tensor of scaled logits");
  const at::Tensor row = y.contiguous();
  const int64_t vocab = row.numel();
  const auto w = syncfree::clamp_warpers(top_k, float(top_p), float(min_p), float(typical_p), vocab);
  const auto c = syncfree::select_candidates(row.data_ptr<float>(), vocab, w);
  const int64_t cap = syncfree::plan_select(rows, vocab, int(sm_count)).candidates;
  const bool fits = c.mode == syncfree::kSelectCompact && c.count <= cap;
  const auto napkin = syncfree::napkin_select(w, fits);
  const char* modes[] = {"skip", "keep all", "top-p hist", "compact", "full row"};
  pybind11::dict d;
  d["full_reads"] = napkin.full_reads;
  d["launches"] = napkin.launches;
  d["mode"] = modes[int(c.mode)];
  d["candidates"] = c.count;
  d["capacity"] = cap;
  d["fits"] = fits;
  return d;
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
  m.def("select_napkin", &select_napkin, pybind11::arg("y"), pybind11::arg("top_k"), pybind11::arg("top_p"),
        pybind11::arg("min_p"), pybind11::arg("typical_p"), pybind11::arg("rows"), pybind11::arg("sm_count"),
        "The CUDA warpers' napkin model for one row of scaled logits: full reads, launches, mode, candidates");
}
