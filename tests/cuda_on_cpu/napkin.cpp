// The CUDA warpers' napkin model on the host, for tests and benchmarks
// (napkin.py): this file alone, without torch, behind a C ABI for ctypes, so
// that neither syncfree._C nor the layer's module carries it.
#include <cstdint>

#include "cuda/plans.h"

extern "C" {

struct NapkinRow {
  int64_t full_reads;
  int64_t launches;
  const char* mode;
  int64_t candidates;
  int64_t capacity;
  int64_t fits;
};

// One row y of scaled logits (Note [Selection passes on CUDA]): what the plan of
// a call of `rows` rows on `sm_count` SMs reads and launches for it.
__attribute__((visibility("default"))) void syncfree_select_napkin(const float* y, int64_t vocab, int64_t top_k,
                                                                  double top_p, double min_p, double typical_p,
                                                                  int64_t rows, int64_t sm_count, NapkinRow* out) {
  const auto w = syncfree::clamp_warpers(top_k, float(top_p), float(min_p), float(typical_p), vocab);
  const auto c = syncfree::select_candidates(y, vocab, w);
  const int64_t cap = syncfree::plan_select(rows, vocab, int(sm_count)).candidates;
  const bool fits = c.mode == syncfree::kSelectCompact && c.count <= cap;
  const auto napkin = syncfree::napkin_select(w, fits);
  static const char* const modes[] = {"skip", "keep all", "top-p hist", "compact", "full row"};
  *out = {napkin.full_reads, napkin.launches, modes[int(c.mode)], c.count, cap, fits};
}

// Full reads of a node's row by verify's positions kernel (Note [A node's row on chip]).
__attribute__((visibility("default"))) double syncfree_positions_reads(int64_t vocab, int64_t element_bytes,
                                                                      int64_t shared_limit) {
  return syncfree::napkin_positions_reads(vocab, syncfree::plan_positions(vocab, element_bytes, shared_limit));
}

}  // extern "C"
