// How a row is cut into chunks (CUDA blocks or CPU tasks) and chunks into
// groups (one thread's unit of work). Host-testable: tests/cpp/test_core.cpp
// walks a simulated grid over these functions.
#pragma once

#include "race.h"

namespace syncfree {

SF_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A row of `vocab` tokens split into `splits` chunks of `chunk` tokens (the
// last may be shorter). Chunks hold whole groups, so a group is never split
// and every group is summed in one place, in one order.
struct RowSplit {
  int64_t vocab;
  int64_t chunk;  // a multiple of kGroup
  int32_t splits;
};

// At most `wanted` chunks of at least `min_chunk` tokens; never an empty chunk.
SF_HD RowSplit split_row(int64_t vocab, int64_t wanted, int64_t min_chunk) {
  const int64_t most = ceil_div(vocab, min_chunk);
  const int64_t splits = wanted < 1 ? 1 : (wanted < most ? wanted : most);
  const int64_t chunk = ceil_div(ceil_div(vocab, splits), kGroup) * kGroup;
  return {vocab, chunk, int32_t(ceil_div(vocab, chunk))};
}

// Groups [first_group, first_group + groups) belong to chunk `split`.
struct ChunkGroups {
  int64_t first_group;
  int64_t groups;
};

SF_HD ChunkGroups chunk_groups(const RowSplit& s, int32_t split) {
  const int64_t begin = int64_t(split) * s.chunk;
  const int64_t end = begin + s.chunk < s.vocab ? begin + s.chunk : s.vocab;
  return {begin / kGroup, ceil_div(end - begin, kGroup)};
}

// Tokens of group g: [g * kGroup, g * kGroup + group_size(g)).
SF_HD int group_size(int64_t vocab, int64_t group) {
  const int64_t left = vocab - group * kGroup;
  return left < kGroup ? int(left) : kGroup;
}

}  // namespace syncfree
