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
