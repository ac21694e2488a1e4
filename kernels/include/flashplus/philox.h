// Dropout randomness shared by every backend and the reference: a counter-based generator
// (Philox4x32-10, Salmon et al., SC'11), so element (b, h, i, j) draws the same number on any
// device, in any order, in the forward and the backward alike. Header-only, host and device.
//
// Element (b, h, i, j) of a problem with nheads heads and host-known lengths Sq*, Sk*
// (seqlen_q/k; varlen: max_seqlen_q/k; i, j count within the sequence) has the linear index
//     n = ((b * nheads + h) * Sq* + i) * Sk* + j.
// Its draw is word (n mod 4) of Philox4x32-10 with key (seed lo, seed hi) and counter
// (lo(n / 4), hi(n / 4), lo(offset), hi(offset)); the element is kept iff draw < threshold with
// threshold = floor((1 - p) * 2^32) (see dropout_threshold). Kept probabilities are scaled by
// exactly 1 / (1 - p).
#pragma once
#include <cstdint>

#ifndef FLASHPLUS_HD
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FLASHPLUS_HD __host__ __device__
#else
#define FLASHPLUS_HD
#endif
#endif

namespace flashplus {

struct Philox4 {
  uint32_t x[4];
};

FLASHPLUS_HD inline void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// Philox4x32 with 10 rounds (the Random123 constants).
FLASHPLUS_HD inline Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, c.x[0], &hi0, &lo0);
    philox_mulhilo(0xCD9E8D57u, c.x[2], &hi1, &lo1);
    c = Philox4{{hi1 ^ c.x[1] ^ k0, lo1, hi0 ^ c.x[3] ^ k1, lo0}};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// The 32-bit draw of linear element n.
FLASHPLUS_HD inline uint32_t dropout_draw(uint64_t seed, uint64_t offset, uint64_t n) {
  const uint64_t block = n >> 2;
  const Philox4 c{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                   static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}};
  const Philox4 r = philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return r.x[n & 3];
}

// floor((1 - p) * 2^32), clamped to 2^32 - 1 (p = 0 keeps everything anyway).
FLASHPLUS_HD inline uint32_t dropout_threshold(float p) {
  const double t = (1.0 - static_cast<double>(p)) * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : (t <= 0.0 ? 0u : static_cast<uint32_t>(t));
}

// Linear index of (b, h, i, j) (see the top of this file).
FLASHPLUS_HD inline uint64_t dropout_index(int b, int h, int i, int j, int nheads, int sq_star,
                                           int sk_star) {
  return ((static_cast<uint64_t>(b) * nheads + h) * static_cast<uint64_t>(sq_star) + i) *
             static_cast<uint64_t>(sk_star) + j;
}

// Whether element (b, h, i, j) is kept.
FLASHPLUS_HD inline bool dropout_keep(uint64_t seed, uint64_t offset, uint32_t threshold, int b,
                                      int h, int i, int j, int nheads, int sq_star, int sk_star) {
  return dropout_draw(seed, offset, dropout_index(b, h, i, j, nheads, sq_star, sk_star)) < threshold;
}

}  // namespace flashplus
