"""An end-to-end decode loop: a small decoder-only transformer with random weights and a
realistic vocabulary, sampling each next token four ways:

  (a) torch.multinomial(softmax(logits / T))
  (b) the plain PyTorch exponential trick (gpt-fast): argmax(probs / Exp(1))
  (c) syncfree.sample, eager
  (d) syncfree.sample with the whole decode step captured in a CUDA graph (CUDA only)

Prints tokens/s and per-token latency for each. No weights are downloaded.

    python examples/generate.py [--device cuda|cpu] [--batch 8] [--steps 64] [--vocab 128256]
"""
import argparse
import math
import time

import torch

import syncfree


class TinyDecoder(torch.nn.Module):
    """Pre-norm decoder with a static KV cache (static shapes: the step can be graph-captured)."""

    def __init__(self, vocab, dim, layers, heads, max_len, batch, device, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)

        def weight(*shape, scale):
            return torch.nn.Parameter((torch.randn(*shape, generator=g) * scale).to(device, dtype),
                                      requires_grad=False)

        self.heads, self.head_dim = heads, dim // heads
        self.embed = weight(vocab, dim, scale=1.0)
        self.layers = [dict(qkv=weight(dim, 3 * dim, scale=dim ** -0.5), out=weight(dim, dim, scale=dim ** -0.5),
                            up=weight(dim, 4 * dim, scale=dim ** -0.5), down=weight(4 * dim, dim, scale=(4 * dim) ** -0.5))
                       for _ in range(layers)]
        self.head = weight(dim, vocab, scale=3 * dim ** -0.5)  # logits with a few units of spread
        shape = (layers, 2, batch, heads, max_len, self.head_dim)
        self.cache = torch.zeros(shape, device=device, dtype=dtype)
        self.positions = torch.arange(max_len, device=device)

    @staticmethod
    def norm(x):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)

    def step(self, tokens, pos):
        """tokens [B] int64, pos [] int64 tensor (device) -> logits [B, V]."""
        b = tokens.shape[0]
        x = self.embed[tokens]
        visible = self.positions <= pos  # static shape: attend over the whole cache, masked
        for i, layer in enumerate(self.layers):
            q, k, v = (self.norm(x) @ layer["qkv"]).view(b, 3, self.heads, self.head_dim).unbind(1)
            self.cache[i, 0].index_copy_(2, pos.view(1), k.unsqueeze(2))
            self.cache[i, 1].index_copy_(2, pos.view(1), v.unsqueeze(2))
            scores = torch.einsum("bhd,bhtd->bht", q, self.cache[i, 0]) / math.sqrt(self.head_dim)
            scores = scores.masked_fill(~visible, -float("inf")).softmax(-1)
            attended = torch.einsum("bht,bhtd->bhd", scores, self.cache[i, 1]).reshape(b, -1)
            x = x + attended @ layer["out"]
            x = x + torch.relu(self.norm(x) @ layer["up"]) @ layer["down"]
        return (self.norm(x) @ self.head).float()


def multinomial(logits, temperature, step):
    return torch.multinomial(torch.softmax(logits / temperature, -1), 1).squeeze(-1)


def exponential_trick(logits, temperature, step):
    probs = torch.softmax(logits / temperature, -1)
    return torch.argmax(probs / torch.empty_like(probs).exponential_(1), -1)


def run_eager(model, sampler, args, device):
    tokens = torch.zeros(args.batch, dtype=torch.int64, device=device)
    seeds = torch.arange(args.batch, device=device)
    out = []
    for step in range(args.steps):
        pos = torch.tensor(step, device=device)
        logits = model.step(tokens, pos)
        tokens = sampler(logits, args.temperature, step) if sampler else syncfree.sample(
            logits, args.temperature, seed=seeds, offset=pos.expand(args.batch))
        out.append(tokens)
    return torch.stack(out, 1)


def run_graph(model, args, device):
    """(d): one captured decode step (model + syncfree.sample) replayed per token."""
    tokens = torch.zeros(args.batch, dtype=torch.int64, device=device)
    pos = torch.zeros((), dtype=torch.int64, device=device)
    seeds = torch.arange(args.batch, device=device)
    offsets = torch.zeros(args.batch, dtype=torch.int64, device=device)

    def step():
        logits = model.step(tokens, pos)
        offsets.copy_(pos.expand(args.batch))
        syncfree.sample(logits, args.temperature, seed=seeds, offset=offsets, out=tokens)
        pos.add_(1)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    tokens.zero_()
    pos.zero_()
    out = []
    for _ in range(args.steps):
        graph.replay()
        out.append(tokens.clone())
    return torch.stack(out, 1)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = TinyDecoder(args.vocab, args.dim, args.layers, args.heads, args.steps, args.batch, device, dtype)

    methods = [("(a) torch.multinomial", lambda: run_eager(model, multinomial, args, device)),
               ("(b) exponential trick", lambda: run_eager(model, exponential_trick, args, device)),
               ("(c) syncfree eager", lambda: run_eager(model, None, args, device))]
    if device.type == "cuda":
        methods.append(("(d) syncfree + CUDA graph", lambda: run_graph(model, args, device)))
    print(f"decode {args.steps} steps x batch {args.batch}, vocab {args.vocab}, {args.layers} layers of "
          f"dim {args.dim}, {device} {dtype}, T = {args.temperature}")
    print(f"{'method':28s} {'tokens/s':>12s} {'ms/token':>10s}")
    results = {}
    for name, run in methods:
        run()  # warm-up
        tokens, seconds = timed(run, device)
        results[name] = tokens
        print(f"{name:28s} {args.batch * args.steps / seconds:12.0f} {1e3 * seconds / args.steps:10.3f}")
    if "(d) syncfree + CUDA graph" in results:
        same = torch.equal(results["(c) syncfree eager"], results["(d) syncfree + CUDA graph"])
        print(f"graph-captured tokens equal eager tokens: {same}")
    return results


if __name__ == "__main__":
    main()
