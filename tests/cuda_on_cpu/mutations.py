"""The layer's self-test: known kernel bugs, planted one at a time in a copy of csrc/, must be caught.

Each mutant is one textual change to a kernel or launcher, and the emulated tests that
must fail on it (a failed assertion, or the layer's own report of a barrier, a warp
intrinsic, a launch, a misaligned access or an out-of-bounds write gone wrong; a crash or a
build error does not count). tests/test_mutants.py runs them (the `mutants` tier, README
"Tests"), and its quick tier checks that each mutant's text still occurs exactly once in csrc/;
by hand, before a kernel change:

    python -m cuda_on_cpu.mutations [name ...]      # from tests/; 10-50 s a mutant (2 cores)
"""
import concurrent.futures
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from .build import ROOT

TESTS = ROOT / "tests"


# Note [A mutant's build]
# A mutant recompiles only the translation units its change reaches (build.py caches objects by
# the content of their sources and headers) and links them with the cached objects of the rest;
# the builds take the cache's lock one at a time, so they set the tier's pace (~13 s a mutant at
# -O2 on 2 cores, ~40 s for a core header). The units it recompiles are built at -O1, about 60%
# of -O2's time: what the layer checks does not depend on the optimisation level (the ASan +
# UBSan build, which looks for the undefined behaviour that would make it, is -O1 throughout).
#
# Note [A mutant's resource report]
# The layer checks each launch against the kernel's __launch_bounds__ and registers, read from
# nvcc's sm_90 build of the sources (resources.py): 15-20 s of nvcc a changed .cu file, half a
# mutant's cost. A mutant that leaves every launch bound's text alone (the bounds, the thread
# constants they name) takes the report of the unmutated sources: its bounds are the same, and
# __launch_bounds__ caps its registers as it caps theirs. A mutant whose text names one of them
# gets a report of its own.
LAUNCH_BOUND_WORDS = ("__launch_bounds__", "blocks_per_sm", "kThreads", "kSampleThreads", "kSelectThreads",
                      "kTableThreads", "kRowsPerBlock", "kPassThreads", "kResolveRowsPerBlock")


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # under csrc/
    old: str
    new: str
    tests: str  # pytest -k expression over tests/test_emulated.py
    variant: str = "plain"
    expect: str = ""  # text the failure output must contain
    quick: bool = True  # SYNCFREE_EMULATION_QUICK for the run
    pending: str = ""  # why the tests cannot catch it yet (the self-test skips it, saying so)

    def keeps_launch_bounds(self):
        """Note [A mutant's resource report]: whether its text leaves every launch bound alone."""
        return not any(word in text for text in (self.old, self.new) for word in LAUNCH_BOUND_WORDS)

    def apply(self, csrc):
        path = pathlib.Path(csrc) / self.file
        text = path.read_text()
        assert text.count(self.old) == 1, f"mutant {self.name}: the text to replace occurs {text.count(self.old)} times"
        path.write_text(text.replace(self.old, self.new))


MUTANTS = [
    Mutant("missing-syncthreads", "cuda/block_race.cuh",
           "  if (lane == 0) per_warp[warp] = a;\n  __syncthreads();",
           "  if (lane == 0) per_warp[warp] = a;",
           "tokens_logprobs_and_valid and 1x16400"),
    Mutant("lost-partial", "cuda/sample_cuda.cu",
           "acc = threadIdx.x < splits ? load_partial(",
           "acc = threadIdx.x + 1 < splits ? load_partial(",
           "tokens_logprobs_and_valid or repeated_calls"),
    Mutant("ticket-not-reset", "cuda/sample_cuda.cu",
           "    if (threadIdx.x == 0) a.tickets[row] = 0;  // ready for the next call (Note [Ticket counters])\n",
           "",
           "tokens_logprobs_and_valid and 1x16400"),
    Mutant("divergent-shuffle", "cuda/block_race.cuh",
           "  const Best winner = warp_best(mine ? token_entry<kProbs>(v, int32_t(first + lane), r) : no_best());",
           "  const Best winner = mine ? warp_best(token_entry<kProbs>(v, int32_t(first + lane), r)) : no_best();",
           "tokens_logprobs_and_valid and 4x17", expect="cuda_on_cpu:"),
    Mutant("vector-load-past-the-row", "cuda/sample_cuda.cu",
           "if (kVec && g < full_groups)", "if (kVec && g <= full_groups)",
           "misaligned_strided_and_padded"),
    Mutant("one-block-per-split-row", "cuda/sample_cuda.cu",
           "const dim3 grid(static_cast<unsigned>(blocks)), block(kThreads);",
           "const dim3 grid(static_cast<unsigned>(args.p.rows)), block(kThreads);",
           "tokens_logprobs_and_valid and 1x16400"),
    Mutant("block-beyond-launch-bounds", "cuda/sample_cuda.cu",
           "const dim3 grid(static_cast<unsigned>(blocks)), block(kThreads);",
           "const dim3 grid(static_cast<unsigned>(blocks)), block(2 * kThreads);",
           "tokens_logprobs_and_valid and 1x16400", expect="__launch_bounds__"),
    Mutant("selection-reads-the-bin-before-all-votes", "cuda/block_select.cuh",
           "  if (my_bin >= 0) atomicMax(&sh.chosen, my_bin);\n  __syncthreads();\n",
           "  if (my_bin >= 0) atomicMax(&sh.chosen, my_bin);\n",
           "warpers_keep_the_same_sets or warper_edge_rows"),
    Mutant("shared-memory-read-before-written", "cuda/block_select.cuh",
           "  if (threadIdx.x == 0) max_key = 0u;\n", "",
           "warpers_keep_the_same_sets or warper_edge_rows"),
    # The selection over split rows (Note [Selection passes on CUDA]).
    # (A histogram merged late or partly only lowers the chosen bin, which adds candidates: the
    # finishing kernel still finds the exact thresholds. The row max and top-p's total must be whole.)
    Mutant("row-max-from-one-chunk", "cuda/warpers_cuda.cu",
           "      atomicMax(&state.max_key, order_key(hi));\n",
           "      if (split == 0) atomicMax(&state.max_key, order_key(hi));\n",
           "warpers_keep_the_same_sets"),
    Mutant("mass-total-not-merged", "cuda/warpers_cuda.cu",
           "if (t == 0 && total > 0u) atomicAdd(&state.total,",
           "if (t == 0 && total > 0u && split == 0) atomicAdd(&state.total,",
           "warper_candidates"),
    Mutant("compaction-drops-the-chosen-bin", "cuda/warpers_cuda.cu",
           "const float floor = key_floor(state.first.prefix);",
           "const float floor = key_floor(state.first.prefix + (1u << 21));",
           "warpers_keep_the_same_sets or warper_candidates"),
    Mutant("compaction-slots-collide", "cuda/block_select.cuh",
           "__popc(ballot & ((1u << lane) - 1u));", "__popc(ballot & (1u << lane));",
           "warpers_keep_the_same_sets or warper_candidates"),
    Mutant("candidate-race-misses-groups", "cuda/warpers_cuda.cu",
           "lowest_kept = load_value(x, i, false, r) == -kInf;",
           "lowest_kept = load_value(x, i, false, r) != -kInf;",
           "warpers_keep_the_same_sets or warper_candidates"),
    Mutant("overflowing-rows-marked-raced", "cuda/warpers_cuda.cu",
           "a.raced[row] = race ? 1 : 0;", "a.raced[row] = 1;",
           "warper_candidates"),
    Mutant("missing-syncthreads-under-tsan", "cuda/block_race.cuh",
           "  if (lane == 0) per_warp[warp] = a;\n  __syncthreads();",
           "  if (lane == 0) per_warp[warp] = a;",
           "tokens_logprobs_and_valid and 4x17 and float32", variant="tsan", expect="ThreadSanitizer: data race"),
    # The last row of a tensor, aligned, 1000 tokens: 8 read past the allocation.
    Mutant("overflow-argmax-skips-tokens", "cuda/block_race.cuh",
           "for (int64_t i = threadIdx.x % 32; i < vocab; i += 32)\n    best",
           "for (int64_t i = threadIdx.x % 32; i < vocab; i += 64)\n    best",
           "degenerate_and_infinite_rows or shard_kernels"),
    Mutant("typical-spread-without-the-lowest-logit", "cuda/warpers_cuda.cu",
           "typical_spread(m, keep.min_y, key_value(~state.low_key))", "typical_spread(m, keep.min_y, m)",
           "warpers_keep_the_same_sets or warper_edge_rows"),
    # A pass over a shard that skips part of the row: wrong histograms, wrong kept sets.
    Mutant("shard-pass-skips-a-chunk", "cuda/shard_cuda.cu",
           "i += int64_t(gridDim.y) * kPassThreads)\n      shard_token",
           "i += int64_t(gridDim.y + 1) * kPassThreads)\n      shard_token",
           "shard_kernels"),
    # A shard's passes on unprocessed logits (Note [Processing on a shard]): other kept sets and masses.
    Mutant("shard-pass-ignores-processing", "cuda/shard_cuda.cu",
           "  if (processes(proc)) {  // uniform over the block\n    tokens(std::true_type{});",
           "  if (processes(proc)) {  // uniform over the block\n    tokens(std::false_type{});",
           "shard_kernels and processing"),
    Mutant("shard-resolve-without-processing", "cuda/sample_cuda.cu",
           "const RowRace r = kProcess ? row_race(p, row) : without_processing(row_race(p, row));\n    float y;",
           "const RowRace r = without_processing(row_race(p, row));\n    float y;",
           "shard_kernels and processing"),
    # Top-n over shards from the first rank's list only.
    Mutant("shard-top-merges-one-rank", "core/shard.h",
           "      for (int64_t k = 0; k < ranks; ++k) {\n        const int64_t* g = v + k * rows * width;\n        for",
           "      for (int64_t k = 0; k < 1; ++k) {\n        const int64_t* g = v + k * rows * width;\n        for",
           "shard_top_logprobs"),
    # The mask of a shard whose race columns start mid-word, not shifted to its columns.
    Mutant("shard-mask-not-shifted", "shard_ops.cpp",
           "local = local.bitwise_right_shift(shift).bitwise_or(", "local = local.bitwise_or(",
           "shard_kernels and processing"),
    # syncfree.verify_draft's kernels.
    Mutant("verify-accepts-every-draft", "cuda/verify_cuda.cu",
           "accepted = accepts(w.u[c], double(w.q[c]), pd);", "accepted = true;",
           "verify_draft"),
    Mutant("verify-residual-keeps-the-draft", "cuda/verify_cuda.cu",
           "return rejected ? -kInf : y(i);", "return y(i);",
           "verify_draft"),
    # A node's row on chip (Note [A node's row on chip]): the second pass reads the kept words in
    # another layout than the first wrote; the plan keeps a group more than the launch's bytes.
    Mutant("positions-kept-words-read-group-major", "cuda/verify_cuda.cu",
           "for (int j = 0; j < kGroupWords<T>; ++j) w[j] = words[j * kept + g];",
           "for (int j = 0; j < kGroupWords<T>; ++j) w[j] = words[g * kGroupWords<T> + j];",
           "verify_keeps or single_row"),
    Mutant("positions-keep-past-the-launch-bytes", "cuda/plans.h",
           "return {kept, kept * group_bytes};", "return {kept + 1, kept * group_bytes};",
           "verify_keeps", expect="out of bounds"),
    # verify_tree's walk (Note [Verifying a tree]).
    Mutant("tree-siblings-share-an-acceptance-word", "cuda/verify_cuda.cu",
           "w.u[c] = accept_uniform(row_race(p, b * nodes + parent).stream, k);",
           "w.u[c] = accept_uniform(row_race(p, b * nodes + parent).stream, 0);",
           "verify_tree_matches"),
    Mutant("tree-proposal-residual-not-renormalised", "cuda/verify_cuda.cu",
           "law.law.total - w.rejected_mass,", "law.law.total,",
           "verify_tree_matches"),
    Mutant("tree-multi-round-total-never-recomputed", "cuda/verify_cuda.cu",
           "        w.totals[k] = total;\n", "        w.totals[k] = w.totals[k - 1];\n",
           "verify_tree_matches"),
    Mutant("tree-children-of-the-root-only", "cuda/verify_cuda.cu",
           "if (w.parent[c] == w.node) return c;", "if (w.parent[c] == 0) return c;",
           "verify_tree_matches"),
    # (In the kernel's file: a core header would rebuild every kernel for one mutant.)
    Mutant("tree-forward-parent-followed", "cuda/verify_cuda.cu",
           "const int64_t parent = c == 0 ? -1 : node_parent(v, b, c);",
           "const int64_t parent = c == 0 ? -1 : v.parents != nullptr ? v.parents[b * v.parents_stride + c] : c - 1;",
           "verify_tree_unchecked"),
    # Processing (process_cuda.cu): the exception tables and the logprob stage.
    Mutant("exception-table-drops-the-last-entry", "cuda/process_cuda.cu",
           "for (int64_t j = threadIdx.x; j < entries; j += kTableThreads)",
           "for (int64_t j = threadIdx.x; j + 1 < entries; j += kTableThreads)",
           "processing_matches"),
    Mutant("exception-bit-of-the-next-group", "cuda/process_cuda.cu",
           "unsigned(exception_bit(e.id)));", "unsigned(exception_bit(e.id + kExceptionSpan)));",
           "processing_matches"),
    # A histogram counted twice picks the n-th key's bin too high: too few candidates.
    Mutant("top-scan-counts-twice", "cuda/process_cuda.cu",
           "    add_hist_to(sh, hist);\n    __threadfence();\n    __syncthreads();\n    if (t == 0) last = atomicAdd(&state.tickets[1]",
           "    add_hist_to(sh, hist);\n    add_hist_to(sh, hist);\n    __threadfence();\n    __syncthreads();\n"
           "    if (t == 0) last = atomicAdd(&state.tickets[1]",
           "processing_matches and 1x128256 or rules_at_the_limits"),
    Mutant("top-compaction-drops-the-chosen-bin", "cuda/process_cuda.cu",
           "const uint32_t floor = state.first.prefix;",
           "const uint32_t floor = state.first.prefix + (1u << (32 - state.first.done));",
           "processing_matches"),
    Mutant("raw-norm-from-one-chunk", "cuda/process_cuda.cu",
           "    if (t < splits) {\n      const RacePartial* src", "    if (t < 1) {\n      const RacePartial* src",
           "processing_matches and 1x128256 or rules_at_the_limits"),
    Mutant("ties-ranked-without-earlier-warps", "cuda/process_cuda.cu",
           "const int rank = ts.size + before + __popc(", "const int rank = ts.size + __popc(",
           "top_logprobs_where_candidates_overflow"),
    # A top-n candidate exactly at the chosen bin's floor (the logprob 0 of a point mass) is dropped.
    Mutant("top-compaction-drops-the-floor-key", "cuda/process_cuda.cu",
           "key >= floor, TopCandidate", "key > floor, TopCandidate",
           "logprob_stage_on_point_masses"),
    # Raw mode: a row decided by +inf logits reports the chosen token's logprob as -inf.
    Mutant("raw-logprob-of-an-infinite-row", "cuda/process_cuda.cu",
           "const bool valid = processed.infs.count > 0 || processed.point >= 0",
           "const bool valid = processed.point >= 0",
           "logprob_stage_on_point_masses"),
    # A draft id equal to V reads past the row and may be accepted (README "Speculative decoding":
    # an out-of-range draft id counts as rejected on CUDA).
    Mutant("verify-draft-id-at-the-vocabulary-size", "cuda/verify_cuda.cu",
           "const bool in_vocab = draft >= 0 && draft < vocab;", "const bool in_vocab = draft >= 0 && draft <= vocab;",
           "verify_draft_ids_outside"),
    # verify_draft's processing (Note [Verifying a draft]): the stop token's race without it, and
    # every position of a row sharing the row's history (the drafts before it left out).
    Mutant("verify-stop-token-without-processing", "cuda/verify_cuda.cu",
           "    return kProcess ? r : without_processing(r);\n", "    return without_processing(r);\n",
           "verify_draft_with_processing or verify_tree_with_processing"),
    Mutant("verify-positions-share-the-row-history", "core/params.h",
           "return p.proc.per_position ? row : param_row(p, row); }",
           "return param_row(p, row); }",
           "verify_draft_with_processing"),
    # Caught by the layer's own reports (Note [Guard bytes] in runtime.cpp, Note [Alignment] and Note
    # [Illegal addresses] in faults.cpp), not by a crash.
    Mutant("partials-sized-for-one-row", "cuda/plans.h",
           "plan.partial_rows = plan.split.splits > 1 ? plan.blocks : 0;",
           "plan.partial_rows = plan.split.splits > 1 ? plan.split.splits : 0;",
           "tokens_logprobs_and_valid and 2x16400", expect="out of bounds"),
    Mutant("vector-loads-from-a-misaligned-stride", "cuda/sample_cuda.cu",
           "const bool aligned = reinterpret_cast<uintptr_t>(p.input) % 16 == 0 && (p.row_stride * elem) % 16 == 0;",
           "const bool aligned = reinterpret_cast<uintptr_t>(p.input) % 16 == 0;",
           "misaligned_strided_and_padded", expect="misaligned access"),
    Mutant("shard-rows-without-the-row-guard", "cuda/shard_cuda.cu",
           "if (row < c.rows) run_shard_row(c, row);", "run_shard_row(c, row);",
           "shard_kernels", expect="cuda_on_cpu:"),
    Mutant("vector-load-past-the-row-under-asan", "cuda/sample_cuda.cu",
           "if (kVec && g < full_groups)", "if (kVec && g <= full_groups)",
           "tokens_logprobs_and_valid and 3x1000 and float32", variant="asan", expect="heap-buffer-overflow",
           quick=False),
    # The rules at the limits (README "Speculative decoding", "Processing") and Note [64-bit sums in
    # shared memory].
    Mutant("verify-inf-count-lost", "cuda/verify_cuda.cu",
           "  if (infs > 0) atomicAdd(&sh.inf_count, infs);\n", "",
           "rules_at_the_limits"),
    Mutant("raw-top-n-of-a-degenerate-row", "cuda/process_cuda.cu",
           "no ticket\n      if (t == 0) a.raw_norms[row] = has_distribution(a.norms[row]) ? norm_of(acc) : empty_norm();",
           "no ticket\n      if (t == 0) a.raw_norms[row] = norm_of(acc);",
           "rules_at_the_limits"),
    # The chosen token's rank (Note [Top-n logprobs]): without its ties and itself; one block's
    # count for a row over several; padding lanes counted where the chosen key is -inf.
    Mutant("rank-counts-only-greater-keys", "cuda/process_cuda.cu",
           "at_least += key >= chosen ? 1u : 0u;", "at_least += key > chosen ? 1u : 0u;",
           "processing_matches and 7x3000"),
    Mutant("rank-from-one-block", "cuda/process_cuda.cu",
           "if (t == 0 && count > 0u) atomicAdd(&state.rank", "if (t == 0 && count > 0u && split == 0) atomicAdd(&state.rank",
           "processing_matches and 1x128256"),
    Mutant("rank-counts-padding-lanes", "cuda/process_cuda.cu",
           "    if (i >= a.p.vocab) return;\n    const uint32_t key = top_entry(y, i, lp).key;",
           "    const uint32_t key = top_entry(y, i, lp).key;",
           "top_logprobs_where_candidates_overflow or logprob_stage_on_point_masses"),
    Mutant("shared-sum-drops-the-high-word", "cuda/block_select.cuh",
           "  if (high + carry != 0u) atomicAdd(&c.hi[i], high + carry);\n", "",
           "warpers_keep_the_same_sets or warper_edge_rows"),
    Mutant("block-sum-skips-a-level", "cuda/block_select.cuh",
           "for (int delta = 16; delta > 0; delta >>= 1) x += __shfl_down_sync(0xffffffffu, x, delta);",
           "for (int delta = 16; delta > 1; delta >>= 1) x += __shfl_down_sync(0xffffffffu, x, delta);",
           "warpers_keep_the_same_sets or warper_edge_rows or verify_draft_matches"),
]


def _run_on_a_copy(edit, variant, pytest_args, quick, own_report, timeout):
    """The emulated tests over a copy of csrc/ that edit(csrc) changes, built as a mutant's are (Note
    [A mutant's build]); None where the variant's runtime is missing."""
    from . import run_variant
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        csrc = pathlib.Path(tmp) / "csrc"
        shutil.copytree(ROOT / "csrc", csrc)
        edit(csrc)
        env = {"SYNCFREE_EMULATION_CSRC": str(csrc), "SYNCFREE_EMULATION_QUICK": "1" if quick else "0"}
        if not own_report:
            env["SYNCFREE_EMULATION_RESOURCES_CSRC"] = str(ROOT / "csrc")
        return run_variant(variant, [str(TESTS / "test_emulated.py"), *pytest_args], timeout, env, fresh_opt="-O1")


def run(mutant, timeout=900):
    """(caught, output) of the emulated tests over a copy of csrc/ with the mutant planted."""
    result = _run_on_a_copy(mutant.apply, mutant.variant, ["-x", "-q", "-k", mutant.tests], mutant.quick,
                            not mutant.keeps_launch_bounds(), timeout)
    if result is None:
        return None, f"no {mutant.variant} runtime here"
    output = result.stdout + result.stderr
    failed_test = result.returncode != 0 and ("FAILED" in output or "Sanitizer" in output
                                              or "runtime error" in output)
    built = "ERROR at setup" not in output and "CalledProcessError" not in output
    ran = " passed" in output or " failed" in output or "Sanitizer" in output
    caught = failed_test and built and ran and mutant.expect in output
    return caught, output


def run_control(timeout=1800):
    """(passed, output): the unmutated sources, every kernel file recompiled as a mutant's are,
    through every plain mutant's selection at once: a mutant counts as caught only if this passes."""
    def touch_kernel_files(csrc):  # a new digest: built afresh, at -O1
        for source in (csrc / "cuda").glob("*.cu"):
            source.write_text(source.read_text() + "\n// the mutants' control\n")

    selection = " or ".join(f"({m.tests})" for m in MUTANTS if m.variant == "plain" and m.quick)
    result = _run_on_a_copy(touch_kernel_files, "plain", ["-q", "-k", selection], True, False, timeout)
    output = result.stdout + result.stderr
    return result.returncode == 0 and " passed" in output, output


def run_all(mutants, workers=None):
    """{name: (caught, output)}, `workers` mutants at a time (default: the cores). Builds take the
    cache's lock one at a time, so one mutant's build overlaps the others' test runs."""
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        return dict(zip([m.name for m in mutants], pool.map(run, mutants)))


if __name__ == "__main__":
    chosen = [m for m in MUTANTS if len(sys.argv) < 2 or m.name in sys.argv[1:]]
    for m in chosen:
        if m.pending:
            print(f"pending  {m.name}: {m.pending}", flush=True)
    for m in [m for m in chosen if not m.pending]:
        caught, output = run(m)
        print(f"{'caught' if caught else 'MISSED' if caught is False else 'skipped'}  {m.name}", flush=True)
        if caught is False:
            print(output[-3000:])
