// The Python face of the CPU execution layer: settings, the resource report,
// the launch log, memory, graphs and generators. The ops themselves are
// the op files (csrc/*.cpp), registered as torch.ops.syncfree_emulated in this build.
#include "runtime.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/PhiloxRNGEngine.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <torch/python.h>

#include "core/philox.h"
#include "cuda/plans.h"

namespace py = pybind11;

namespace {

// A recorded capture; destroying it frees what the graph's pool kept.
struct Graph {
  cuda_on_cpu::GraphHandle handle = nullptr;
  bool recording = false;
  ~Graph() {
    if (handle != nullptr && !recording) cuda_on_cpu::destroy_graph(handle);
  }
};

}  // namespace

PYBIND11_MODULE(_cuda_on_cpu, m) {
  using namespace cuda_on_cpu;
  m.doc() = "syncfree's CUDA kernels on the CPU (tests/cuda_on_cpu)";
  m.def("configure", [](std::optional<int> sm_count, std::optional<int> yield_one_in,
                        std::optional<bool> require_resources, std::optional<int> shared_opt_in) {
    if (sm_count) settings.sm_count = *sm_count;
    if (yield_one_in) settings.yield_one_in = *yield_one_in;
    if (require_resources) settings.require_resources = *require_resources;
    if (shared_opt_in) settings.shared_opt_in = *shared_opt_in;
  }, py::arg("sm_count") = py::none(), py::arg("yield_one_in") = py::none(),
     py::arg("require_resources") = py::none(), py::arg("shared_opt_in") = py::none());
  m.def("begin_schedule", &begin_schedule, "seeds block order, thread interleaving and garbage");
  m.def("set_kernel_resources", [](const std::map<std::string, std::tuple<int, int, int>>& table) {
    kernel_resources.clear();
    for (const auto& [name, r] : table)
      kernel_resources[normalize_kernel_name(name)] = {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
  }, "kernel name -> (registers, static shared bytes, max threads from __launch_bounds__ or 0)");
  m.def("normalize_kernel_name", &normalize_kernel_name);
  m.def("kernel_resources", [] {
    std::map<std::string, std::tuple<int, int, int>> table;
    for (const auto& [name, r] : kernel_resources) table[name] = {r.registers, r.static_shared, r.max_threads};
    return table;
  }, "the loaded nvcc report: name -> (registers, static shared bytes, max threads)");
  m.def("launches", [] {
    py::list out;
    for (const LaunchRecord& r : launch_log)
      out.append(py::dict(py::arg("kernel") = r.kernel, py::arg("grid") = py::make_tuple(r.grid_x, r.grid_y, r.grid_z),
                          py::arg("threads") = r.threads, py::arg("dynamic_shared") = r.dynamic_shared,
                          py::arg("captured") = r.captured));
    return out;
  });
  m.def("clear_launches", [] { launch_log.clear(); });
  m.def("garbage_host_tensors", &garbage_host_tensors, "fill fresh CPU tensors with garbage (while emulating)");
  m.def("live_allocations", [] {
    py::list out;
    for (const auto& [p, bytes] : live_allocations())
      out.append(py::bytes(static_cast<const char*>(p), bytes));
    return out;
  }, "contents of the caching allocator's live blocks outside graphs");
  py::class_<Graph>(m, "Graph")
      .def(py::init<>())
      .def("capture_begin", [](Graph& g) {
        TORCH_CHECK(g.handle == nullptr, "cuda_on_cpu: this graph was captured already");
        g.handle = capture_begin();
        g.recording = true;
      })
      .def("capture_end", [](Graph& g) {
        capture_end(g.handle);
        g.recording = false;
      })
      .def("replay", [](Graph& g) {
        TORCH_CHECK(g.handle != nullptr && !g.recording, "cuda_on_cpu: replay of a graph not captured");
        replay(g.handle);
      });
  m.def("generator_state", [](const std::optional<at::Generator>& gen) {
    at::CUDAGeneratorImpl* g = emulated_generator(gen.has_value() ? *gen : at::detail::getDefaultCPUGenerator());
    return std::make_tuple(g->seed, g->offset);
  }, py::arg("generator") = py::none(), "(seed, offset) of the CUDA generator a torch.Generator stands for");
  m.def("forget_generators", &forget_generators);
  // n words of syncfree's Philox stream from position pos (Note [syncfree RNG counter layout]),
  // and of ATen's Philox4_32 (which matches curand_init(seed, subsequence, 4 * block)).
  m.def("stream_words", [](uint64_t seed, uint64_t subsequence, uint64_t pos, int64_t n) {
    const syncfree::RowStream s{seed, subsequence, pos};
    std::vector<uint32_t> words;
    for (int64_t i = 0; i < n; ++i) words.push_back(syncfree::token_word(s, i));
    return words;
  });
  m.def("aten_philox_words", [](uint64_t seed, uint64_t subsequence, uint64_t block, int64_t n) {
    at::Philox4_32 engine(seed, subsequence, block);
    std::vector<uint32_t> words;
    for (int64_t i = 0; i < n; ++i) words.push_back(engine());
    return words;
  });
  m.def("plan_positions", [](int64_t vocab, int64_t element_bytes, int64_t shared_limit) {
    const syncfree::PositionsPlan plan = syncfree::plan_positions(vocab, element_bytes, shared_limit);
    return py::dict(py::arg("kept_groups") = plan.kept_groups, py::arg("shared_bytes") = plan.shared_bytes);
  });
  m.def("plan_sample", [](int64_t rows, int64_t vocab, int sm_count) {
    const syncfree::SamplePlan plan = syncfree::plan_sample(rows, vocab, sm_count);
    return py::dict(py::arg("splits") = plan.split.splits, py::arg("chunk") = plan.split.chunk,
                    py::arg("blocks") = plan.blocks, py::arg("partial_rows") = plan.partial_rows);
  });
}
