"""syncfree.verify_tree on the CPU: the emitted sequence's law against the target's sequential
law (README "Draft trees"), a chain as verify_draft, greedy rows, the noise contract, padding,
processing along the path and bad arguments. The emulated CUDA kernels are held to these tokens
in test_emulated.py.

Law tests: a toy model whose law depends on the whole prefix (trees.model_logits); the emitted
token at step k, among rows that emitted the prefix pi before it, must follow p(. | pi), the
float64 reference of the README's rules (processing with the prefix in the history, then the
warpers). Each (k, pi) group with at least MIN_GROUP rows gets a chi-square test at level 1e-6
(Bonferroni over at most a few hundred groups: < 1e-3 a run, and the seeds are fixed).
"""
import math
import zlib

import pytest
import torch

import syncfree
from reference import chi_square_pvalue, process_reference, warp_reference
from trees import depths, eagle_tree, full_tree, greedy_walk, model_logits, node_codes, pad, random_tree

V = 8
MIN_GROUP = 4000


def reference_law(prefix, config, vocab=V, root_code=1):
    """p(. | prefix) in float64: the model's logits after the prefix, processed with the prefix
    appended to the history, scaled and warped."""
    code = root_code
    for t in prefix:
        code = code * (vocab + 1) + t + 1
    logits = model_logits(torch.tensor([code]), vocab)
    processing = {k: v for k, v in config.items() if k in ("repetition_penalty", "frequency_penalty",
                                                            "presence_penalty", "prompt_tokens")}
    if processing:
        history = config.get("output_tokens", torch.empty(1, 0, dtype=torch.int64))[:1].tolist()[0]
        processing["output_tokens"] = torch.tensor([history + list(prefix)])
        processing["prompt_tokens"] = processing.get("prompt_tokens", torch.empty(1, 0, dtype=torch.int64))[:1]
        processed = process_reference(logits, **processing)
    else:
        processed = logits.double()
    warpers = {k: config[k] for k in ("top_k", "top_p", "min_p", "typical_p") if k in config}
    warped, _ = warp_reference(processed, config.get("temperature", 1.0), **warpers)
    return torch.softmax(warped[0], -1)


def draw_children(parents, rows, q_salt, generator):
    """Node tokens [rows, N] with each node's token drawn from the drafter's law after its
    parent's prefix (softmax of another toy model), and that law [rows, N, V]."""
    n = len(parents)
    tokens = torch.zeros(rows, n, dtype=torch.int64)
    q = torch.zeros(rows, n, V)
    codes = torch.ones(rows, n, dtype=torch.int64)
    for i in range(1, n):
        law = torch.softmax(model_logits(codes[:, parents[i]], V, scale=1.5, salt=q_salt), -1)
        tokens[:, i] = torch.multinomial(law, 1, generator=generator).squeeze(1)
        q[:, i] = law
        codes[:, i] = codes[:, parents[i]] * (V + 1) + tokens[:, i] + 1
    return tokens, q


def fixed_children(parents):
    """Node tokens [N] of a tree of proposals: each node's children are its model law's best
    tokens in order (as a drafter ranks them), with one repeated sibling where a node has three."""
    n = len(parents)
    tokens = torch.zeros(n, dtype=torch.int64)
    codes = [1] * n
    for node in range(n):
        children = [c for c in range(node + 1, n) if parents[c] == node]
        order = torch.argsort(model_logits(torch.tensor([codes[node]]), V)[0], descending=True).tolist()
        for rank, c in enumerate(children):
            tokens[c] = order[rank if rank != 2 else 0]  # the third child repeats the first
            codes[c] = codes[node] * (V + 1) + int(tokens[c]) + 1
    return tokens


def run_law(parents, rows, config, draft_probs, seed0, chunk=50_000):
    """verify_tree over `rows` rows of one tree shape: (tokens, num_accepted)."""
    g = torch.Generator().manual_seed(seed0)
    n = len(parents)
    par = torch.tensor(parents)
    out_tokens, out_accepted = [], []
    for start in range(0, rows, chunk):
        b = min(chunk, rows - start)
        if draft_probs:
            ids, q = draw_children(parents, b, q_salt=seed0 % 7, generator=g)
        else:
            ids, q = fixed_children(parents).expand(b, n).contiguous(), None
        target = model_logits(node_codes(parents, ids, V), V)
        kwargs = {k: (v.expand(b, *v.shape[1:]) if isinstance(v, torch.Tensor) else v) for k, v in config.items()}
        tokens, path, accepted = syncfree.verify_tree(target, ids, par.expand(b, n), q, seed=torch.arange(b) + start
                                                      + seed0, offset=torch.zeros(b, dtype=torch.int64), **kwargs)
        # The path is a path of the tree and its tokens are the emitted ones.
        for k in range(1, n):
            on = accepted >= k
            assert (par[path[on, k]] == path[on, k - 1]).all(), "path: a node whose parent is not the one before it"
            assert torch.equal(ids[on].gather(1, path[on, k:k + 1]).squeeze(1), tokens[on, k - 1])
        out_tokens.append(tokens)
        out_accepted.append(accepted)
    return torch.cat(out_tokens), torch.cat(out_accepted)


def assert_sequential_law(tokens, accepted, config, max_depth):
    """Every (step, prefix) group with MIN_GROUP rows follows the reference law; returns the
    number of groups tested."""
    tested = 0
    for k in range(max_depth + 1):
        reached = accepted >= k
        if not reached.any():
            continue
        emitted = tokens[reached, k]
        if k == 0:
            prefixes, inverse = [[]], torch.zeros(emitted.numel(), dtype=torch.int64)
        else:
            prefixes, inverse = torch.unique(tokens[reached, :k], dim=0, return_inverse=True)
            prefixes = prefixes.tolist()
        for gi, prefix in enumerate(prefixes):
            group = emitted[inverse == gi]
            if group.numel() < MIN_GROUP:
                continue
            p = reference_law(prefix, config)
            pvalue = chi_square_pvalue(group, p)
            assert pvalue > 1e-6, f"step {k} after {prefix}: chi-square p = {pvalue:.2e} over {group.numel()} rows"
            tested += 1
    return tested


SHAPES = {
    "depth 1, branching 4": full_tree(1, 4),
    "depth 2, branching 3": full_tree(2, 3),
    "depth 3, branching 2": full_tree(3, 2),
    "depth 4, branching 1": full_tree(4, 1),
    "eagle, depth 4, up to 4": eagle_tree(),
}
CONFIGS = {
    "plain": dict(temperature=1.0),
    "warped": dict(temperature=0.8, top_k=6, top_p=0.9),
    "penalties": dict(temperature=1.2, min_p=0.05, repetition_penalty=1.3, frequency_penalty=0.4,
                      presence_penalty=0.3, output_tokens=torch.tensor([[1, 1, 5, -1]])),
}


# Each shape with one configuration, the EAGLE-like tree with all three, both kinds of draft:
# 14 cases. The quick tier runs one (draft_probs on the EAGLE-like tree with penalties, ~6 s);
# the slow tier the others.
SHAPE_CONFIGS = [("depth 1, branching 4", "warped"), ("depth 2, branching 3", "penalties"),
                 ("depth 3, branching 2", "plain"), ("depth 4, branching 1", "warped"),
                 ("eagle, depth 4, up to 4", "plain"), ("eagle, depth 4, up to 4", "warped"),
                 ("eagle, depth 4, up to 4", "penalties")]
QUICK_LAW_CASE = ("draft_probs", "eagle, depth 4, up to 4", "penalties")
LAW_CASES = [pytest.param(drafts, shape, config, id=f"{drafts}-{shape}-{config}",
                          marks=() if (drafts, shape, config) == QUICK_LAW_CASE else pytest.mark.slow)
             for drafts in ("proposals", "draft_probs") for shape, config in SHAPE_CONFIGS]


@pytest.mark.parametrize("drafts, shape, config", LAW_CASES)
def test_emitted_sequence_follows_the_target_law(drafts, shape, config):
    """100k rows per case. Power: the root group holds every row, so a law off by 0.02 in one
    token's probability near 0.15 moves its count by 2000, 17.7 sd (sd = sqrt(N p (1 - p)) = 113):
    e.g. accepting the second child with p(c) instead of p(c) / (1 - p(c_1)) (p(c_1) ~ 0.2) is
    caught at the root; a deeper group of 4000 rows moves by 4.7 sd for a 0.03 error on a 0.2
    token. (Both planted bugs of the CPU walk, that renormalisation dropped and the multi-round
    total never recomputed, failed every case with siblings at the root, p < 1e-30.)"""
    parents = SHAPES[shape]
    tokens, accepted = run_law(parents, 100_000, CONFIGS[config], drafts == "draft_probs",
                               seed0=zlib.crc32(f"{shape} {config} {drafts}".encode()) % 1000)
    tested = assert_sequential_law(tokens, accepted, CONFIGS[config], max(depths(parents)))
    assert tested >= 2, "the law was tested past the root"
    assert accepted.max() >= 1


def test_a_chain_is_verify_draft():
    """A tree whose nodes form one chain gives verify_draft's outputs bit for bit: per-row and int
    seeds, the generator, draft_probs and proposals, warpers, processing, a greedy row."""
    g = torch.Generator().manual_seed(4)
    b, n, v = 10, 4, 300
    target = torch.randn(b, n + 1, v, generator=g) * 3
    target[::3] *= 5
    q = torch.softmax(torch.randn(b, n, v, generator=g) * 2, -1)
    drafts = torch.multinomial(q.view(-1, v), 1, generator=g).view(b, n)
    drafts[::3] = target[::3, :n].argmax(-1)
    temps = torch.rand(b, generator=g) + 0.4
    temps[2] = 0.0
    ids = torch.cat([torch.full((b, 1), 5), drafts], 1)  # the root's id is not read
    parents = torch.arange(-1, n).expand(b, n + 1)
    tree_q = torch.cat([torch.full((b, 1, v), float("nan")), q], 1)
    processing = dict(repetition_penalty=1.2, frequency_penalty=0.5, output_tokens=torch.randint(0, v, (b, 5),
                                                                                                  generator=g))
    for chain_q, probs in ((q, tree_q), (None, None)):
        for kwargs in (dict(seed=torch.arange(b), offset=torch.arange(b) * 3), dict(seed=8)):
            for extra in ({}, dict(top_k=20, top_p=0.9), processing):
                want = syncfree.verify_draft(target, drafts, chain_q, temps, return_logprobs=True, return_valid=True,
                                             **kwargs, **extra)
                got = syncfree.verify_tree(target, ids, parents, probs, temps, return_logprobs=True,
                                           return_valid=True, **kwargs, **extra)
                assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[1])
                assert torch.equal(got[3], want[2]) and torch.equal(got[4], want[3])
                k = got[2]
                assert (got[1][:, 0] == 0).all() and all(got[1][r, :k[r] + 1].tolist() == list(range(k[r] + 1))
                                                         for r in range(b))
    gens = [torch.Generator().manual_seed(2) for _ in range(2)]
    assert torch.equal(syncfree.verify_draft(target, drafts, generator=gens[0])[0],
                       syncfree.verify_tree(target, ids, parents, generator=gens[1])[0])


def test_greedy_rows_follow_the_argmax_path():
    g = torch.Generator().manual_seed(9)
    b, v = 12, 40
    for r in range(3):
        parents = random_tree(16, g)
        target = torch.randn(b, 16, v, generator=g)
        ids = torch.randint(0, v, (b, 16), generator=g)
        # Make the argmax path long: each node's argmax is some child's token.
        for node in range(16):
            kids = [c for c in range(16) if parents[c] == node]
            if kids:
                pick = kids[int(torch.randint(len(kids), (1,), generator=g))]
                ids[: b // 2, pick] = target[: b // 2, node].argmax(-1)
        tokens, path, accepted, logprobs = syncfree.verify_tree(target, ids, torch.tensor(parents).expand(b, 16),
                                                                temperature=0.0, return_logprobs=True)
        for row in range(b):
            emitted, want_path = greedy_walk(target[row], ids[row], parents)
            k = len(emitted) - 1
            assert accepted[row].item() == k and tokens[row, :k + 1].tolist() == emitted
            assert path[row, :k + 1].tolist() == want_path and (path[row, k + 1:] == -1).all()
            ref = torch.log_softmax(target[row, want_path].double(), -1).gather(-1, tokens[row, :k + 1, None])
            torch.testing.assert_close(logprobs[row, :k + 1].double(), ref.squeeze(-1), atol=1e-5, rtol=1e-5)
        assert accepted[: b // 2].float().mean() >= 1


def test_rows_do_not_depend_on_their_batch_and_stops_are_sample_calls():
    """Per-row seeds: each row alone (its own tree, padded to the batch's N or not) gives the same
    result. The stop token is syncfree.sample's at the stop node with offset[b] + node, with the
    rejected children's tokens masked (proposals)."""
    g = torch.Generator().manual_seed(5)
    b, n, v = 8, 12, 200
    trees = [random_tree(int(torch.randint(2, n + 1, (1,), generator=g)), g) for _ in range(b)]
    parents = torch.tensor([pad(t, n) for t in trees])
    target = torch.randn(b, n, v, generator=g) * 2
    target[::2] *= 6  # peaked: drafting the argmax is often accepted
    ids = torch.randint(0, v, (b, n), generator=g)
    for row in range(0, b, 2):
        for c in range(1, len(trees[row])):
            ids[row, c] = target[row, trees[row][c]].argmax()
    seeds, offsets = torch.randint(0, 2**62, (b,), generator=g), torch.randint(0, 1000, (b,), generator=g)
    temps = torch.rand(b, generator=g) + 0.5
    tokens, path, accepted = syncfree.verify_tree(target, ids, parents, None, temps, seed=seeds, offset=offsets)
    stops = set()
    for row in range(b):
        m = len(trees[row])
        for width in (n, m):
            alone = syncfree.verify_tree(target[row:row + 1, :width], ids[row:row + 1, :width],
                                         parents[row:row + 1, :width], None, temps[row:row + 1],
                                         seed=seeds[row:row + 1], offset=offsets[row:row + 1])
            k = accepted[row].item()
            assert alone[2].item() == k
            assert alone[0][0, :k + 1].tolist() == tokens[row, :k + 1].tolist()
            assert alone[1][0, :k + 1].tolist() == path[row, :k + 1].tolist()
        node = path[row, k].item()
        assert all(p < m for p in path[row, :k + 1].tolist()), "a padded node was reached"
        children = [c for c in range(m) if trees[row][c] == node]
        x = target[row, node].clone()
        x[ids[row, children]] = -float("inf")
        want = syncfree.sample(x[None], temps[row:row + 1], seed=seeds[row:row + 1], offset=offsets[row:row + 1] + node)
        assert tokens[row, k].item() == want.item()
        stops.add("leaf" if not children else "rejected")
    assert stops == {"leaf", "rejected"}, stops


def test_logprobs_valid_degenerate_nodes_and_the_output_forms():
    g = torch.Generator().manual_seed(6)
    parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, 0, 1], [-1, 0, -1, -1]])
    target = torch.randn(3, 4, 30, generator=g)
    target[1, 1] = -float("inf")  # a degenerate node under an argmax child
    ids = target.argmax(-1)[:, [0, 0, 0, 1]]  # node 1 carries the root's argmax, node 3 node 1's
    out = torch.full((3, 4), 99, dtype=torch.int64)
    res = syncfree.verify_tree(target, ids, parents, params=syncfree.SamplingParams(temperature=0.0),
                               return_logprobs=True, return_valid=True, out=out)
    assert isinstance(res, syncfree.TreeOutput) and res.tokens is out
    assert res.valid.tolist() == [True, False, True]
    assert res.num_accepted.tolist() == [2, 1, 1] and res.tokens[1].tolist() == [ids[1, 1].item(), 0, -1, -1]
    assert res.logprobs[1, 1].item() == -math.inf and (res.logprobs[0, 3:] == -math.inf).all()
    lp = torch.log_softmax(target[0].double(), -1)
    torch.testing.assert_close(res.logprobs[0, :3].double(), lp[[0, 1, 3], res.tokens[0, :3]], atol=1e-5, rtol=1e-5)
    plain = syncfree.verify_tree(target, ids, parents, seed=1)
    assert len(plain) == 3 and plain[2].shape == (3,)
    one_node = syncfree.verify_tree(target[:, :1], ids[:, :1], parents[:, :1], seed=3)
    assert torch.equal(one_node[0][:, 0], syncfree.sample(target[:, 0], seed=3))  # a lone root: its bonus
    assert (one_node[2] == 0).all()


def test_processing_sees_the_path():
    """A node's penalties see the tokens of its path (not its siblings'): a huge presence penalty
    on every token already emitted along the path forbids repeating it; the siblings' tokens stay
    allowed. verify_tree's tokens are checked against that rule over many seeds."""
    v, rows = 6, 400
    parents = torch.tensor([-1, 0, 0, 1, 1, 3]).expand(rows, 6)
    ids = torch.tensor([0, 1, 2, 2, 3, 4]).expand(rows, 6)
    target = torch.zeros(rows, 6, v)
    target[:, :, :5] = 3.0  # token 5 unlikely; tokens 0-4 alike
    tokens, path, accepted = syncfree.verify_tree(target, ids, parents, presence_penalty=1e4,
                                                  output_tokens=torch.full((rows, 1), 0), seed=torch.arange(rows))
    for row in range(rows):
        k = accepted[row].item()
        emitted = tokens[row, :k + 1].tolist()
        assert 0 not in emitted and len(set(emitted)) == len(emitted), emitted
    assert (accepted >= 2).any() and (tokens[:, 0] == 2).any(), "deep paths and the sibling's token both occur"


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(parents=a["parents"].clone().index_fill_(1, torch.tensor([0]), 0)),
     r"parents\[:, 0\] = -1"),
    (lambda a: a["parents"].__setitem__((1, 2), 2), r"parents\[1, 2\] = 2"),
    (lambda a: a["parents"].__setitem__((0, 3), 5), r"parents\[0, 3\] = 5 .*cycle"),
    (lambda a: a["parents"].__setitem__((0, 3), -2), r"parents\[0, 3\] = -2"),
    (lambda a: a["ids"].__setitem__((0, 2), 50), r"draft_ids: expected ids in \[0, V\)"),
    (lambda a: a.update(parents=a["parents"].float()), "parents: expected an int64"),
    (lambda a: a.update(parents=a["parents"][:, :3]), r"parents: expected shape \[B, N\]"),
    (lambda a: a.update(ids=a["ids"][:1]), r"draft_ids: expected shape \[B, N\]"),
    (lambda a: a.update(q=a["q"][:, :2]), r"draft_probs: expected shape \[B, N, V\]"),
    (lambda a: a.update(t=torch.zeros(2, 513, 50)), r"1 <= N <= 512"),
    (lambda a: a.update(t=a["t"][0]), r"target_logits: expected shape \[B, N, V\]"),
    (lambda a: a.update(parents=[[-1, 0, 0, 1]] * 2), "parents: expected an int64 tensor"),
])
def test_bad_arguments_are_named(change, match):
    a = dict(t=torch.randn(2, 4, 50), ids=torch.randint(0, 50, (2, 4)), parents=torch.tensor([[-1, 0, 0, 1]] * 2),
             q=torch.softmax(torch.randn(2, 4, 50), -1))
    a["ids"][:, 0] = -1  # the root's id is not read
    change(a)
    with pytest.raises((ValueError, TypeError), match=match):
        syncfree.verify_tree(a["t"], a["ids"], a["parents"], a["q"], seed=0)


def test_padded_nodes_ids_are_not_read():
    parents = torch.tensor([[-1, 0, -1, -1], [-1, 0, 0, 1]])
    ids = torch.tensor([[-1, 3, -1, 10**9], [7, 1, 2, 3]])
    tokens, path, accepted = syncfree.verify_tree(torch.randn(2, 4, 20), ids, parents, seed=4)
    assert (path[0, 2:] == -1).all() and accepted[0] <= 1
