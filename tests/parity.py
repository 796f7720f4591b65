"""The CUDA kernels against the CPU path, written once for both places they run: a GPU
(test_cuda.py) and the CPU execution layer (test_emulated.py, in CI). Tokens and valid flags
bit for bit, logprobs to float rounding, kept sets (syncfree.warp) bit for bit.
"""
import torch

import cuda_on_cpu
import syncfree
from conftest import warper_edge_rows
from reference import pack_mask

WARPER_CONFIGS = [dict(top_k=1), dict(top_k=50), dict(top_p=0.9), dict(min_p=0.05), dict(typical_p=0.9),
                  dict(top_k=50, top_p=0.9, min_p=0.05), dict(top_k=1000, top_p=0.95, min_p=0.01, typical_p=0.9)]


def config_id(config):
    return "-".join(f"{k}{v}" for k, v in config.items())


def make(b, v, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, v, generator=g) * 3).to(dtype)


class Target:
    """Where the CUDA kernels run: "cuda" (a GPU) or "emulated" (on the CPU, tests/cuda_on_cpu).
    after: called after every call on the target (the emulated tests check the layer's state)."""

    def __init__(self, name, after=None):
        self.name = name
        self.after = after

    def to(self, value):
        if self.name == "cuda" and isinstance(value, torch.Tensor):
            return value.cuda()
        if self.name == "cuda" and isinstance(value, syncfree.SamplingParams):
            return value.replace(**{name: getattr(value, name).cuda() for name in value.given()
                                    if isinstance(getattr(value, name), torch.Tensor)})
        return value

    def call(self, fn, *args, **kwargs):
        """fn on the target's copies of the arguments; tensors of the result back on the CPU."""
        args = [self.to(a) for a in args]
        kwargs = {k: self.to(v) for k, v in kwargs.items()}
        if self.name == "emulated":
            with cuda_on_cpu.emulating():
                result = fn(*args, **kwargs)
        else:
            result = fn(*args, **kwargs)
        if self.after is not None:
            self.after()
        return tuple(r.cpu() for r in result) if isinstance(result, tuple) else result.cpu()


def assert_same(want, got, what=""):
    """tokens and valid bit for bit, logprobs to float rounding."""
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    for w, g in zip(want, got):
        if w.dtype == torch.float32:
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4, msg=what)
        else:
            assert torch.equal(w, g), f"{what}\nCPU    {w.tolist()[:16]}\ntarget {g.tolist()[:16]}"


def check_tokens(target, shape, dtype):
    """Per-row and int seeds, scalar and per-row temperatures with greedy rows, into an out tensor."""
    b, v = shape
    x = make(b, v, dtype)
    x.view(-1)[::97] = -float("inf")
    seeds = torch.randint(0, 2**62, (b,), generator=torch.Generator().manual_seed(1))
    temps = torch.rand(b, generator=torch.Generator().manual_seed(2)) * 2
    temps[::3] = 0  # greedy rows
    for kwargs in (dict(seed=seeds, offset=torch.arange(b)), dict(seed=123, offset=8)):
        want = syncfree.sample(x, 0.9, return_logprobs=True, return_valid=True, **kwargs)
        out = torch.full((b,), -7, dtype=torch.int64)  # a row never written stays -7
        got = target.call(syncfree.sample, x, 0.9, return_logprobs=True, return_valid=True, out=out, **kwargs)
        assert_same(want, got, f"{shape} {dtype} {kwargs}")
        assert_same(syncfree.sample(x, temps, **kwargs), target.call(syncfree.sample, x, temps, **kwargs))


def check_views(target, dtype, padded_shapes):
    """Misaligned, strided, stride-0 and offset-aligned rows (views taken on the target: a copy of a
    view would be contiguous), and rows of a wider buffer whose padding holds huge logits."""
    wide = make(12, 5003, dtype)
    on_target = target.to(wide)
    views = [lambda t: t[:, 1:4001], lambda t: t[::3, 2:], lambda t: t[0].expand(12, 5003),
             lambda t: t.view(-1)[1:1 + 11 * 5003].view(11, 5003),  # base off 16-byte alignment
             lambda t: t[:, :4000]]  # an aligned base, rows off it (the stride: 5003 elements)
    for view in views:
        assert_same(syncfree.sample(view(wide), seed=4), target.call(syncfree.sample, view(on_target), seed=4))
    aligned = make(12, 5008, dtype)
    step = 16 // aligned.element_size()  # an offset view still 16-byte aligned
    assert_same(syncfree.sample(aligned[:, step:], seed=4),
                target.call(syncfree.sample, target.to(aligned)[:, step:], seed=4))
    # 16-byte aligned rows whose length is no multiple of the group: the last group is read
    # element by element.
    for b, v in padded_shapes:
        pad = 16 - v % 16 if v % 16 else 16
        buffer = make(b, v + pad, dtype)
        buffer[:, v:] = 1e4
        x, padded = buffer[:, :v], target.to(buffer)[:, :v]
        assert_same(syncfree.sample(x, seed=3, return_valid=True),
                    target.call(syncfree.sample, padded, seed=3, return_valid=True))


def check_degenerate_rows(target, vocab):
    """All-masked, NaN, +inf (late chunks), one finite token, half-NaN rows; rows that a tiny
    temperature scales to -inf everywhere; negative weights."""
    x = torch.randn(6, vocab, generator=torch.Generator().manual_seed(0))
    x[0] = -float("inf")
    x[1] = float("nan")
    x[2, [vocab - 10, vocab - 200]] = float("inf")  # late chunks
    x[3] = -float("inf")
    x[3, vocab - 3] = 0.5  # one finite token among -inf
    x[4, : vocab // 2] = float("nan")
    for temperature in (1.0, 0.0):
        want = syncfree.sample(x, temperature, seed=1, return_logprobs=True, return_valid=True)
        assert want[0][:3].tolist() == [0, 0, vocab - 200] and want[2][:4].tolist() == [False, False, True, True]
        assert_same(want, target.call(syncfree.sample, x, temperature, seed=1, return_logprobs=True,
                                      return_valid=True))
    # Every logit / T overflowing to -inf: the raw argmax (split rows too). 1.2e-38 samples (it is at
    # least 2^-126), and logits of -5 and below scale past -FLT_MAX.
    negative = -torch.rand(3, vocab, generator=torch.Generator().manual_seed(1)) * 4 - 5
    negative[1, : vocab // 2] = -float("inf")
    for temperature in (1.2e-38, torch.tensor([1.2e-38, 0.7, 2.0**-126])):
        want = syncfree.sample(negative, temperature, seed=3, return_logprobs=True, return_valid=True)
        assert_same(want, target.call(syncfree.sample, negative, temperature, seed=3, return_logprobs=True,
                                      return_valid=True))
        assert want[2].all()
    probs = x.exp()
    probs[5, ::2] = -1.0  # negative weights count as 0
    assert_same(syncfree.sample_probs(probs, seed=2, return_valid=True),
                target.call(syncfree.sample_probs, probs, seed=2, return_valid=True))


def check_sample_probs(target, shape):
    w = make(*shape, torch.float32).exp()
    w.view(-1)[::5] = 0
    for kwargs in (dict(seed=9), dict(seed=torch.arange(shape[0]) * 7, offset=torch.arange(shape[0]))):
        assert_same(syncfree.sample_probs(w, return_valid=True, **kwargs),
                    target.call(syncfree.sample_probs, w, return_valid=True, **kwargs))


def check_warpers(target, shape, dtype, config):
    """The same thresholds (exact integer masses), so the same kept sets and tokens."""
    x = make(*shape, dtype)
    seeds = torch.arange(shape[0]) * 5
    temps = torch.rand(shape[0], generator=torch.Generator().manual_seed(3)) + 0.4
    want = syncfree.sample(x, temps, seed=seeds, return_logprobs=True, **config)
    assert_same(want, target.call(syncfree.sample, x, temps, seed=seeds, return_logprobs=True, **config))
    assert_same(syncfree.sample(x, temps, seed=seeds, return_valid=True, **config),
                target.call(syncfree.sample, x, temps, seed=seeds, return_valid=True, **config))
    want_w, want_lp = syncfree.warp(x, temps, **config)
    got_w, got_lp = target.call(syncfree.warp, x, temps, **config)
    assert torch.equal(want_w, got_w), "kept sets differ"
    torch.testing.assert_close(got_lp, want_lp, atol=1e-4, rtol=1e-4)


def check_per_row_warpers(target, rows):
    """Per-row values, clamped where out of range (README "Bad input"), NaN included."""
    x = make(rows, 5000, torch.bfloat16)
    g = torch.Generator().manual_seed(4)
    config = dict(top_k=torch.randint(-5, 6000, (rows,), generator=g),
                  top_p=torch.rand(rows, generator=g) * 1.4 - 0.2,
                  min_p=torch.rand(rows, generator=g) * 0.3 - 0.05,
                  typical_p=torch.rand(rows, generator=g) * 1.4 - 0.1)
    config["top_p"][::5] = float("nan")
    temps = torch.rand(rows, generator=g) * 1.5
    temps[::7] = 0
    seeds = torch.arange(rows)
    assert_same(syncfree.sample(x, temps, seed=seeds, return_logprobs=True, return_valid=True, **config),
                target.call(syncfree.sample, x, temps, seed=seeds, return_logprobs=True, return_valid=True, **config))
    assert torch.equal(syncfree.warp(x, temps, **config)[0], target.call(syncfree.warp, x, temps, **config)[0])


CANDIDATE_CONFIGS = [dict(top_k=50), dict(top_p=0.9), dict(top_k=5000, top_p=0.5, min_p=0.1),
                     dict(top_p=0.95, typical_p=0.8), dict(top_k=[10, 30, 0, 7000, 50, 2], top_p=[0.9, 1.0, 0.3, 0.99, 1.0, 0.5])]


def check_warper_candidates(target, configs=CANDIDATE_CONFIGS):
    """Rows whose candidates (the tokens from the first selection's bin up) overflow the CUDA
    candidate buffer (4096 entries at small batches; a near-flat row puts all 20000 tokens in one
    bin) next to rows whose candidates fit (a few peaked tokens): the overflowing rows take the
    full-row passes and the sampling kernel's race, the others the compacted ones. Returns the
    rows and temperatures (the emulated test checks which rows fit)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, 3, (6, 20000), generator=g) * 0.25  # ~6700 ties on each of three values
    x[1::2] += (torch.rand(3, 20000, generator=g) < 0.005) * 8.0  # peaked rows: ~100 tokens far above
    x[4, :100] = -float("inf")
    temps = torch.tensor([1.0, 0.7, 1.3, 1.0, 0.9, 2.0])
    seeds = torch.arange(6) * 11
    for config in configs:
        config = {k: torch.tensor(v) if isinstance(v, list) else v for k, v in config.items()}
        for extra in (dict(return_logprobs=True, return_valid=True), dict()):
            assert_same(syncfree.sample(x, temps, seed=seeds, **extra, **config),
                        target.call(syncfree.sample, x, temps, seed=seeds, **extra, **config), str(config))
        assert torch.equal(syncfree.warp(x, temps, **config)[0], target.call(syncfree.warp, x, temps, **config)[0])
    return x, temps


def check_warper_edge_rows(target):
    """Masked tokens, +inf rows, all-masked and constant rows, greedy rows (warp still warps), top_p and
    typical_p 0, top_k above the unmasked count, an expanded (stride 0) input, ties at every threshold."""
    x, temps, config = warper_edge_rows()
    b, v = x.shape
    assert torch.equal(syncfree.warp(x, temps, **config)[0], target.call(syncfree.warp, x, temps, **config)[0])
    assert_same(syncfree.sample(x, temps, seed=torch.arange(b), return_valid=True, **config),
                target.call(syncfree.sample, x, temps, seed=torch.arange(b), return_valid=True, **config))
    row = make(1, v, torch.bfloat16)[0]
    expanded = row.expand(8, v)
    assert torch.equal(syncfree.warp(expanded, 0.7, top_k=40, top_p=0.9)[0],
                       target.call(syncfree.warp, target.to(row).expand(8, v), 0.7, top_k=40, top_p=0.9)[0])
    ties = torch.zeros(2, 600)  # ties at every threshold
    ties[:, ::3] = 1.0
    for config in (dict(top_k=5), dict(top_p=0.5), dict(typical_p=0.3), dict(min_p=0.5)):
        assert torch.equal(syncfree.warp(ties, **config)[0], target.call(syncfree.warp, ties, **config)[0])


def check_verify(target, rows=12, n=3, vocab=3000):
    """syncfree.verify_draft: every stop (rejection with and without draft_probs, a residual with no
    mass, the bonus), greedy rows, warpers per row, a +inf position, a degenerate one, a split-size
    vocabulary, an int seed and per-row seeds; tokens, counts and valid bit for bit."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(rows, n + 1, vocab, generator=g) * 3
    x[::3] *= 4  # peaked rows: drafts of their argmax mostly accepted, bonus tokens
    q = torch.softmax(torch.randn(rows, n, vocab, generator=g) * 3, -1)
    temps = torch.rand(rows, generator=g) + 0.5
    if rows >= 8:
        x[4, min(1, n)] = -float("inf")  # a degenerate position
        x[5, min(2, n), 17] = float("inf")
        q[6] = torch.softmax(x[6, :n] / 0.9, -1)  # q close to p: residuals with little or no mass
        temps[7] = 0.0  # greedy
    ids = torch.multinomial(q.view(-1, vocab), 1, generator=g).view(rows, n)
    ids[::3] = x[::3, :n].argmax(-1)
    config = dict(top_k=torch.randint(0, 80, (rows,), generator=g), top_p=torch.rand(rows, generator=g) * 0.5 + 0.5,
                  min_p=0.01)
    seeds = torch.randint(0, 2**62, (rows,), generator=g)
    for draft_probs in (q, None):
        for kwargs in (dict(seed=seeds, offset=torch.arange(rows)), dict(seed=77)):
            for warpers in ({}, config):
                want = syncfree.verify_draft(x, ids, draft_probs, temps, return_logprobs=True, return_valid=True,
                                             **kwargs, **warpers)
                got = target.call(syncfree.verify_draft, x, ids, draft_probs, temps, return_logprobs=True,
                                  return_valid=True, **kwargs, **warpers)
                assert_same(want, got, f"verify_draft {'q' if draft_probs is not None else 'one-hot'} {kwargs.keys()}")
    return want


def verify_processing(rows, n, vocab, g):
    """A SamplingParams with every processing field for verify_draft: per-row and scalar penalties,
    histories with padding, a bias, one allowed mask per position (README "Speculative decoding")."""
    words = (vocab + 31) // 32
    mask = torch.randint(-2**31, 2**31, (rows, n + 1, words), generator=g, dtype=torch.int64).to(torch.int32)
    mask |= 0x00FF00FF  # a quarter of the tokens always allowed: no position is degenerate by the mask
    history = torch.randint(0, vocab, (rows, 6), generator=g)
    history[:, 4:] = -1
    return syncfree.SamplingParams(
        temperature=torch.rand(rows, generator=g) + 0.5, top_k=torch.randint(0, 80, (rows,), generator=g),
        repetition_penalty=torch.rand(rows, generator=g) + 1.0, frequency_penalty=0.7,
        presence_penalty=torch.rand(rows, generator=g), output_tokens=history,
        prompt_tokens=torch.randint(0, vocab, (rows, 3), generator=g),
        bias_tokens=torch.randint(0, vocab, (rows, 2), generator=g), bias_values=torch.randn(rows, 2, generator=g) * 4,
        allowed_mask=mask)


def check_verify_processing(target, rows=6, n=3, vocab=2050):
    """syncfree.verify_draft with processing (each position its own history, bias and mask) in the
    kernels' processing variants: tokens, counts, logprobs and valid bit for bit, with draft
    probabilities and one-hot drafts, greedy rows among them."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(rows, n + 1, vocab, generator=g) * 3
    params = verify_processing(rows, n, vocab, g)
    params = params.replace(temperature=params.temperature.index_fill(0, torch.tensor([1]), 0.0))  # a greedy row
    q = torch.softmax(torch.randn(rows, n, vocab, generator=g) * 3, -1)
    ids = x[:, :n].argmax(-1)  # drafts the raw target likes: the processing decides
    ids[::2] = torch.multinomial(q[::2].reshape(-1, vocab), 1, generator=g).view(-1, n)
    for draft_probs in (q, None):
        for dtype in (torch.float32, torch.bfloat16):
            want = syncfree.verify_draft(x.to(dtype), ids, draft_probs, params, seed=torch.arange(rows) + 5,
                                         return_logprobs=True, return_valid=True)
            got = target.call(syncfree.verify_draft, x.to(dtype), ids, draft_probs, params,
                              seed=torch.arange(rows) + 5, return_logprobs=True, return_valid=True)
            assert_same(tuple(want), tuple(got), f"verify_draft with processing, {dtype}")
    return want


def processed_copy(target, drafts, params):
    """verify_draft's processing written out (README "Speculative decoding"): each position's
    processed logits through syncfree.warp (temperature 1, no warpers), with the drafts before j
    appended to the row's history; verify_draft on it with warpers_of(params) is the reference."""
    b, m, v = target.shape
    n = m - 1
    fields = {}
    for name in params.given("processing"):
        value = getattr(params, name)
        if not isinstance(value, torch.Tensor):
            fields[name] = value
            continue
        if name == "allowed_mask" and value.dim() == 3:
            fields[name] = value.reshape(b * m, -1)
            continue
        per_position = value.unsqueeze(1).expand(b, m, *value.shape[1:])
        fields[name] = per_position.reshape(b * m, *value.shape[1:])
    before = torch.arange(n) < torch.arange(m).unsqueeze(1)
    history = torch.where(before, drafts.unsqueeze(1), -1).reshape(b * m, n)
    if "output_tokens" in fields:
        history = torch.cat([fields["output_tokens"], history], 1)
    fields["output_tokens"] = history
    if not any(name in fields for name in ("repetition_penalty", "frequency_penalty", "presence_penalty")):
        fields.pop("output_tokens")
    return syncfree.warp(target.reshape(b * m, v), **fields)[0].reshape(b, m, v)


def warpers_of(params):
    """params without its processing fields."""
    return params.replace(**{name: None if kind == "tensor" else identity
                             for name, kind, identity, group in syncfree.params.FIELDS if group == "processing"})


def check_verify_ids_outside_the_vocabulary(target, rows=4, n=3, vocab=2999):
    """CUDA's contract for what it cannot check without a sync (README "Speculative decoding"): a
    draft id outside [0, V) is rejected, as if p(x) = 0, and the row emits from p_j. The CPU path
    raises instead, so the reference is the CPU path over a vocabulary one token wider whose extra
    token has a logit of -inf, drafted in place of each out-of-range id (per-row seeds: the noise
    of a position does not depend on V)."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(rows, n + 1, vocab, generator=g) * 10
    ids = x[:, :n].argmax(-1)  # drafts the target likes: accepted unless out of range
    ids[0, 0], ids[1, 1], ids[2, 2], ids[3, 0] = vocab, vocab + 7, -1, -(2**40)
    x[0, 1, 0] = 1000.0  # what a read one past row 0's first position finds: a token it would accept
    wider = torch.cat([x, torch.full((rows, n + 1, 1), -float("inf"))], -1)
    kwargs = dict(seed=torch.arange(rows) + 3, offset=torch.arange(rows), return_logprobs=True, return_valid=True)
    for temperature in (1.0, 0.0):
        want = syncfree.verify_draft(wider, ids.where((ids >= 0) & (ids < vocab), vocab), None, temperature, **kwargs)
        got = target.call(syncfree.verify_draft, x, ids, None, temperature, **kwargs)
        assert_same(want, got, f"verify_draft, draft ids outside [0, V), temperature {temperature}")
        assert (got[1] <= torch.tensor([0, 1, 2, 0])).all(), got[1]


def tree_case(rows, nodes, vocab, g):
    """Random trees padded to `nodes` (a chain, a star, duplicate siblings among them), target
    logits with peaked rows whose children carry the argmax (deep paths), a +inf node, a
    degenerate one; proposals and draft_probs [B, N, V]."""
    from trees import pad, random_tree
    shapes = [list(range(-1, nodes - 1)), [-1] + [0] * (nodes - 1)]
    shapes += [random_tree(int(torch.randint(2, nodes + 1, (1,), generator=g)), g) for _ in range(rows - 2)]
    parents = torch.tensor([pad(t, nodes) for t in shapes])
    x = torch.randn(rows, nodes, vocab, generator=g) * 3
    x[::3] *= 4
    q = torch.softmax(torch.randn(rows, nodes, vocab, generator=g) * 3, -1)
    ids = torch.multinomial(q.view(-1, vocab), 1, generator=g).view(rows, nodes)
    for row in range(0, rows, 3):
        for c in range(1, nodes):
            if parents[row, c] >= 0:
                ids[row, c] = x[row, parents[row, c]].argmax()
    for row in range(1, rows, 3):  # siblings sharing most of the mass, the drafter's law unlike the target's:
        for node in range(nodes):      # rejections followed by acceptances, multi-round residuals
            kids = (parents[row] == node).nonzero().squeeze(1)
            if kids.numel() > 0:
                x[row, node, ids[row, kids]] = 12 + torch.randn(kids.numel(), generator=g) * 0.7
                law = torch.softmax(torch.randn(vocab, generator=g), -1) * 0.2
                law[ids[row, kids]] += 0.8 * torch.softmax(-2 * x[row, node, ids[row, kids]], -1)  # the unlikely ones
                q[row, kids] = law
    ids[1, 2] = ids[1, 1]  # duplicate siblings under the star's root
    if rows >= 6:
        x[3, 0, 17] = float("inf")
        x[5, 1] = -float("inf")
    return x, ids, parents, q


def check_verify_tree(target, rows=16, nodes=12, vocab=3000, processing=False, quick=False):
    """syncfree.verify_tree: tokens, path, counts, logprobs and valid bit for bit, with proposals
    and draft_probs (several rejections per node: the residual totals' passes), warpers, greedy
    rows, per-row and int seeds; with processing, each node's path in its history. quick: half
    the combinations (each kind of draft with each kind of seed once, warpers on alternate ones)."""
    g = torch.Generator().manual_seed(31)
    x, ids, parents, q = tree_case(rows, nodes, vocab, g)
    temps = torch.rand(rows, generator=g) + 0.5
    temps[min(6, rows - 1)] = 0.0
    options = [dict(top_k=torch.randint(0, 80, (rows,), generator=g), top_p=0.9, min_p=0.01)]
    if processing:
        options = [dict(repetition_penalty=1.3, frequency_penalty=0.6, presence_penalty=torch.rand(rows, generator=g),
                        output_tokens=torch.randint(0, vocab, (rows, 4), generator=g),
                        bias_tokens=torch.randint(0, vocab, (rows, 2), generator=g), bias_values=torch.randn(rows, 2))]
    else:
        options.append({})
    seeds = (dict(seed=torch.randint(0, 2**62, (rows,), generator=g), offset=torch.arange(rows)), dict(seed=77))
    combos = [(draft_probs, kwargs, extra) for draft_probs in (q, None) for kwargs in seeds for extra in options]
    if quick:  # q per-row seeds, q int seed, proposals per-row, proposals int: warpers on the first and third
        combos = [combos[i] for i in ((0, 3, 4, 7) if len(options) == 2 else (0, 3))]
    for draft_probs, kwargs, extra in combos:
        want = syncfree.verify_tree(x, ids, parents, draft_probs, temps, return_logprobs=True, return_valid=True,
                                    **kwargs, **extra)
        got = target.call(syncfree.verify_tree, x, ids, parents, draft_probs, temps, return_logprobs=True,
                          return_valid=True, **kwargs, **extra)
        assert_same(want, got, f"verify_tree {'q' if draft_probs is not None else 'proposals'} "
                               f"{sorted(kwargs)} {sorted(extra)}")
    return want


def check_verify_tree_unchecked(target, rows=4, nodes=6, vocab=2999):
    """What CUDA cannot check without a sync (README "Draft trees"): a node whose parent is not an
    earlier node (a forward, self or out-of-range parent) is never reached, as padding is; a
    draft id outside [0, V) is rejected. The CPU reference: those parents as -1, and the ids as
    the extra token of a vocabulary one wider whose logit is -inf."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(rows, nodes, vocab, generator=g) * 10
    parents = torch.tensor([[-1, 0, 1, 2, 3, 4]] * rows)
    ids = torch.cat([torch.zeros(rows, 1, dtype=torch.int64), x[:, :nodes - 1].argmax(-1)], 1)  # all likely
    parents[0, 2], parents[1, 3], parents[2, 4], parents[3, 1] = 5, 3, -7, 2**32  # 2^32: 0 in 32 bits
    parents[0, 0] = 3  # the root's parent is not read
    ids[1, 1], ids[2, 1], ids[3, 2] = vocab, -(2**40), -1
    fixed = parents.where((parents >= 0) & (parents < torch.arange(nodes)), -1)
    fixed[:, 0] = -1
    wider = torch.cat([x, torch.full((rows, nodes, 1), -float("inf"))], -1)
    kwargs = dict(seed=torch.arange(rows) + 3, offset=torch.arange(rows), return_logprobs=True, return_valid=True)
    for temperature in (1.0, 0.0):
        want = syncfree.verify_tree(wider, ids.where((ids >= 0) & (ids < vocab), vocab).where(fixed >= 0, 0), fixed,
                                    None, temperature, **kwargs)
        got = target.call(syncfree.verify_tree, x, ids, parents, None, temperature, **kwargs)
        assert_same(want, got, f"verify_tree, unchecked parents and ids, temperature {temperature}")


def processing_case(b, v, seed=0):
    """Processing arguments for b rows of v tokens: per-row penalties (off in some rows, NaN and
    negative clamped), histories with -1 padding and duplicates, a bias with duplicates and ±inf,
    a mask (one row all zero)."""
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(0, v, (b, 48), generator=g)
    history[:, 40:] = -1
    history[:, 1] = history[:, 0]  # a duplicate: counted twice
    prompt = torch.randint(0, v, (b, 24), generator=g)
    prompt[0] = -1  # padding only
    bias_tokens = torch.randint(0, v, (b, 6), generator=g)
    bias_tokens[:, 5] = bias_tokens[:, 4]  # a duplicate: the last slot wins
    bias_tokens[:, 3] = -1
    bias_values = torch.randn(b, 6, generator=g) * 4
    if b > 2:
        bias_values[1, 2] = float("inf")
        bias_values[2, 0] = -float("inf")
    allowed = torch.rand(b, v, generator=g) < 0.7
    allowed[-1] = False  # a degenerate row
    repetition = torch.rand(b, generator=g) + 0.6
    repetition[::4] = 1.0
    repetition[1::5] = float("nan")
    frequency = torch.randn(b, generator=g)
    frequency[2::5] = float("nan")
    return dict(repetition_penalty=repetition, frequency_penalty=frequency, presence_penalty=0.4,
                output_tokens=history, prompt_tokens=prompt, bias_tokens=bias_tokens, bias_values=bias_values,
                allowed_mask=pack_mask(allowed))


def check_processing(target, shape, dtype, n=8):
    """Mask, bias and penalties with per-row warpers and greedy rows, top-n logprobs and ranks in
    both modes (ranks alone too: the scan without the top-n's passes): tokens, valid, top ids and
    ranks bit for bit, logprobs to float rounding; the warped logits."""
    b, v = shape
    x = make(b, v, dtype)
    process = processing_case(b, v)
    g = torch.Generator().manual_seed(5)
    temps = torch.rand(b, generator=g) + 0.4
    temps[::3] = 0.0  # greedy rows
    warpers = dict(top_k=torch.randint(0, 40, (b,), generator=g), top_p=torch.rand(b, generator=g) * 0.5 + 0.5)
    seeds = torch.arange(b) * 3
    for mode in ("processed", "raw"):
        for config in ({}, warpers):
            for top in (dict(return_top_logprobs=n, return_logprobs=True, return_valid=True), {}):
                kwargs = dict(seed=seeds, logprobs_mode=mode, return_rank=True, **top, **process, **config)
                assert_same(syncfree.sample(x, temps, **kwargs), target.call(syncfree.sample, x, temps, **kwargs),
                            f"processing {shape} {dtype} {mode} {list(config)} {list(top)}")
    assert_same(syncfree.sample(x, 0.8, seed=1, **process), target.call(syncfree.sample, x, 0.8, seed=1, **process))
    want_w, _ = syncfree.warp(x, temps, **process, **warpers)
    assert torch.equal(want_w, target.call(syncfree.warp, x, temps, **process, **warpers)[0]), "processed logits differ"


def check_top_logprob_edges(target, vocab=20000):
    """Top-n where the CUDA candidates overflow: fewer kept tokens than n (ties at -inf), a flat
    row (every token in one bin), +inf rows, a temperature that overflows every logit (the point
    mass), an all-masked row; and scalar processing with an int seed."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, vocab, generator=g)
    x[1] = 0.5  # flat
    x[2, [vocab - 5, 3]] = float("inf")
    x[3] = -torch.rand(vocab, generator=g) - 5  # with T = 1.2e-38 every logit / T is -inf
    x[4] = -float("inf")
    temps = torch.tensor([0.8, 1.0, 1.0, 1.2e-38, 1.0, 0.0])
    for mode in ("processed", "raw"):
        for top_k in (3, 0):
            kwargs = dict(seed=torch.arange(6), return_logprobs=True, return_valid=True, return_top_logprobs=20,
                          logprobs_mode=mode, top_k=top_k, return_rank=True)
            assert_same(syncfree.sample(x, temps, **kwargs), target.call(syncfree.sample, x, temps, **kwargs),
                        f"top-n edges {mode} top_k={top_k}")
    kwargs = dict(seed=5, repetition_penalty=1.3, frequency_penalty=0.5, output_tokens=torch.tensor([[1, 2, 3]] * 6),
                  return_top_logprobs=4)
    assert_same(syncfree.sample(x, 0.9, **kwargs), target.call(syncfree.sample, x, 0.9, **kwargs))


def check_logprob_stage_edges(target, vocab=3000):
    """The logprob stage on rows its histograms make edge cases of: a point mass (one finite logit,
    its logprob exactly 0: a top-1 key on its bin's floor), rows decided by +inf logits alone (every
    finite logit -inf, or masked), in both logprob modes, top-1 and top-3."""
    g = torch.Generator().manual_seed(13)
    x = torch.full((6, vocab), -float("inf"))
    x[0, 17] = 2.5  # a point mass
    x[1, [5, vocab - 2]] = float("inf")  # +inf and -inf only
    x[2, vocab // 2] = float("inf")
    x[3] = torch.randn(vocab, generator=g)
    x[3, [7, 8]] = float("inf")  # +inf, and finite logits the mask removes
    x[4] = torch.randn(vocab, generator=g) * 3
    x[5, vocab - 1] = -1.0  # a point mass on the last token
    mask = torch.full((6, (vocab + 31) // 32), -1, dtype=torch.int32)
    mask[3] = 0
    mask[3, 0] = 0b110000000  # tokens 7 and 8
    for mode in ("processed", "raw"):
        for n in (1, 3):
            for extra in ({}, dict(allowed_mask=mask)):
                kwargs = dict(seed=torch.arange(6), return_logprobs=True, return_valid=True, return_top_logprobs=n,
                              logprobs_mode=mode, return_rank=True, **extra)
                assert_same(syncfree.sample(x, 0.9, **kwargs), target.call(syncfree.sample, x, 0.9, **kwargs),
                            f"logprob stage edges {mode} top-{n} {list(extra)}")


def check_limits(target, vocab=3000):
    """The rules at the limits (README "API", "Semantics", "Processing"): temperatures around the
    greedy threshold 2^-126, scalar and per row, with warpers and top-n; a row the mask empties and a
    +inf row, in both logprob modes; +inf positions in verify_draft; warp's logprobs of +inf and
    empty rows."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, vocab, generator=g)
    x[1, [7, vocab - 3]] = float("inf")
    x[4, ::5] = -float("inf")
    temps = torch.tensor([2.0**-149, 1e-39, 2.0**-126 - 2.0**-149, 2.0**-126, 0.7, 1e-39])
    mask = torch.full((6, (vocab + 31) // 32), -1, dtype=torch.int32)
    mask[5] = 0  # the mask empties row 5
    for mode in ("processed", "raw"):
        for t in (temps, 1e-39):
            kwargs = dict(seed=torch.arange(6), return_logprobs=True, return_valid=True, return_top_logprobs=5,
                          logprobs_mode=mode, top_k=7, allowed_mask=mask)
            assert_same(syncfree.sample(x, t, **kwargs), target.call(syncfree.sample, x, t, **kwargs),
                        f"limits {mode} {t}")
    # Rows split over blocks whose top-n spans several bins of the first digit: two tokens far above
    # the rest, so the n-th key lies below tokens already counted (the scan's count above it matters).
    # And split rows whose mass is spread over every chunk (the raw normaliser merges them all).
    spread = torch.randn(2, 20000, generator=g)
    wide = spread.clone()
    wide[:, 5], wide[:, 9], wide[1, 17] = 30.0, 20.0, 25.0
    for rows_ in (wide, spread):
        for mode in ("processed", "raw"):
            kwargs = dict(seed=3, return_logprobs=True, return_top_logprobs=5, logprobs_mode=mode)
            assert_same(syncfree.sample(rows_, 0.9, **kwargs), target.call(syncfree.sample, rows_, 0.9, **kwargs),
                        f"split top-n {mode}")
    rows = torch.stack([x[1], torch.full((vocab,), -float("inf")), x[0]])
    want = syncfree.warp(rows, 0.8)
    got = target.call(syncfree.warp, rows, 0.8)
    assert torch.equal(want[0], got[0]) and torch.allclose(want[1], got[1], atol=1e-5), "warp at the limits"
    # verify_draft: +inf positions (accepted and stopping), sampled and greedy rows.
    target_logits = torch.randn(3, 3, vocab, generator=g)
    target_logits[:, 0, [3, 9]] = float("inf")
    target_logits[:, 1, [4, 5, 6]] = float("inf")
    drafts = torch.tensor([[3, 4], [3, 5], [9, 4]])
    for t in (1.0, torch.tensor([0.0, 1e-39, 0.9])):
        kwargs = dict(seed=torch.arange(3), offset=torch.arange(3), return_logprobs=True, return_valid=True)
        assert_same(syncfree.verify_draft(target_logits, drafts, None, t, **kwargs),
                    target.call(syncfree.verify_draft, target_logits, drafts, None, t, **kwargs), f"verify +inf {t}")


def merged_logprob_rows(b=192, v=4096):
    """Rows whose raw logprobs float32 rounding merges: one top token (id 7, logit 1.0) and a
    cluster of 8..55 logits 0.75 + k * 2^-24..2^-21 at spread ids, rising with the id, so a tie of
    logprobs goes to the lower id, which has the lower logit. The logprobs lie in [-8, -4), where
    a float32 step is 2^-21: ties up to 8 logits wide, wider than the CPU's kTopSlack (4)."""
    g = torch.Generator().manual_seed(21)
    x = torch.rand(b, v, generator=g) * 4 - 6
    x[:, 7] = 1.0
    for row in range(b):
        size = 8 + row % 48
        ids = 100 + torch.arange(size) * 61
        x[row, ids] = 0.75 + 2.0 ** -(24 - row % 4) * torch.arange(size, dtype=torch.float32)
    return x


def check_merged_raw_logprobs(target, rows=192):
    """Raw top-n and the rank on merged_logprob_rows, against every token measured in plain PyTorch
    with the call's own normaliser: the top token's logprob is 0 - log_sum, exactly -log_sum, and
    float32 subtraction rounds as the kernels and the CPU path do."""
    x = merged_logprob_rows(rows)
    for n in (20, 5, 1):
        tokens, top_ids, top_lp, rank = target.call(syncfree.sample, x, 1.0, seed=torch.arange(x.shape[0]),
                                                    return_rank=True, return_top_logprobs=n, logprobs_mode="raw")
        assert (top_ids[:, 0] == 7).all()
        logprobs = (x - 1.0) - (-top_lp[:, :1])
        expected = torch.sort(-logprobs, dim=-1, stable=True).indices[:, :n]  # ties keep the lower id first
        assert torch.equal(top_ids, expected), n
        assert torch.equal(top_lp, logprobs.gather(-1, expected))
        chosen = logprobs.gather(-1, tokens[:, None])
        assert torch.equal(rank, (logprobs >= chosen).sum(-1))
        if n == 20:  # the rows do merge logprobs across the top n's edge, and around chosen tokens
            assert (expected != torch.sort(-x, dim=-1, stable=True).indices[:, :n]).any()
            assert ((logprobs == chosen).sum(-1) > 1).sum() > rows // 20
