"""The RNG contract (README "Random numbers"): reproducible, batch-invariant, advancing."""
import os
import subprocess
import sys
import tempfile

import pytest
import torch

import cuda_on_cpu
import syncfree


def logits(b=16, v=5000, seed=0, dtype=torch.float32):
    return (torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 2).to(dtype)


def test_same_seed_same_tokens():
    x = logits()
    assert torch.equal(syncfree.sample(x, seed=3), syncfree.sample(x, seed=3))
    assert torch.equal(syncfree.sample(x, seed=3, offset=8), syncfree.sample(x, seed=3, offset=8))
    seeds, offsets = torch.arange(16) * 7, torch.arange(16)
    assert torch.equal(syncfree.sample(x, seed=seeds, offset=offsets), syncfree.sample(x, seed=seeds, offset=offsets))


def test_seed_and_offset_change_the_noise():
    x = torch.zeros(4096, 64)  # uniform rows: tokens are the noise itself
    base = syncfree.sample(x, seed=3)
    assert (base != syncfree.sample(x, seed=4)).float().mean() > 0.9
    assert (base != syncfree.sample(x, seed=3, offset=64)).float().mean() > 0.9
    # Rows of an int seed get distinct noise.
    assert base.unique().numel() == 64


def test_per_row_seeds_ignore_batch_position_and_size():
    x = logits(b=64, v=3000)
    seeds = torch.randint(0, 2**62, (64,), generator=torch.Generator().manual_seed(1))
    offsets = torch.arange(64) * 3
    full = syncfree.sample(x, seed=seeds, offset=offsets)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(syncfree.sample(x[perm], seed=seeds[perm], offset=offsets[perm]), full[perm])
    assert torch.equal(syncfree.sample(x[5:9], seed=seeds[5:9], offset=offsets[5:9]), full[5:9])
    assert syncfree.sample(x[7], seed=seeds[7:8], offset=offsets[7:8]).item() == full[7].item()
    # Mixed temperatures per row do not change a row's token either.
    temps = torch.rand(64, generator=torch.Generator().manual_seed(3)) + 0.5
    mixed = syncfree.sample(x, temps, seed=seeds, offset=offsets)
    assert torch.equal(syncfree.sample(x[perm], temps[perm], seed=seeds[perm], offset=offsets[perm]), mixed[perm])


def test_same_seed_and_offset_share_noise():
    x = torch.zeros(8, 1000)
    tokens = syncfree.sample(x, seed=torch.full((8,), 5), offset=torch.full((8,), 2))
    assert tokens.unique().numel() == 1


def test_generator_advances_and_reseeds():
    x = logits(b=256, v=1000)
    g = torch.Generator().manual_seed(42)
    first, second = syncfree.sample(x, generator=g), syncfree.sample(x, generator=g)
    assert (first != second).any()
    g.manual_seed(42)
    assert torch.equal(syncfree.sample(x, generator=g), first)
    torch.manual_seed(7)
    a = syncfree.sample(x)
    torch.manual_seed(7)
    assert torch.equal(syncfree.sample(x), a)


def test_greedy_leaves_the_generator_alone():
    g = torch.Generator().manual_seed(9)
    state = g.get_state()
    syncfree.sample(logits(), 0.0, generator=g)
    assert torch.equal(g.get_state(), state)


def test_half_precision_reads_equal_float_of_the_same_values():
    x = logits(dtype=torch.bfloat16)
    assert torch.equal(syncfree.sample(x, seed=1), syncfree.sample(x.float(), seed=1))
    x = logits(dtype=torch.float16)
    assert torch.equal(syncfree.sample(x, 0.6, seed=1), syncfree.sample(x.float(), 0.6, seed=1))


def test_tokens_do_not_depend_on_thread_count():
    # 2 threads split small batches into chunks; 1 thread does not.
    x = logits(b=2, v=200_003)
    torch.set_num_threads(1)
    one = syncfree.sample(x, seed=5, return_logprobs=True)
    torch.set_num_threads(2)
    two = syncfree.sample(x, seed=5, return_logprobs=True)
    assert torch.equal(one[0], two[0])
    torch.testing.assert_close(one[1], two[1])


def test_portable_and_avx2_paths_give_the_same_tokens():
    code = ("import torch, syncfree; x = torch.randn(64, 20011, generator=torch.Generator().manual_seed(0)); "
            "print(syncfree.sample(x, 0.9, seed=3).tolist(), syncfree.sample_probs(x.exp(), seed=4).tolist(), "
            "syncfree.sample(x, 0.9, top_k=500, top_p=0.9, min_p=0.01, typical_p=0.9, seed=5).tolist(), "
            "syncfree.warp(x, 0.9, top_p=0.8)[0].tolist(), "
            "[t.tolist() for t in syncfree.verify_draft(x.view(16, 4, -1), x.view(16, 4, -1)[:, :3].argmax(-1), "
            "torch.softmax(x.view(16, 4, -1)[:, :3], -1), 0.9, top_k=50, seed=torch.arange(16), return_logprobs=True)], "
            "[[t.tolist() for t in syncfree.sample(x, 0.9, top_k=40, seed=6, return_logprobs=True, return_top_logprobs=5, "
            "logprobs_mode=mode, repetition_penalty=1.3, output_tokens=x[:, :50].argmax(-1, keepdim=True))] "
            "for mode in ('processed', 'raw')])")
    outputs = []
    for baseline in (False, True):
        env = dict(os.environ)
        env.pop("SYNCFREE_CPU_BASELINE", None)
        if baseline:
            env["SYNCFREE_CPU_BASELINE"] = "1"
        # Outside the source tree, so that the installed package is imported.
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                             cwd=tempfile.gettempdir())
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1]


@pytest.mark.emulated  # the hooks live in the CPU execution layer's module, not in the product
@pytest.mark.parametrize("pos", [0, 1, 2, 3, 4, 101])
def test_philox_stream_matches_aten_philox(pos):
    """syncfree's Philox stream equals at::Philox4_32 (itself bit-equal to curand_init(seed, subsequence, 4*block))."""
    layer = cuda_on_cpu.load()
    for seed, subsequence in [(0, 0), (123456789, 3), (2**64 - 1, 2**40 + 5)]:
        ours = layer.stream_words(seed, subsequence, pos, 40)
        block, lane = divmod(pos, 4)
        aten = layer.aten_philox_words(seed, subsequence, block, 44)[lane:lane + 40]
        assert ours == aten
