"""WarperChain (StaticWarper): identity values dropped, equal to syncfree.warp, CUDA-graph cache (CUDA parts skip)."""
import pytest
import torch

import syncfree
from conftest import requires_cuda


def logits(b=6, v=3000, seed=0):
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_chain_drops_identity_values():
    assert syncfree.WarperChain(1.0, 0, 1.0, 1.0, 0.0).is_identity
    assert syncfree.WarperChain(0.0).is_identity  # temperature 0 scales nothing
    chain = syncfree.WarperChain(0.7, top_k=0, top_p=0.9, typical_p=1.0, min_p=0.0)
    assert chain.params == {"temperature": 0.7, "top_p": 0.9}
    assert syncfree.StaticWarper is syncfree.WarperChain


def test_identity_chain_returns_the_logits_untouched():
    x = logits()
    warped, logprobs = syncfree.WarperChain()(x)
    assert warped is x
    torch.testing.assert_close(logprobs, torch.log_softmax(x, -1))


def test_chain_equals_warp_on_cpu():
    x = logits()
    chain = syncfree.WarperChain(0.8, top_k=40, top_p=0.9, typical_p=0.95, min_p=0.01)
    warped, logprobs = chain(x)
    expected = syncfree.warp(x, 0.8, top_k=40, top_p=0.9, min_p=0.01, typical_p=0.95)
    assert torch.equal(warped, expected[0]) and torch.equal(logprobs, expected[1])


def test_chain_rejects_bad_values():
    with pytest.raises(ValueError, match="top_p: expected a number in"):
        syncfree.WarperChain(top_p=0.0)
    with pytest.raises(TypeError, match="top_k: expected an int"):
        syncfree.WarperChain(top_k=2.5)


@pytest.mark.cuda
@requires_cuda
def test_chain_captures_once_replays_and_matches_eager():
    syncfree.WarperChain.clear_cache()
    x = logits().cuda()
    chain = syncfree.WarperChain(0.8, top_k=40, top_p=0.9)
    for seed in range(3):
        y = logits(seed=seed).cuda()
        warped, logprobs = chain(y)
        expected = syncfree.warp(y, 0.8, top_k=40, top_p=0.9)
        assert torch.equal(warped, expected[0]) and torch.equal(logprobs, expected[1])
        cpu = syncfree.warp(y.cpu(), 0.8, top_k=40, top_p=0.9)
        assert torch.equal(warped.cpu(), cpu[0])
    info = syncfree.WarperChain.cache_info()
    assert (info.misses, info.hits, info.size) == (1, 2, 1)


@pytest.mark.cuda
@requires_cuda
def test_chain_cache_lru_eviction_and_memory():
    syncfree.WarperChain.clear_cache()
    x = logits(b=64, v=32000).cuda()
    chains = [syncfree.WarperChain(0.5 + 0.05 * i, top_k=10 + i) for i in range(11)]
    for chain in chains[:10]:
        chain(x)
    torch.cuda.synchronize()
    before = torch.cuda.memory_reserved()
    chains[10](x)  # the 11th configuration evicts the least recently used
    info = syncfree.WarperChain.cache_info()
    assert (info.size, info.evictions, info.misses) == (10, 1, 11)
    syncfree.WarperChain.clear_cache()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_reserved() < before
    syncfree.WarperChain.set_cache_size(2)
    for chain in chains[:3]:
        chain(x)
    assert syncfree.WarperChain.cache_info().size == 2
    syncfree.WarperChain.set_cache_size(10)


def processing_inputs(b=6, v=3000):
    g = torch.Generator().manual_seed(3)
    history = torch.randint(0, v, (b, 20), generator=g)
    history[:, 15:] = -1
    return dict(output_tokens=history, bias_tokens=torch.randint(0, v, (b, 4), generator=g),
                bias_values=torch.randn(b, 4, generator=g) * 3,
                allowed_mask=torch.randint(-2**31, 2**31, (b, (v + 31) // 32), generator=g, dtype=torch.int64).int())


def test_chain_with_processing_equals_warp():
    """The chain's penalties and the call's history, bias and mask: syncfree.warp's (README "Processing")."""
    x, inputs = logits(), processing_inputs()
    chain = syncfree.WarperChain(0.8, top_k=40, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.2)
    assert chain.params["repetition_penalty"] == 1.3 and "presence_penalty" in chain.params
    warped, logprobs = chain(x, **inputs)
    expected = syncfree.warp(x, 0.8, top_k=40, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.2,
                             **inputs)
    assert torch.equal(warped, expected[0]) and torch.equal(logprobs, expected[1])
    assert not torch.equal(warped, chain(x)[0])  # the history, bias and mask did something
    # An identity chain still applies the call's tensors.
    masked, _ = syncfree.WarperChain()(x, allowed_mask=inputs["allowed_mask"])
    assert torch.equal(masked, syncfree.warp(x, allowed_mask=inputs["allowed_mask"])[0])
    with pytest.raises(ValueError, match="repetition_penalty"):
        syncfree.WarperChain(repetition_penalty=0.0)


@pytest.mark.cuda
@requires_cuda
def test_chain_with_processing_replays_fresh_inputs():
    syncfree.WarperChain.clear_cache()
    chain = syncfree.WarperChain(0.8, top_p=0.9, repetition_penalty=1.2, frequency_penalty=0.3)
    for seed in range(3):
        x = logits(seed=seed).cuda()
        inputs = {k: v.cuda() for k, v in processing_inputs().items()}
        inputs["output_tokens"] = inputs["output_tokens"].roll(seed, 1)
        warped, _ = chain(x, **inputs)
        cpu = syncfree.warp(x.cpu(), 0.8, top_p=0.9, repetition_penalty=1.2, frequency_penalty=0.3,
                            **{k: v.cpu() for k, v in inputs.items()})
        assert torch.equal(warped.cpu(), cpu[0])
    info = syncfree.WarperChain.cache_info()
    assert (info.misses, info.hits) == (1, 2)
