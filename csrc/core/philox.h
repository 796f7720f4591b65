// Philox4x32-10 counter-based generator, identical on host and device.
#pragma once

#include "host_device.h"

namespace syncfree {

struct Words4 {
  uint32_t w0, w1, w2, w3;
};

SF_HD uint32_t mul_hi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return uint32_t((uint64_t(a) * b) >> 32);
#endif
}

// Philox4x32 with 10 rounds (Salmon et al., SC'11), the generator behind
// curand's Philox4_32_10 and ATen's at::Philox4_32. Checked against the
// Random123 known-answer vectors (tests/cpp/test_core.cpp) and against
// at::Philox4_32 (tests/test_rng.py).
SF_HD Words4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                           uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    const uint32_t hi0 = mul_hi32(kMul0, c0), lo0 = kMul0 * c0;
    const uint32_t hi1 = mul_hi32(kMul1, c2), lo1 = kMul1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return {c0, c1, c2, c3};
}

// Note [syncfree RNG counter layout]
// ----------------------------------
// Every random word syncfree uses is a word of curand's Philox4_32_10 stream
// for (seed, subsequence): the 128-bit counter is (block_lo, block_hi,
// subsequence_lo, subsequence_hi), the 64-bit key is the seed, and the word at
// stream position p is lane p % 4 of block p / 4 (this is what curand_init(seed,
// subsequence, p) followed by curand() returns). Each row of a call has a
// stream and a start position pos0:
//   - generator: the call's draw (Note [Drawing from the generator] in
//     device_api.h) gives seed and pos0, subsequence = row;
//   - Python int seed s (and int offset o): seed = s, subsequence = row, pos0 = o
//     (the same stream as a fresh CUDA generator seeded with s at offset o);
//   - per-row tensors: seed = seed[row], subsequence = offset[row], pos0 = 0,
//     so a row's noise ignores its position and the batch.
// Two domains of words are read from a row's stream:
//   - token words: token i uses position pos0 + i;
//   - group words: group g (tokens [16g, 16g + 16)) uses lane 0 of block
//     kGroupDomain + pos0 / 4 + g, far above any token position;
//   - acceptance words (syncfree.verify_draft and verify_tree, core/verify.h):
//     the k-th child tried at a node uses lane 0 of block kAcceptDomain +
//     pos0 / 4 + k, above the group words.
// A row held in pieces (syncfree.distributed: a shard of the vocabulary)
// numbers its tokens from `base`, the global index of its first token (a
// multiple of kGroup): token i is global token base + i and its group global
// group base / kGroup + i / kGroup, so the noise is that of the whole row.
// Everything that depends on this layout cites this note.
constexpr uint64_t kGroupDomain = uint64_t(1) << 62;

struct RowStream {
  uint64_t seed;
  uint64_t subsequence;
  uint64_t pos0;
  uint64_t base = 0;  // global index of the row's token 0 (a multiple of kGroup)
};

SF_HD Words4 stream_block(const RowStream& s, uint64_t block) {
  return philox4x32_10(uint32_t(block), uint32_t(block >> 32), uint32_t(s.subsequence),
                       uint32_t(s.subsequence >> 32), uint32_t(s.seed), uint32_t(s.seed >> 32));
}

SF_HD uint32_t select_lane(const Words4& b, uint32_t lane) {
  // Selects instead of an indexed array: keeps the words in registers on the GPU.
  const uint32_t lo = (lane & 1u) ? b.w1 : b.w0;
  const uint32_t hi = (lane & 1u) ? b.w3 : b.w2;
  return (lane & 2u) ? hi : lo;
}

// The word of token `token` (See Note [syncfree RNG counter layout]).
SF_HD uint32_t token_word(const RowStream& s, int64_t token) {
  const uint64_t p = s.pos0 + s.base + uint64_t(token);
  return select_lane(stream_block(s, p >> 2), uint32_t(p & 3u));
}

// The word of group `group` (See Note [syncfree RNG counter layout]).
SF_HD uint32_t group_word(const RowStream& s, int64_t group) {
  return stream_block(s, kGroupDomain + (s.pos0 >> 2) + s.base / 16 + uint64_t(group)).w0;
}

}  // namespace syncfree
