// The private ops of syncfree.distributed (Note [Vocab-parallel steps] in
// core/shard.h). Python holds the collectives and the layout cache; these
// ops take every decision in between:
//   _shard_call    the checks of a call (before the first collective) and the
//                  row each rank shares in the layout exchange;
//   _shard_layout  the layout check over the gathered rows: each rank's span;
//   _shard_draw    the generator draw shared by the shard calls;
//   _shard_head, _shard_columns   the columns of the race groups a rank owns;
//   _shard_processing  the call's processing in those columns' coordinates;
//   _shard_begin, _shard_local, _shard_merge, _shard_finish   the steps.
#include "ops.h"

#include <ATen/core/enum_tag.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <set>
#include <sstream>
#include <string_view>
#include <tuple>

namespace syncfree {
namespace {

// The exchanged layout row: what every rank must agree on or tile with.
enum LayoutColumn { kStart, kWidth, kRows, kVocab, kDtype, kFlags, kLayoutColumns };

std::vector<int64_t> shard_call_op(const Tensor& x, int64_t vocab_start, int64_t vocab_size, SYNCFREE_PARAMS_ARGS,
                                   SYNCFREE_RNG_ARGS, bool return_logprobs, const std::optional<Tensor>& out,
                                   int64_t top_logprobs, bool raw_logprobs) {
  TORCH_CHECK_VALUE(x.dim() == 2, "local_logits: expected shape [L] or [B, L], got ", x.sizes());
  check_input(x, "local_logits", /*shard=*/true);
  const SamplingArgs w = SamplingArgs::from_lists(params, param_values, "distributed.sample");
  check_warpers(w, x);
  if (vocab_size >= 1 && vocab_size <= kMaxVocab) {  // else the layout check raises, on every rank
    // Against the whole rows, [B, vocab_size]: the mask's width, the ids' range, n <= V (no memory).
    const Tensor whole = at::empty({1}, x.options()).expand({x.size(0), vocab_size});
    check_processing(w, whole, false);
    check_wanted(Wanted{return_logprobs, false, top_logprobs, raw_logprobs}, whole, false);
  }
  check_rng(SYNCFREE_RNG_STRUCT, x, "local_logits");
  if (out.has_value()) check_out(*out, x, {x.size(0)}, read_by(w, SYNCFREE_RNG_STRUCT, {x}));
  int32_t flags = 0;
  const auto set = [&](bool on, int32_t flag) { flags |= on ? flag : 0; };
  set(w.temperature.has_value(), kCallTemperatureTensor);
  set(!w.temperature.has_value() && is_greedy_temperature(float(w.temperature_value)), kCallAllGreedy);
  set(w.top_k.has_value() || (w.top_k_value > 0 && w.top_k_value < vocab_size), kCallTopK);
  set(w.top_p.has_value() || w.top_p_value < 1.0, kCallTopP);
  set(w.min_p.has_value() || w.min_p_value > 0.0, kCallMinP);
  set(w.typical_p.has_value() || w.typical_p_value < 1.0, kCallTypicalP);
  set(seed.has_value(), kCallSeedTensor);
  set(seed.has_value() || seed_value.has_value(), kCallSeed);
  set(return_logprobs, kCallLogprobs);
  set(w.any_processing() || w.first_penalty() != nullptr, kCallProcessing);
  set(raw_logprobs, kCallRawLogprobs);
  flags |= int32_t(top_logprobs) << kCallTopShift;  // checked: at most kMaxTopLogprobs
  return {vocab_start, x.size(1), x.size(0), vocab_size, int64_t(x.scalar_type()), flags};
}

// table: every rank's _shard_call row, int64 [ranks, 6] on the CPU. Errors
// come from the gathered values only, so every rank raises the same one.
std::vector<int64_t> shard_layout_op(const Tensor& table) {
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(1) == kLayoutColumns && table.scalar_type() == at::kLong &&
                        table.device().is_cpu(),
                    "table: expected a CPU int64 tensor [ranks, ", int(kLayoutColumns), "]");
  const Tensor t = table.contiguous();
  const int64_t ranks = t.size(0);
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(ranks), std::vector<int64_t>(kLayoutColumns));
  for (int64_t r = 0; r < ranks; ++r)
    std::copy_n(t.data_ptr<int64_t>() + r * kLayoutColumns, int(kLayoutColumns), rows[size_t(r)].begin());
  const auto values = [&](int column) {
    std::set<int64_t> s;
    for (const auto& row : rows) s.insert(row[size_t(column)]);
    return s;
  };
  const auto list = [](const auto& items, auto&& show) {
    std::ostringstream out;
    out << "[";
    bool first = true;
    for (const auto& v : items) out << (first ? "" : ", ") << show(v), first = false;
    return out.str() + "]";
  };
  const auto plain = [](int64_t v) { return v; };
  if (values(kRows).size() != 1) {
    std::vector<int64_t> batch;
    for (const auto& row : rows) batch.push_back(row[kRows]);
    std::sort(batch.begin(), batch.end());
    TORCH_CHECK_VALUE(false, "local_logits: every rank must hold the same rows, got batch sizes ", list(batch, plain));
  }
  TORCH_CHECK_TYPE(values(kDtype).size() == 1, "local_logits: every rank must pass the same dtype, got ",
                   list(values(kDtype), [](int64_t v) { return c10::toString(c10::ScalarType(v)); }));
  TORCH_CHECK_VALUE(values(kFlags).size() == 1,
                    "every rank must pass the same kinds of arguments (which of temperature, top_k, top_p, min_p, "
                    "typical_p are tensors or non-identity numbers, whether any processing is given, seed or "
                    "generator, return_logprobs, return_top_logprobs, logprobs_mode)");
  TORCH_CHECK_VALUE(values(kVocab).size() == 1, "vocab_size: ranks disagree: ", list(values(kVocab), plain));
  const int64_t vocab = rows[0][kVocab];
  TORCH_CHECK_VALUE(vocab >= 1 && vocab <= kMaxVocab, "vocab_size: expected an int in [1, ", kMaxVocab, "], got ",
                    vocab);
  std::vector<int64_t> empty;
  for (int64_t r = 0; r < ranks; ++r)
    if (rows[size_t(r)][kWidth] == 0) empty.push_back(r);
  TORCH_CHECK_VALUE(empty.empty(), "local_logits: every rank must hold at least one column; ranks ",
                    list(empty, plain), " hold none");
  std::vector<std::vector<int64_t>> shards = rows;
  std::sort(shards.begin(), shards.end());
  int64_t end = 0;
  for (const auto& s : shards) {
    TORCH_CHECK_VALUE(s[kStart] == end, "vocab_start: the shards do not tile [0, ", vocab, "): columns ", end, "..",
                      s[kStart], " are ", s[kStart] > end ? "missing" : "held twice");
    end = s[kStart] + s[kWidth];
  }
  TORCH_CHECK_VALUE(end == vocab, "vocab_size: the shards cover [0, ", end, "), expected [0, ", vocab, ")");
  std::vector<int64_t> spans;  // (start, width) per rank, in rank order
  for (const auto& row : rows) {
    spans.push_back(row[kStart]);
    spans.push_back(row[kWidth]);
  }
  return spans;
}

// The generator draw of one sampling call over the whole vocabulary as an
// int64 [2] (seed, position), advancing the generator as that call would; [0]
// when the call draws nothing (a seed, or a scalar temperature 0).
template <Backend B>
Tensor shard_draw_op(const Tensor& like, const std::optional<at::Generator>& generator, int64_t vocab,
                     int64_t flags) {
  if (generator.has_value()) check_generator_device(*generator, like, "local_logits");
  const bool draws = !(flags & (kCallSeed | kCallAllGreedy));
  Tensor out = at::empty({draws ? 2 : 0}, like.options().dtype(at::kLong));
  if (!draws || B == Backend::kMeta) return out;
  if constexpr (B == Backend::kCuda) {
    SYNCFREE_ON_CUDA(like, generator_state_cuda(generator, cuda_index(like), vocab, out.data_ptr<int64_t>()));
    return out;
  }
  const GeneratorDraw draw = draw_generator_cpu(generator);
  out.data_ptr<int64_t>()[0] = int64_t(draw.seed);
  out.data_ptr<int64_t>()[1] = int64_t(draw.pos0);
  return out;
}

// A rank's first kGroup columns ([B, kGroup], -inf past its width): what the
// rank before it needs to complete its last group.
Tensor shard_head_op(const Tensor& x) {
  Tensor head = at::full({x.size(0), kGroup}, -kInf, x.options());
  const int64_t n = std::min<int64_t>(kGroup, x.size(1));
  if (n > 0) head.narrow(1, 0, n).copy_(x.narrow(1, 0, n));
  return head;
}

// The columns of the groups this rank owns, [first group start, last owned
// group end), completed with the following ranks' heads; and the global index
// of its column 0.
std::tuple<Tensor, int64_t> shard_columns_op(const Tensor& x, at::TensorList heads, int64_t vocab_start,
                                             int64_t vocab_size, at::IntArrayRef spans) {
  TORCH_CHECK_VALUE(spans.size() == 2 * heads.size(), "spans: expected (start, width) for each of the ",
                    heads.size(), " ranks");
  const int64_t first = ceil_div(vocab_start, kGroup) * kGroup;
  const int64_t end = vocab_start + x.size(1);
  if (first >= end) return {x.narrow(1, 0, 0), first};
  const int64_t stop = std::min(vocab_size, ceil_div(end, kGroup) * kGroup);
  std::vector<Tensor> pieces = {x.narrow(1, first - vocab_start, end - first)};
  for (int64_t column = end; column < stop;) {  // fewer than kGroup columns, from the heads of their ranks
    size_t owner = 0;
    while (owner < heads.size() && !(spans[2 * owner] <= column && column < spans[2 * owner] + spans[2 * owner + 1]))
      ++owner;
    TORCH_CHECK_VALUE(owner < heads.size(), "spans: column ", column, " is on no rank");
    const int64_t at = column - spans[2 * owner];  // < kGroup: inside that rank's head
    const int64_t take = std::min({stop - column, spans[2 * owner + 1] - at, int64_t(kGroup) - at});
    pieces.push_back(heads[owner].narrow(1, at, take));
    column += take;
  }
  return {pieces.size() == 1 ? pieces[0] : at::cat(pieces, 1), first};
}

// The call's processing lists in the coordinates of a rank's race columns
// (global token base + j is column j; Note [Processing on a shard]), checked
// by _shard_call against the whole vocabulary. ATen calls only: no sync.
c10::List<std::optional<Tensor>> shard_processing_op(const Tensor& columns, int64_t base, SYNCFREE_PARAMS_ARGS) {
  SamplingArgs a = SamplingArgs::from_lists(params, param_values, "distributed.sample");
  TORCH_CHECK_VALUE(base % kGroup == 0, "base: expected a multiple of ", kGroup, ", got ", base);
  const int64_t width = columns.size(1);
  for (std::optional<Tensor>* ids : {&a.output_tokens, &a.prompt_tokens, &a.bias_tokens}) {
    if (!ids->has_value()) continue;
    const Tensor local = (**ids).sub(base);
    *ids = local.masked_fill(local.lt(0).logical_or(local.ge(width)), -1);  // another rank's, or padding
  }
  if (a.allowed_mask.has_value()) {
    // Local word k is global bits [base + 32 k, base + 32 k + 32): words first + k and first + k + 1 shifted.
    const int64_t first = base / 32, shift = base % 32, words = ceil_div(width, int64_t(32));
    const Tensor global = at::constant_pad_nd(a.allowed_mask->to(at::kLong).bitwise_and(0xffffffffLL), {0, 1});
    Tensor local = global.narrow(1, first, words);
    if (shift != 0) {
      const Tensor next = global.narrow(1, first + 1, words);
      local = local.bitwise_right_shift(shift).bitwise_or(
          next.bitwise_left_shift(32 - shift).bitwise_and(0xffffffffLL));
    }
    a.allowed_mask = local.to(at::kInt);  // the same 32 bits, as int32
  }
  return a.tensors();
}

// The rows of a _shard_begin state tensor, checked.
ShardState state_of(const Tensor& state) {
  TORCH_CHECK_VALUE(state.scalar_type() == at::kByte && state.dim() == 2 && state.size(1) == kShardStateRowBytes,
                    "state: expected the tensor of _shard_begin");
  return shard_state(state.data_ptr(), state.size(0));
}

template <Backend B>
void run_rows(const Tensor& like, const ShardRowsCall& c) {
  if (c.rows == 0) return;
  if constexpr (B == Backend::kCpu) {
    shard_rows_cpu(c);
  } else if constexpr (B == Backend::kCuda) {
    SYNCFREE_ON_CUDA(like, shard_rows_cuda(c, cuda_index(like)));
  }
}

// The state of a call: every row's warpers, temperature and noise stream, set
// once (rng_state: _shard_draw's, [2] or [0]).
template <Backend B>
Tensor shard_begin_op(const Tensor& x, int64_t vocab_size, SYNCFREE_PARAMS_ARGS, const std::optional<Tensor>& seed,
                      const std::optional<Tensor>& offset, std::optional<int64_t> seed_value, int64_t offset_value,
                      const Tensor& rng_state) {
  const SamplingArgs w = SamplingArgs::from_lists(params, param_values, "distributed.sample");
  check_warpers(w, x);
  const RngArgs rng{seed, offset, seed_value, offset_value, std::nullopt};
  check_rng(rng, x, "local_logits");
  const int64_t rows = x.size(0);
  Tensor state = at::empty({rows, kShardStateRowBytes}, x.options().dtype(at::kByte));
  if (B == Backend::kMeta) return state;
  ShardRowsCall c{};
  c.kind = ShardRowsKind::kBegin;
  c.rows = rows;
  c.state = state_of(state);
  c.params.rows = rows;
  c.params.vocab = vocab_size;
  RowTensors keep_alive;
  set_warpers(c.params, keep_alive, w, rows);
  set_rng(c.params, keep_alive, rng, rows);
  c.rng_state = rng_state.numel() == 2 ? rng_state.data_ptr<int64_t>() : nullptr;
  run_rows<B>(x, c);
  return state;
}

// What the race of a shard call takes from the call's parameters: the processing
// (in the race columns' coordinates); the kept sets, the temperatures and the
// noise streams are the state's.
SamplingArgs race_args(SamplingArgs a) {
#define SYNCFREE_RESET_WARPER(name, type, identity, group) \
  if (std::string_view(#group) == "warper") {              \
    a.name.reset();                                        \
    a.name##_value = identity;                             \
  }
#define SYNCFREE_KEEP_LIST(name)
  SYNCFREE_SAMPLING_FIELDS(SYNCFREE_RESET_WARPER, SYNCFREE_KEEP_LIST)
#undef SYNCFREE_RESET_WARPER
#undef SYNCFREE_KEEP_LIST
  return a;
}

// A step's local part: the buffer its collective takes. params: as
// _shard_processing gives them.
template <Backend B>
Tensor shard_local_op(int64_t step, const Tensor& state, const Tensor& x, const Tensor& ext, int64_t base,
                      int64_t flags, SYNCFREE_PARAMS_ARGS) {
  const int64_t rows = x.size(0);
  TORCH_CHECK_VALUE(state.dim() == 2 && state.size(0) == rows, "state: expected one row per row of local_logits");
  const auto s = int32_t(step);
  const int32_t top_n = call_top_n(int32_t(flags));
  Tensor out = at::zeros({rows, shard_step_columns(s, top_n)}, x.options().dtype(at::kLong));
  if (B == Backend::kMeta || rows == 0) return out;
  ShardRowsCall c{};
  c.step = s;
  c.rows = rows;
  c.state = state_of(state);
  c.base = base;
  c.columns = ext.size(1);
  c.out = out.data_ptr<int64_t>();
  const int32_t kind = step_kind(s);
  if (kind == kStepRace || kind == kStepResolve) {
    ShardCall shard{base, c.state.streams, c.state.temperatures, nullptr, nullptr};
    const bool warped = (flags & kCallWarpers) && !(flags & kCallAllGreedy);
    const SamplingArgs w = race_args(SamplingArgs::from_lists(params, param_values, "distributed.sample"));
    const RngArgs rng;  // the state's streams
    const auto race = [&] {
      run_sample<B>(std::nullopt, ext, false, w, rng, Wanted{/*logprobs=*/kind == kStepRace}, shard,
                    warped ? c.state.keeps : nullptr);
    };
    if (kind == kStepRace) {
      Tensor partials = at::empty({rows * int64_t(sizeof(ShardPartial))}, x.options().dtype(at::kByte));
      if (c.columns > 0) {  // a shard narrower than a group may own none: it races nothing
        shard.partials_out = reinterpret_cast<ShardPartial*>(partials.data_ptr());
        race();
        c.partials = shard.partials_out;
      }
      c.kind = ShardRowsKind::kRaceCandidates;
      run_rows<B>(x, c);
      return out;
    }
    if (c.columns == 0) return out.fill_(-1);
    Tensor groups = at::empty({rows}, x.options().dtype(at::kLong));
    c.kind = ShardRowsKind::kResolveGroups;
    c.out = groups.data_ptr<int64_t>();
    run_rows<B>(x, c);
    shard.resolve_groups = groups.data_ptr<int64_t>();
    const Tensor local =
        run_sample<B>(std::nullopt, ext, false, w, rng, Wanted{}, shard, warped ? c.state.keeps : nullptr).tokens;
    c.kind = ShardRowsKind::kResolveTokens;
    c.in = local.data_ptr<int64_t>();
    c.out = out.data_ptr<int64_t>();
    run_rows<B>(x, c);
    return out;
  }
  if (kind == kStepMass) {
    c.kind = ShardRowsKind::kMassEntries;
    run_rows<B>(x, c);
    return out;
  }
  if (kind == kStepRawMass) {  // log_softmax's norm of the unprocessed logits: a race's masses at temperature 1
    Tensor partials = at::empty({rows * int64_t(sizeof(ShardPartial))}, x.options().dtype(at::kByte));
    if (c.columns > 0) {
      RngArgs no_draw;  // any noise: only the masses are read
      no_draw.seed_value = 0;
      const ShardCall shard{base, nullptr, nullptr, reinterpret_cast<ShardPartial*>(partials.data_ptr()), nullptr};
      run_sample<B>(std::nullopt, ext, false, SamplingArgs{}, no_draw, Wanted{/*logprobs=*/true}, shard, nullptr);
      c.partials = shard.partials_out;
    }
    c.kind = ShardRowsKind::kRawMassEntries;
    run_rows<B>(x, c);
    return out;
  }
  ShardPassCall pass{s, c.state, ext.data_ptr(), rows, ext.size(1), ext.size(1) > 0 ? ext.stride(0) : 0,
                     base, reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>()), Processing{}};
  SampleParams p{};
  p.rows = rows;
  p.vocab = ext.size(1);
  RowTensors keep_alive;
  set_processing(p, keep_alive, SamplingArgs::from_lists(params, param_values, "distributed.sample"), rows);
  pass.proc = p.proc;
  if (top_step(s)) {  // every column's entry, then this rank's best n (0: none, past a narrow shard's columns)
    Tensor entries = at::zeros({rows, c.columns}, x.options().dtype(at::kLong));
    pass.out = reinterpret_cast<uint64_t*>(entries.data_ptr<int64_t>());
    if (c.columns > 0) {
      if constexpr (B == Backend::kCpu) {
        shard_pass_cpu(pass, ext.scalar_type());
      } else {
        SYNCFREE_ON_CUDA(x, shard_pass_cuda(pass, ext.scalar_type(), cuda_index(x)));
      }
    }
    if (c.columns < top_n) entries = at::constant_pad_nd(entries, {0, top_n - c.columns});
    return std::get<0>(at::topk(entries, top_n));
  }
  if (shard_step_columns(s) > 0) {
    if constexpr (B == Backend::kCpu) {
      shard_pass_cpu(pass, ext.scalar_type());
    } else {
      SYNCFREE_ON_CUDA(x, shard_pass_cuda(pass, ext.scalar_type(), cuda_index(x)));
    }
  }
  return shard_step_narrow(s) ? out.to(at::kInt) : out;
}

// Folds a step's collective result into the state (Note [Vocab-parallel steps]).
template <Backend B>
void shard_merge_op(int64_t step, const Tensor& state, const Tensor& result) {
  const int64_t rows = state.size(0);
  const Tensor v = result.to(at::kLong).contiguous();
  const bool gathered = gathered_step(int32_t(step));
  const bool width_ok = top_step(int32_t(step)) ? v.size(-1) >= 1 && v.size(-1) <= kMaxTopLogprobs
                                                : v.size(-1) == shard_step_columns(int32_t(step));
  TORCH_CHECK_VALUE(v.dim() == (gathered ? 3 : 2) && v.size(-2) == rows && width_ok,
                    "result: expected the step's buffer", gathered ? ", gathered over the ranks" : "");
  if (B == Backend::kMeta || rows == 0) return;
  ShardRowsCall c{};
  c.kind = ShardRowsKind::kMerge;
  c.step = int32_t(step);
  c.rows = rows;
  c.state = state_of(state);
  c.in = v.data_ptr<int64_t>();
  c.in_width = v.size(-1);
  c.ranks = gathered ? v.size(0) : 1;
  run_rows<B>(state, c);
}

// The tokens go to out when given (checked by _shard_call; the first result is
// then empty: an output aliasing an input is what torch.compile cannot functionalize).
template <Backend B>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> shard_finish_op(const Tensor& state, bool return_logprobs,
                                                                   bool return_valid, const std::optional<Tensor>& out,
                                                                   int64_t top_logprobs) {
  const int64_t rows = state.size(0);
  const Tensor fresh = at::empty({out.has_value() ? 0 : rows}, state.options().dtype(at::kLong));
  const Tensor& tokens = out.has_value() ? *out : fresh;
  Tensor logprobs = at::empty({return_logprobs ? rows : 0}, state.options().dtype(at::kFloat));
  Tensor valid = at::empty({return_valid ? rows : 0}, state.options().dtype(at::kBool));
  Tensor top_ids = at::empty({rows, top_logprobs}, state.options().dtype(at::kLong));
  Tensor top_values = at::empty({rows, top_logprobs}, state.options().dtype(at::kFloat));
  if (B == Backend::kMeta || rows == 0) return {fresh, logprobs, valid, top_ids, top_values};
  TORCH_CHECK_VALUE(tokens.dim() == 1 && tokens.size(0) == rows, "out: expected shape [", rows, "]");
  ShardRowsCall c{};
  c.kind = ShardRowsKind::kFinish;
  c.rows = rows;
  c.state = state_of(state);
  c.out = tokens.data_ptr<int64_t>();
  c.out_stride = tokens.stride(0);
  c.logprobs = return_logprobs ? logprobs.data_ptr<float>() : nullptr;
  c.valid = return_valid ? valid.data_ptr<bool>() : nullptr;
  c.top_n = int32_t(top_logprobs);  // the top step's merge holds them (checked by _shard_call)
  c.top_ids = top_logprobs > 0 ? top_ids.data_ptr<int64_t>() : nullptr;
  c.top_logprobs = top_logprobs > 0 ? top_values.data_ptr<float>() : nullptr;
  run_rows<B>(state, c);
  return {fresh, logprobs, valid, top_ids, top_values};
}

SYNCFREE_LIBRARY_FRAGMENT(SYNCFREE_OPS, m) {
  const std::vector<at::Tag> seeded = {at::Tag::nondeterministic_seeded};
  m.def("_shard_call(Tensor local_logits, int vocab_start, int vocab_size, " SYNCFREE_PARAMS_SCHEMA
        ", " SYNCFREE_RNG_SCHEMA ", bool return_logprobs, Tensor? out, int top_logprobs, bool raw_logprobs) -> int[]");
  m.def("_shard_layout(Tensor table) -> int[]");
  m.def("_shard_draw(Tensor like, Generator? generator, int vocab_size, int flags) -> Tensor", seeded);
  m.def("_shard_head(Tensor local_logits) -> Tensor");
  m.def("_shard_columns(Tensor local_logits, Tensor[] heads, int vocab_start, int vocab_size, int[] spans) -> "
        "(Tensor, int)");
  m.def("_shard_processing(Tensor columns, int base, " SYNCFREE_PARAMS_SCHEMA ") -> Tensor?[]");
  m.def("_shard_begin(Tensor local_logits, int vocab_size, " SYNCFREE_PARAMS_SCHEMA ", Tensor? seed, Tensor? offset, "
        "int? seed_value, int offset_value, Tensor rng_state) -> Tensor");
  m.def("_shard_local(int step, Tensor state, Tensor local_logits, Tensor columns, int base, int flags, "
        SYNCFREE_PARAMS_SCHEMA ") -> Tensor");
  m.def("_shard_merge(int step, Tensor(a!) state, Tensor result) -> ()");
  m.def("_shard_finish(Tensor state, bool return_logprobs, bool return_valid, Tensor(a!)? out, int top_logprobs) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)");
}

template <Backend B>
void register_shard_ops(torch::Library& m) {
  m.impl("_shard_draw", &shard_draw_op<B>);
  m.impl("_shard_begin", &shard_begin_op<B>);
  m.impl("_shard_local", &shard_local_op<B>);
  m.impl("_shard_merge", &shard_merge_op<B>);
  m.impl("_shard_finish", &shard_finish_op<B>);
}

}  // namespace

SYNCFREE_REGISTER_KERNELS(register_shard_ops)
// ATen calls only: one kernel for every device.
SYNCFREE_LIBRARY_IMPL(SYNCFREE_OPS, CompositeExplicitAutograd, m) {
  m.impl("_shard_call", &shard_call_op);
  m.impl("_shard_head", &shard_head_op);
  m.impl("_shard_columns", &shard_columns_op);
  m.impl("_shard_processing", &shard_processing_op);
}
// Reads the gathered layout on the host.
SYNCFREE_LIBRARY_IMPL(SYNCFREE_OPS, CPU, m) { m.impl("_shard_layout", &shard_layout_op); }

}  // namespace syncfree
