// Vocab-parallel sampling (syncfree.distributed): every decision a rank takes
// between collectives, over one row of the shard protocol.
//
// Note [Vocab-parallel steps]
// ---------------------------
// A call runs the steps of shard_steps() in order. Each step is
//   local:      a pass over the rank's columns (or only its row state) that
//               writes a small per-row buffer (shard_step_columns() int64s);
//   collective: a sum, max or all-gather of that buffer over the ranks (or
//               none), run by syncfree.distributed;
//   merge:      shard_merge() folds the collective's result into the row's
//               ShardRow.
// A merge reads only values every rank holds after the collective, so every
// rank's ShardRows agree after every step, and the decisions themselves are
// the single-device ones: the radix selection of Note [Exact warper
// thresholds] with each pass's histogram summed over the ranks (integer
// masses, exact in any order), then the two-level race of Note [Two-level
// exponential race] over global groups of kGroup tokens, owned by the rank
// where they start (the next ranks' first columns complete a group that
// crosses a shard's end). The best (key, index) of a row is one packed int64
// (pack_candidate), so a max over ranks finds the best key and the lowest
// index among equal keys. The owner of the winning group races it token by
// token; one more max hands everyone the token.
//
// Note [Processing on a shard]
// ----------------------------
// The mask, the bias and the penalties act on each token alone, so a rank
// processes the columns it races and nothing more is exchanged for them.
// _shard_processing rewrites the call's lists into the coordinates of the
// rank's race columns (column j is global token base + j): a history or bias
// id inside them becomes j, any other id -1 (padding), and the mask's words
// are shifted by base (a multiple of kGroup, so 0 or 16 bits). The local
// passes, the race and the chosen token's logit then process with the
// single-device functions (process_logit, process_group), and every global
// token is processed once, by the rank that owns its group.
#pragma once

#include "params.h"

#include <type_traits>
#include <vector>

namespace syncfree {

enum class Collective : int32_t { kNone, kSum, kMax, kGather };

// Step kinds; a selection kind takes kSelectPasses steps (pass 0, 1, 2).
enum ShardStepKind : int32_t {
  kStepRowMax,        // max: the row max and the lowest finite value (order keys)
  kStepTopK,          // sum: count histograms of the order keys
  kStepTopP,          // sum: mass histograms of the order keys
  kStepMinP,          // none: min-p's floor
  kStepTypicalSums,   // sum: the kept mass and its gap terms (typical_center)
  kStepTypical,       // sum: mass histograms of the deviation keys
  kStepRace,          // max: the packed best candidate and raw-argmax candidate
  kStepResolve,       // max: the token of the winning group (its owner's)
  kStepTokenLogit,    // max: the chosen token's scaled logit (its owner's)
  kStepMass,          // all-gather: each rank's log-sum-exp and +inf count
  kStepRawTokenLogit, // max: the chosen token's raw logit (logprobs_mode "raw")
  kStepRawMass,       // all-gather: each rank's raw log-sum-exp and +inf count
  kStepTop,           // all-gather: each rank's best n packed (logprob, id) (Note [Top-n logprobs])
  kStepRawTop,        // all-gather: the same under the raw logits
};

constexpr int kSelectPasses = (32 + kDigitBits - 1) / kDigitBits;

// A step is kind * kStepStride + pass.
constexpr int32_t kStepStride = 4;
static_assert(kSelectPasses < kStepStride, "passes fit a step's stride");
SF_HD int32_t step_kind(int32_t step) { return step / kStepStride; }
SF_HD int32_t step_pass(int32_t step) { return step % kStepStride; }

// What a call does, as flags every rank must agree on (the collectives follow them).
enum ShardCallFlags : int32_t {
  kCallTemperatureTensor = 1 << 0,
  kCallAllGreedy = 1 << 1,
  kCallTopK = 1 << 2,
  kCallTopP = 1 << 3,
  kCallMinP = 1 << 4,
  kCallTypicalP = 1 << 5,
  kCallSeedTensor = 1 << 6,
  kCallSeed = 1 << 7,
  kCallLogprobs = 1 << 8,
  kCallProcessing = 1 << 9,  // agreed on, though it adds no collective (Note [Processing on a shard])
  kCallRawLogprobs = 1 << 10,
};
// return_top_logprobs, n <= kMaxTopLogprobs, in the flags' bits from kCallTopShift.
constexpr int32_t kCallTopShift = 11;
static_assert(kMaxTopLogprobs < 32, "n fits 5 bits");
SF_HD int32_t call_top_n(int32_t flags) { return (flags >> kCallTopShift) & 31; }
SF_HD bool top_step(int32_t step) { return step_kind(step) == kStepTop || step_kind(step) == kStepRawTop; }
SF_HD bool gathered_step(int32_t step) {
  return top_step(step) || step_kind(step) == kStepMass || step_kind(step) == kStepRawMass;
}
SF_HD bool raw_step(int32_t step) {
  const int32_t kind = step_kind(step);
  return kind == kStepRawTokenLogit || kind == kStepRawMass || kind == kStepRawTop;
}
constexpr int32_t kCallWarpers = kCallTopK | kCallTopP | kCallMinP | kCallTypicalP;

struct ShardStep {
  int32_t step;
  Collective collective;
};

// The steps of a call, in order (Note [Vocab-parallel steps]).
inline std::vector<ShardStep> shard_steps(int32_t flags) {
  std::vector<ShardStep> steps;
  const auto selection = [&](int32_t kind) {
    for (int32_t pass = 0; pass < kSelectPasses; ++pass) steps.push_back({kind * kStepStride + pass, Collective::kSum});
  };
  if (flags & kCallWarpers && !(flags & kCallAllGreedy)) {
    steps.push_back({kStepRowMax * kStepStride, Collective::kMax});
    if (flags & kCallTopK) selection(kStepTopK);
    if (flags & kCallTopP) selection(kStepTopP);
    if (flags & kCallMinP) steps.push_back({kStepMinP * kStepStride, Collective::kNone});
    if (flags & kCallTypicalP) {
      steps.push_back({kStepTypicalSums * kStepStride, Collective::kSum});
      selection(kStepTypical);
    }
  }
  steps.push_back({kStepRace * kStepStride, Collective::kMax});
  steps.push_back({kStepResolve * kStepStride, Collective::kMax});
  // The chosen token's logprob and the top n, against the row's norm (processed, or raw).
  const bool raw = (flags & kCallRawLogprobs) != 0;
  if (flags & kCallLogprobs)
    steps.push_back({(raw ? kStepRawTokenLogit : kStepTokenLogit) * kStepStride, Collective::kMax});
  if ((flags & kCallLogprobs) || call_top_n(flags) > 0)
    steps.push_back({(raw ? kStepRawMass : kStepMass) * kStepStride, Collective::kGather});
  if (call_top_n(flags) > 0) steps.push_back({(raw ? kStepRawTop : kStepTop) * kStepStride, Collective::kGather});
  return steps;
}

// int64 columns of a step's per-row buffer (a top step's: the call's n). Top-k's
// counts travel as int32 (V < 2^31): half the bytes.
SF_HD int shard_step_columns(int32_t step, int32_t top_n = 0) {
  switch (step_kind(step)) {
    case kStepTop:
    case kStepRawTop:
      return top_n;
    case kStepTopK:
    case kStepTopP:
    case kStepTypical:
      return 1 << digit_bits(step_pass(step) * kDigitBits);
    case kStepMinP:
      return 0;
    case kStepResolve:
    case kStepTokenLogit:
    case kStepRawTokenLogit:
      return 1;
    default:
      return 2;
  }
}
SF_HD bool shard_step_narrow(int32_t step) { return step_kind(step) == kStepTopK; }

// One row's state, identical on every rank after every merge.
struct ShardRow {
  Warpers w;              // clamped
  float inv_temperature;  // as set_temperature gives it
  bool greedy;
  bool selecting;         // some warper acts: not greedy, and a finite row max
  bool searching;         // the current selection has found a bin in every pass so far
  bool sampled;           // the token comes from the owner's in-group race
  int32_t shift;          // mass_shift of the whole vocabulary
  float m, lowest;        // the row max (+0 for -0) and its lowest finite value
  float spread, center;   // typical-p's (typical_spread, typical_center)
  SelectState sel;
  uint64_t target;
  // The race: this rank's own log-sum-exp and +inf count (local), then the
  // merged answer.
  LogSumExp mass;
  int32_t inf_count;
  int32_t overflowed;  // the token is the raw argmax of Note [Logits past the temperature's range]
  int32_t valid;       // as syncfree.sample's return_valid: false for a degenerate row
  int64_t mine;        // best global token (greedy, +inf) or group (sampled), or kNoIndex
  int64_t overflow;    // the raw argmax, or kNoIndex
  int64_t token;
  float token_y;   // the chosen token's scaled (or raw) logit
  float logprob;
  RowNorm norm;    // what the logprobs are measured against, merged (Note [Top-n logprobs])
  TopList top;     // the merged top n
};

static_assert(sizeof(ShardRow) % 8 == 0 && std::is_trivially_copyable_v<ShardRow>,
              "ShardRows sit 8-byte aligned in a byte tensor and are copied as plain bytes");

// A call's state is a byte tensor [rows, kShardStateRowBytes]: arrays of
// what the race reads (the kept sets, the noise streams, the temperatures:
// set once by _shard_begin), then the ShardRows, each array 16-byte aligned.
// Each row's bytes leave room for its entries and the alignments.
SF_HD int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }
constexpr int64_t kShardStateRowBytes =
    int64_t(sizeof(RowKeep) + sizeof(RowStream) + sizeof(float) + sizeof(ShardRow)) + 3 * 16;

struct ShardState {
  RowKeep* keeps;
  RowStream* streams;
  float* temperatures;
  ShardRow* rows;
};

SF_HD ShardState shard_state(void* base, int64_t rows) {
  char* b = static_cast<char*>(base);
  const int64_t streams = align16(rows * int64_t(sizeof(RowKeep)));
  const int64_t temperatures = streams + align16(rows * int64_t(sizeof(RowStream)));
  const int64_t shard_rows = temperatures + align16(rows * int64_t(sizeof(float)));
  return {reinterpret_cast<RowKeep*>(b), reinterpret_cast<RowStream*>(b + streams),
          reinterpret_cast<float*>(b + temperatures), reinterpret_cast<ShardRow*>(b + shard_rows)};
}

// A row's start: its clamped warpers (p.vocab: the whole vocabulary), its
// temperature and noise stream (p's seeds, or p.seed and p.pos0 as the call's
// generator draw set them), stored once for every step.
SF_HD void shard_begin(const SampleParams& p, int64_t row, const ShardState& s) {
  ShardRow& r = s.rows[row];
  r = ShardRow{};
  s.keeps[row] = keep_all();
  s.temperatures[row] = row_temperature(p, row);
  s.streams[row] = row_stream(p, row);
  r.w = row_warpers(p, row);
  RowRace race;
  set_temperature(race, s.temperatures[row]);
  r.inv_temperature = race.inv_temperature;
  r.greedy = race.greedy;
  r.selecting = !r.greedy && any_warper(r.w);
  r.shift = mass_shift(p.vocab);
  r.m = -kInf;
  r.lowest = kInf;
  r.mine = r.overflow = kNoIndex;
}

// Whether a row takes part in a step's local pass at all.
SF_HD bool shard_row_in(const ShardRow& r, int32_t step) {
  switch (step_kind(step)) {
    case kStepRowMax:
      return r.selecting;
    case kStepTopK:
      return r.selecting && r.w.top_k > 0 && (step_pass(step) == 0 || r.searching);
    case kStepTopP:
      return r.selecting && r.w.top_p < 1.0f && (step_pass(step) == 0 || r.searching);
    case kStepTypicalSums:
      return r.selecting && r.w.typical_p < 1.0f;
    case kStepTypical:
      return r.selecting && r.w.typical_p < 1.0f && (step_pass(step) == 0 || r.searching);
    default:
      return false;
  }
}

// typical-p's spread (typical_spread) once top-k, top-p and min-p have set the floor.
SF_HD float row_spread(const RowKeep& keep, const ShardRow& r) { return typical_spread(r.m, keep.min_y, r.lowest); }

SF_HD SelectState pass_state(const ShardRow& r, int32_t step) {
  return step_pass(step) == 0 ? SelectState{0u, 0, 0u} : r.sel;
}

// Token y's contribution to a selection step's buffer: sink.add(column, w)
// and sink.max(column, v) (unsigned, so an empty buffer of zeros is the identity).
// spread: row_spread, for kStepTypicalSums.
template <typename Sink>
SF_HD void shard_token(const RowKeep& keep, const ShardRow& r, int32_t step, float spread, float y, Sink& sink) {
  const int32_t kind = step_kind(step);
  if (kind == kStepRowMax) {
    sink.max(0, order_key(y));
    if (y != -kInf) sink.max(1, ~order_key(y));  // the lowest finite value
    return;
  }
  const SelectState s = pass_state(r, step);
  if (kind == kStepTopK) {
    const uint32_t key = order_key(y);
    if (y != -kInf && in_range(key, s)) sink.add(key_digit(key, s), 1u);
    return;
  }
  // The chain's earlier warpers set the floor (min-p's is raised after top-p's passes).
  if (!(y >= keep.min_y)) return;
  if (kind == kStepTypicalSums) {
    const float e = token_exp(y, r.m);
    const uint64_t w = fixed_mass(e, r.shift);
    if (w == 0u) return;
    sink.add(0, w);
    sink.add(1, fixed_mass(token_gap(y, r.m, e, spread), r.shift));
    return;
  }
  // The key first: after the first pass only the chosen bin's tokens need their mass (an exp).
  const uint32_t key = kind == kStepTopP ? order_key(y) : deviation_key(y, r.center);
  if (!in_range(key, s)) return;
  const uint64_t w = fixed_mass(token_exp(y, r.m), r.shift);
  if (w > 0u) sink.add(key_digit(key, s), w);
}

// A radix pass's merge: pick the bin from the summed histogram; after the
// last pass, the threshold.
SF_HD void merge_selection(RowKeep& keep, ShardRow& r, int32_t step, const int64_t* hist) {
  const int32_t kind = step_kind(step), pass = step_pass(step);
  if (pass == 0) {
    r.sel = SelectState{0u, 0, 0u};
    r.searching = shard_row_in(r, step);
    if (!r.searching) return;
    if (kind == kStepTopK) r.target = uint64_t(r.w.top_k);
    if (kind == kStepTopP) {
      uint64_t total = 0;
      for (int b = 0; b < shard_step_columns(step); ++b) total += uint64_t(hist[b]);
      r.target = mass_target(r.w.top_p, total);
    }
  }
  if (!r.searching) return;
  r.searching = pick_bin(reinterpret_cast<const uint64_t*>(hist), r.target, r.sel);
  if (!r.searching || pass + 1 < kSelectPasses) return;
  if (kind == kStepTypical) {
    keep.center = r.center;
    keep.max_dev = key_value(~r.sel.prefix);
  } else {
    raise_floor(keep, key_value(r.sel.prefix));
  }
}

// A max of keys where 0 means none (the buffers start at 0).
SF_HD float max_key_value(int64_t key, float none) { return key == 0 ? none : key_value(uint32_t(key)); }

// The race's candidates as one int64 each: (order key << 31) | (kNoIndex -
// index), so that the max over ranks has the best key and, among equal keys,
// the lowest index.
SF_HD int64_t pack_candidate(float key, int64_t index) {
  return (int64_t(order_key(key)) << 31) | (int64_t(kNoIndex) - index);
}
SF_HD int64_t packed_index(int64_t packed) { return int64_t(kNoIndex) - (packed & kNoIndex); }
SF_HD float packed_key(int64_t packed) { return key_value(uint32_t(packed >> 31)); }

// The race step's local part: this rank's partial (local indices, base the
// global index of its column 0) as two packed candidates. Greedy rows race
// tokens, sampled rows groups; +inf logits win outright at their first token.
SF_HD void race_candidates(ShardRow& r, const ShardPartial& part, int64_t base, int64_t* out) {
  float key = part.race.best.key;
  int64_t index = part.race.best.index == kNoIndex
                      ? int64_t(kNoIndex)
                      : part.race.best.index + (r.greedy ? base : base / kGroup);
  if (part.race.infs.count > 0) {
    key = kInf;
    index = part.race.infs.first + base;
  }
  const int64_t over = part.overflow.index == kNoIndex ? int64_t(kNoIndex) : part.overflow.index + base;
  out[0] = pack_candidate(key, index);
  out[1] = pack_candidate(part.overflow.key, over);
  r.mass = part.race.mass;
  r.inf_count = part.race.infs.count;
}

// The resolve step's local part: the local group this rank races token by
// token (-1: not here), for a shard whose columns start at global index base
// (a multiple of kGroup) and are `columns` wide.
SF_HD int64_t resolve_group(const ShardRow& r, int64_t base, int64_t columns) {
  const int64_t group = r.mine - base / kGroup;
  return r.sampled && group >= 0 && group * kGroup < columns ? group : -1;
}

// Folds a step's collective result (`width` int64s; for the gathered steps
// `ranks` of them, `rows` rows apart) into row state.
SF_HD void shard_merge(RowKeep& keep, ShardRow& r, int32_t step, const int64_t* v, int64_t width, int64_t ranks,
                       int64_t rows) {
  switch (step_kind(step)) {
    case kStepRowMax:
      r.m = max_key_value(v[0], -kInf) + 0.0f;
      r.lowest = v[1] == 0 ? kInf : key_value(~uint32_t(v[1]));
      // +inf wins before any warper; an all-masked row is degenerate.
      r.selecting = r.selecting && r.m < kInf && r.m > -kInf;
      break;
    case kStepTopK:
    case kStepTopP:
    case kStepTypical:
      merge_selection(keep, r, step, v);
      break;
    case kStepMinP:
      if (r.selecting && r.w.min_p > 0.0f) raise_floor(keep, min_p_floor(r.m, r.w.min_p));
      break;
    case kStepTypicalSums:
      if (r.selecting && r.w.typical_p < 1.0f) {
        const uint64_t total = uint64_t(v[0]);
        r.spread = row_spread(keep, r);
        r.center = typical_center(r.m, r.spread, uint64_t(v[1]), total);
        r.target = mass_target(r.w.typical_p, total);
      }
      break;
    case kStepRace:
      r.mine = packed_index(v[0]);
      r.overflow = packed_index(v[1]);
      r.sampled = !r.greedy && packed_key(v[0]) != kInf && r.mine != kNoIndex;
      break;
    case kStepResolve: {
      // v[0]: the owner's global token, or -1 (Note [A winning group with no winner]).
      int64_t token = r.sampled ? v[0] : r.mine;
      const bool found = r.mine != kNoIndex && token >= 0;
      r.overflowed = r.mine == kNoIndex && r.overflow != kNoIndex;
      r.valid = found || r.overflowed;
      r.token = r.overflowed ? r.overflow : found ? token : 0;
      break;
    }
    case kStepTokenLogit:
    case kStepRawTokenLogit:
      r.token_y = max_key_value(v[0], -kInf);
      break;
    case kStepMass:
    case kStepRawMass: {
      LogSumExp mass = no_mass();
      int64_t infs = 0;
      for (int64_t k = 0; k < ranks; ++k) {  // in rank order: every rank rounds alike
        const int64_t* g = v + k * rows * width;
        mass = merge_mass(mass, {bits_float(uint32_t(g[0])), bits_float(uint32_t(uint64_t(g[0]) >> 32))});
        infs += g[1];
      }
      const Infinities counted{kNoIndex, int32_t(infs)};
      if (step_kind(step) == kStepMass) {  // the race's norm, with its point mass
        r.norm = {mass, counted, r.overflowed ? int32_t(r.token) : -1};
      } else {  // a degenerate row has no raw logprobs either
        r.norm = r.valid ? RowNorm{mass, counted, -1} : empty_norm();
      }
      r.logprob = r.valid ? token_logprob(r.token_y, r.token, r.norm) : -kInf;
      break;
    }
    case kStepTop:
    case kStepRawTop:
      r.top = empty_top(int(width));
      for (int64_t k = 0; k < ranks; ++k) {
        const int64_t* g = v + k * rows * width;
        for (int64_t j = 0; j < width; ++j)  // 0: a shard narrower than n had no more
          if (g[j] != 0) top_insert(r.top, TopEntry{uint32_t(g[j] >> 31), int32_t(packed_index(g[j]))});
      }
      break;
    default:
      break;
  }
}

// kStepMass's (kStepRawMass's) local part: this rank's log-sum-exp (bits of max, then sum) and +inf count.
SF_HD void mass_entry(const LogSumExp& mass, int32_t inf_count, int64_t* out) {
  out[0] = int64_t(uint64_t(float_bits(mass.max)) | (uint64_t(float_bits(mass.sum)) << 32));
  out[1] = inf_count;
}


// A local pass's value of column i: processed (proc in the columns' own
// coordinates: Note [Processing on a shard]), then scaled, as the race reads it.
// kProcess false: a call without processing, whose lookups compile away.
template <bool kProcess = true>
SF_HD float shard_value(float x, int64_t i, const ShardRow& r, const RowProcess& proc) {
  return scaled_logit(kProcess ? process_logit(x, i, proc) : x, r.inv_temperature);
}

// kStepTokenLogit's (kStepRawTokenLogit's) local part: the order key of the
// chosen token's processed, scaled (raw) logit where this rank owns it
// (columns [first_column, first_column + columns) of its race columns), else 0 (none).
template <typename T>
SF_HD int64_t token_logit_entry(const ShardRow& r, int32_t step, const T* row, int64_t first_column,
                                int64_t columns, const RowProcess& proc) {
  const int64_t column = r.token - first_column;
  if (column < 0 || column >= columns) return 0;
  const float x = float(row[column]);
  return int64_t(order_key(raw_step(step) ? raw_value(x) : shard_value(x, column, r, proc)));
}

// A top step's local entry for column i (global id first_column + i): its
// logprob under the merged norm and its id, packed as the race's candidates
// are, so the best n of every rank's best n are the row's top n. Values: the
// race's (processed, scaled, kept) or, for kStepRawTop, the raw logits.
SF_HD int64_t top_candidate(float x, int64_t i, int32_t step, const RowKeep& keep, const ShardRow& r,
                            const RowProcess& proc, int64_t first_column) {
  const float y = raw_step(step) ? raw_value(x) : apply_keep(shard_value(x, i, r, proc), keep);
  return pack_candidate(token_logprob(y, first_column + i, r.norm), first_column + i);
}

// The per-row parts of the steps, as one call over every row (CPU loop or
// one CUDA thread per row: run_shard_row).
enum class ShardRowsKind : int32_t {
  kBegin,           // params -> state
  kMerge,           // in (the collective's result, in_width per row; kStepMass: ranks of them) -> state
  kRaceCandidates,  // partials (null: the shard owns no group) -> out [rows, 2], state
  kResolveGroups,   // state -> out [rows]: the local group to race, or -1
  kResolveTokens,   // in [rows] local tokens -> out [rows] global tokens, or -1
  kMassEntries,     // state -> out [rows, 2]
  kRawMassEntries,  // partials (null: the shard owns no group) of the raw logits -> out [rows, 2]
  kFinish,          // state -> out [rows] tokens (stride out_stride), logprobs and valid [rows], top_ids and
                    // top_logprobs [rows, top_n] (each may be null)
};

struct ShardRowsCall {
  ShardRowsKind kind;
  int32_t step;
  int64_t rows;
  ShardState state;
  SampleParams params;
  const int64_t* rng_state;  // kBegin: the generator draw (seed, position) in the device's memory, or null
  const int64_t* in;
  int64_t in_width, ranks;
  const ShardPartial* partials;
  int64_t base;     // global index of the extended shard's column 0
  int64_t columns;  // the extended shard's width
  int64_t* out;
  int64_t out_stride;  // kFinish: the tokens' stride (out=)
  float* logprobs;
  bool* valid;
  int64_t* top_ids;
  float* top_logprobs;
  int32_t top_n;
};

SF_HD void run_shard_row(const ShardRowsCall& c, int64_t row) {
  RowKeep& keep = c.state.keeps[row];
  ShardRow& r = c.state.rows[row];
  switch (c.kind) {
    case ShardRowsKind::kBegin: {
      SampleParams p = c.params;
      if (c.rng_state != nullptr) {
        p.seed = uint64_t(c.rng_state[0]);
        p.pos0 = uint64_t(c.rng_state[1]);
      }
      shard_begin(p, row, c.state);
      break;
    }
    case ShardRowsKind::kMerge:
      shard_merge(keep, r, c.step, c.in + row * c.in_width, c.in_width, c.ranks, c.rows);
      break;
    case ShardRowsKind::kRaceCandidates:
      race_candidates(r, c.partials != nullptr ? c.partials[row] : ShardPartial{empty_partial(), no_best()}, c.base,
                      c.out + row * 2);
      break;
    case ShardRowsKind::kResolveGroups:
      c.out[row] = resolve_group(r, c.base, c.columns);
      break;
    case ShardRowsKind::kResolveTokens:
      c.out[row] = c.in[row] >= 0 ? c.in[row] + c.base : -1;
      break;
    case ShardRowsKind::kMassEntries:
      mass_entry(r.mass, r.inf_count, c.out + row * 2);
      break;
    case ShardRowsKind::kRawMassEntries: {
      const RacePartial raw = c.partials != nullptr ? c.partials[row].race : empty_partial();
      mass_entry(raw.mass, raw.infs.count, c.out + row * 2);
      break;
    }
    case ShardRowsKind::kFinish:
      c.out[row * c.out_stride] = r.token;
      if (c.logprobs != nullptr) c.logprobs[row] = r.logprob;
      if (c.valid != nullptr) c.valid[row] = r.valid != 0;
      for (int j = 0; j < c.top_n; ++j) {
        c.top_ids[row * c.top_n + j] = r.top.e[j].index;
        c.top_logprobs[row * c.top_n + j] = key_value(r.top.e[j].key);
      }
      break;
  }
}

// A step's local pass over the rank's columns (row max, histograms, typical
// sums, the chosen token's logit), into out (zeroed, [rows,
// shard_step_columns(step)], unsigned adds and maxima).
struct ShardPassCall {
  int32_t step;
  ShardState state;
  const void* input;  // the race columns [rows, columns], last dim contiguous
  int64_t rows, columns, row_stride;
  int64_t first_column;  // kStepTokenLogit: the global index of column 0
  uint64_t* out;
  Processing proc;  // in the columns' coordinates; its tables built by shard_pass_cpu/_cuda
};

}  // namespace syncfree
