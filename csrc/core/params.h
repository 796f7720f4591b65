// The plain description of one sampling call that the op files hand to the CPU
// and CUDA implementations (raw pointers, no torch types).
#pragma once

#include "logprobs.h"
#include "select.h"
#include "tiling.h"

namespace syncfree {

// What a shard call (Note [Vocab-parallel steps] in shard.h) adds to a sampling call.
struct ShardCall {
  // Global index of token 0, a multiple of kGroup (See Note [syncfree RNG
  // counter layout]).
  int64_t index_base;
  // Set: each row's noise stream and temperature (the shard state's, set
  // once per call; base is index_base), instead of the call's seeds and
  // temperatures: no generator draw.
  const RowStream* streams;
  const float* temperatures;
  // Set: each row's merged partial is written here instead of a token.
  struct ShardPartial* partials_out;
  // Set: only group resolve_groups[row] is raced, token by token, and the
  // local token written (-1 for a row given -1).
  const int64_t* resolve_groups;
};

struct SampleParams {
  const void* input;   // [rows, vocab] logits or probabilities, last dim contiguous
  int64_t row_stride;  // in elements; any value, 0 included
  int64_t rows;
  int64_t vocab;
  bool probs;  // input holds non-negative weights, not logits
  // Rows per parameter row: row r takes the temperature, warpers, seed and
  // offset of row r / positions, its offset plus r % positions (the positions
  // of syncfree.verify_draft; 1 otherwise). See param_row.
  int64_t positions = 1;

  const float* temperatures;  // [rows] or null
  float temperature;          // used when temperatures is null

  // Warpers: a per-row tensor when the pointer is set, else the scalar
  // (clamped per row: See Note [Exact warper thresholds]). `warped`: some
  // warper may be active in some row.
  const int64_t* top_ks;
  int64_t top_k;
  const float* top_ps;
  float top_p;
  const float* min_ps;
  float min_p;
  const float* typical_ps;
  float typical_p;
  bool warped;
  const RowKeep* keeps;  // [rows] kept sets from the warpers, or null (nothing removed)

  // Noise (See Note [syncfree RNG counter layout]): per-row tensors when
  // seeds is non-null (offsets may be null: all 0); otherwise seed/pos0 for
  // every row, subsequence = row.
  const int64_t* seeds;
  const int64_t* offsets;
  uint64_t seed;
  uint64_t pos0;
  // A call on a shard of a wider row (syncfree.distributed); zero for a whole row.
  ShardCall shard;

  // Mask, bias and penalties (Note [Processing in the pass]); logits only.
  Processing proc;

  int64_t* tokens;  // [rows], stride tokens_stride
  int64_t tokens_stride;
  float* logprobs;  // [rows] or null
  bool* valid;      // [rows] or null
  // The logprob stage (Note [Top-n logprobs]): n > 0 writes each row's top n
  // ids and logprobs; raw_logprobs measures them, and the chosen token's, on
  // the unprocessed logits.
  int top_n;
  bool raw_logprobs;
  int64_t* top_ids;      // [rows, top_n]
  float* top_logprobs;   // [rows, top_n]
  int64_t* ranks;        // [rows] or null: the chosen token's rank in the same logprobs
  RowNorm* norms;        // CUDA: [rows], each row's RowNorm for the logprob stage, or null
};

// Whether a call needs the logprob stage after the race.
SF_HD bool logprob_stage(const SampleParams& p) {
  return p.top_n > 0 || p.ranks != nullptr || (p.raw_logprobs && p.logprobs != nullptr);
}

// What a shard call writes for a row: its merged race partial, and when that
// is degenerate while the row may overflow, the shard's raw argmax (local
// index; Note [Logits past the temperature's range]), else no_best().
struct ShardPartial {
  RacePartial race;
  Best overflow;
};

// The row whose parameters row `row` takes, and its position among that
// row's positions (SampleParams::positions).
SF_HD int64_t param_row(const SampleParams& p, int64_t row) { return p.positions > 1 ? row / p.positions : row; }
SF_HD int64_t position_of(const SampleParams& p, int64_t row) { return p.positions > 1 ? row % p.positions : 0; }

// The processing row of row `row` (Processing::per_position), and how many there are.
SF_HD int64_t process_row(const SampleParams& p, int64_t row) { return p.proc.per_position ? row : param_row(p, row); }
SF_HD int64_t process_rows(const SampleParams& p) { return p.proc.per_position ? p.rows : p.rows / p.positions; }

// Row `row`'s temperature as given (set_temperature reads it).
SF_HD float row_temperature(const SampleParams& p, int64_t row) {
  if (p.shard.temperatures != nullptr) return p.shard.temperatures[row];
  return p.temperatures != nullptr ? p.temperatures[param_row(p, row)] : p.temperature;
}

// Row `row`'s noise stream (Note [syncfree RNG counter layout]), base 0.
SF_HD RowStream row_stream(const SampleParams& p, int64_t row) {
  if (p.seeds != nullptr) {
    // Position j of a per-row seed draws as offset[row] + j (Note [Verifying a draft]).
    const int64_t pr = param_row(p, row);
    const uint64_t offset = p.offsets != nullptr ? uint64_t(p.offsets[pr]) : 0u;
    return {uint64_t(p.seeds[pr]), offset + uint64_t(position_of(p, row)), 0u};
  }
  return {p.seed, uint64_t(row), p.pos0};
}

SF_HD RowRace row_race(const SampleParams& p, int64_t row) {
  RowRace r;
  const int64_t pr = param_row(p, row);
  r.want_mass = (p.logprobs != nullptr || p.top_n > 0 || p.ranks != nullptr) && !p.probs;
  r.warped = p.keeps != nullptr;
  r.keep = p.keeps != nullptr ? p.keeps[row] : keep_all();
  if (p.probs) {
    r.greedy = false;
    r.inv_temperature = 1.0f;
  } else {
    set_temperature(r, row_temperature(p, row));
  }
  r.stream = p.shard.streams != nullptr ? p.shard.streams[row] : row_stream(p, row);
  r.stream.base = uint64_t(p.shard.index_base);
  r.proc = p.probs ? no_process() : row_process(p.proc, process_row(p, row));
  return r;
}

// r without processing: a kernel compiled for calls without mask, bias or
// penalties takes this, so that the processing code folds away (registers).
SF_HD RowRace without_processing(RowRace r) {
  r.proc = no_process();
  return r;
}

// Whether a call has processing (the kernels' kProcess variants).
SF_HD bool has_processing(const SampleParams& p) { return p.proc.allowed != nullptr || p.proc.tables != nullptr; }

// Row `row`'s warper values, clamped.
SF_HD Warpers row_warpers(const SampleParams& p, int64_t row) {
  const int64_t pr = param_row(p, row);
  return clamp_warpers(p.top_ks != nullptr ? p.top_ks[pr] : p.top_k, p.top_ps != nullptr ? p.top_ps[pr] : p.top_p,
                       p.min_ps != nullptr ? p.min_ps[pr] : p.min_p,
                       p.typical_ps != nullptr ? p.typical_ps[pr] : p.typical_p, p.vocab);
}

// Converts one input value as the race sees it: a scaled logit with the
// warpers' removed tokens at -inf, or a clean weight.
SF_HD float race_value(float x, bool probs, const RowRace& r) {
  if (probs) return clean_weight(x);
  const float y = scaled_logit(x, r.inv_temperature);
  return r.warped ? apply_keep(y, r.keep) : y;
}

// Reads element i of a row as the race sees it: processed, then race_value.
template <typename T>
SF_HD float load_value(const T* row, int64_t i, bool probs, const RowRace& r) {
  return race_value(probs ? float(row[i]) : process_logit(float(row[i]), i, r.proc), probs, r);
}

// Group g's raw values v, processed (logits only) and turned into race values.
SF_HD void finish_group(float (&v)[kGroup], int64_t g, bool probs, const RowRace& r) {
  if (!probs && processes(r.proc)) process_group(v, g, r.proc);
  SF_SIMD
  for (int i = 0; i < kGroup; ++i) v[i] = race_value(v[i], probs, r);
}

// Reads group g of a row into v, padding past the end with masked values.
template <typename T>
SF_HD void load_group_scalar(const T* row, int64_t vocab, int64_t g, bool probs, const RowRace& r,
                             float (&v)[kGroup]) {
  const int n = group_size(vocab, g);
  const T* src = row + g * kGroup;
#if !defined(__CUDA_ARCH__)
  // A whole group with nothing to process or keep: race_value straight from the input. On the CPU
  // the copy into v and the pass over it cost about 5x the conversion (the copy's stores do not
  // forward to the pass's vector loads); the values are the same.
  if (n == kGroup && !r.warped && (probs || !processes(r.proc))) {
    if (probs) {
      SF_SIMD
      for (int i = 0; i < kGroup; ++i) v[i] = clean_weight(float(src[i]));
    } else {
      SF_SIMD
      for (int i = 0; i < kGroup; ++i) v[i] = scaled_logit(float(src[i]), r.inv_temperature);
    }
    return;
  }
#endif
  if (n == kGroup) {
    for (int i = 0; i < kGroup; ++i) v[i] = float(src[i]);
  } else {
    for (int i = 0; i < kGroup; ++i) v[i] = i < n ? float(src[i]) : masked_value(probs);
  }
  finish_group(v, g, probs, r);
}

// How the logprob stage reads a row raced as r: the race's values, or for
// raw logprobs the unprocessed logits (unscaled, unwarped).
SF_HD RowRace logprob_race(const SampleParams& p, RowRace r) {
  if (p.raw_logprobs) {
    r.inv_temperature = 1.0f;
    r.warped = false;
    r.proc = no_process();
  }
  return r;
}

// Writes a row's result.
SF_HD void store_result(const SampleParams& p, int64_t row, int64_t token, float logprob, bool valid) {
  p.tokens[row * p.tokens_stride] = token;
  if (p.logprobs != nullptr) p.logprobs[row] = valid ? logprob : -kInf;
  if (p.valid != nullptr) p.valid[row] = valid;
}

}  // namespace syncfree
