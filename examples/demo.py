"""syncfree in one minute: sample next tokens, check the law, time it against torch.multinomial.

python examples/demo.py [--device cpu|cuda]
"""
import argparse
import time

import torch

import syncfree


def timed(fn, device, repeats):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = args.device
    batch, vocab, temperature = 8, 128_256, 0.8
    logits = torch.randn(batch, vocab, device=device) * 3

    print(f"syncfree {syncfree.__version__} on {device} (torch {torch.__version__})")
    tokens, logprobs, valid = syncfree.sample(logits, temperature, return_logprobs=True, return_valid=True)
    print(f"sampled   {tokens.tolist()}")
    print(f"logprobs  {[round(v, 3) for v in logprobs.tolist()]}  valid {valid.all().item()}")
    print(f"greedy    {syncfree.sample(logits, 0.0).tolist()} == argmax {logits.argmax(-1).tolist()}")

    seeds = torch.arange(batch, device=device) * 1000 + 7
    offsets = torch.full((batch,), 3, device=device)
    a = syncfree.sample(logits, temperature, seed=seeds, offset=offsets)
    b = syncfree.sample(logits[[5, 2]], temperature, seed=seeds[[5, 2]], offset=offsets[[5, 2]])
    print(f"per-row seeds: rows 5 and 2 alone give {b.tolist()}, in the batch {a[[5, 2]].tolist()}")

    # The law: 1M draws from a 6-token distribution against softmax(logits / T).
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -float("inf")], device=device)
    draws = syncfree.sample(row.expand(1_000_000, 6), temperature, seed=1)
    freq = torch.bincount(draws, minlength=6).double() / draws.numel()
    exact = torch.softmax(row.double() / temperature, -1)
    print("law, 1M draws:  token  empirical  exact")
    for i in range(6):
        print(f"                {i:5d}  {freq[i].item():9.5f}  {exact[i].item():.5f}")

    repeats = 20 if device == "cpu" else 200
    t_sf = timed(lambda: syncfree.sample(logits, temperature), device, repeats)
    t_mn = timed(lambda: torch.multinomial(torch.softmax(logits / temperature, -1), 1), device, repeats)
    print(f"time per call, {batch}x{vocab} float32: syncfree {t_sf * 1e6:.0f} us, "
          f"torch.multinomial(softmax) {t_mn * 1e6:.0f} us ({t_mn / t_sf:.1f}x)")


if __name__ == "__main__":
    main()
