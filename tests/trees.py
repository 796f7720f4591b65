"""Draft trees for syncfree.verify_tree's tests, parity checks, fuzz and benchmark: shapes as
parent lists (node order = the drafter's ranking, parents before children), a toy model whose
law depends on the whole prefix, and a plain-Python walk for greedy rows (README "Draft trees")."""
import math

import torch


def full_tree(depth, branching):
    """Parents of a full tree, breadth first: every node above `depth` has `branching` children."""
    parents, level = [-1], [0]
    for _ in range(depth):
        nxt = []
        for node in level:
            for _ in range(branching):
                parents.append(node)
                nxt.append(len(parents) - 1)
        level = nxt
    return parents


def eagle_tree():
    """An EAGLE-like tree of depth 4: a wide root, narrower below, deeper along the best child."""
    return [-1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 5, 5, 6, 8, 11, 11, 13]


def depths(parents):
    d = [0] * len(parents)
    for i in range(1, len(parents)):
        d[i] = d[parents[i]] + 1
    return d


def random_tree(nodes, generator, max_children=4):
    """Parents of a random tree of `nodes` nodes (each new node under a random earlier node
    with room), breadth-first numbered so siblings are consecutive in ranking order."""
    parents, children = [-1], [0]
    for i in range(1, nodes):
        open_nodes = [j for j in range(i) if children[j] < max_children]
        parent = open_nodes[int(torch.randint(len(open_nodes), (1,), generator=generator))]
        parents.append(parent)
        children[parent] += 1
        children.append(0)
    # Renumber breadth first (a node's children after it, siblings in creation order).
    order, queue = [], [0]
    while queue:
        node = queue.pop(0)
        order.append(node)
        queue += [c for c in range(1, nodes) if parents[c] == node]
    new = {old: i for i, old in enumerate(order)}
    return [-1] + [new[parents[old]] for old in order[1:]]


def pad(parents, nodes):
    """A smaller tree padded to `nodes` nodes (padding: parent -1)."""
    return parents + [-1] * (nodes - len(parents))


# The toy model: the logits after a prefix are a smooth hash of the prefix's code, so every
# prefix has its own law and the same prefix the same law in every row.
def child_code(code, token, vocab):
    return code * (vocab + 1) + token + 1


def model_logits(codes, vocab, scale=2.5, salt=0):
    """[..., V] float32 logits for prefix codes [...] (int64)."""
    g = torch.Generator().manual_seed(1000 + salt)
    freq = torch.rand(vocab, generator=g, dtype=torch.float64) * 3 + 0.5
    phase = torch.rand(vocab, generator=g, dtype=torch.float64) * 2 * math.pi
    c = codes.double().unsqueeze(-1)
    return (scale * torch.sin(c * freq * 0.6180339887 + phase) + 0.3 * torch.cos(c * freq * 1.414 + phase)).float()


def node_codes(parents, tokens, vocab, root_code=1):
    """[B, N] prefix codes of each node (its path's tokens after the root) from parents [N] and
    node tokens [B, N]; padded nodes get code -1."""
    b, n = tokens.shape
    codes = torch.full((b, n), -1, dtype=torch.int64)
    codes[:, 0] = root_code
    for i in range(1, n):
        if parents[i] >= 0:
            codes[:, i] = child_code(codes[:, parents[i]], tokens[:, i], vocab)
    return codes


def greedy_walk(target, tokens, parents):
    """verify_tree's greedy rows in plain Python (README "Draft trees"): from the root, the first
    child whose token is the node's argmax (lowest index on ties); stop with that argmax.
    Returns (emitted tokens, path) lists for one row: target [N, V], tokens [N], parents [N]."""
    node, emitted, path = 0, [], [0]
    while True:
        best = int(torch.argmax(target[node]))  # torch.argmax: the first maximum
        child = next((c for c in range(node + 1, len(parents)) if parents[c] == node and int(tokens[c]) == best),
                     None)
        emitted.append(best)
        if child is None:
            return emitted, path
        path.append(child)
        node = child
