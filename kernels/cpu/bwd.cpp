// CPU backward: FlashAttention-2's backward, deterministic by construction.
//
//   pass 0 (per batch, head, row):  D_i = rowsum(dout_i * out_i)   (-> softmax_d when given)
//   pass 1 (per batch, kv head, key tile): dK, dV of that key tile, accumulated over every query
//          tile of every query head of the kv head (GQA sum) in a fixed order;
//   pass 2 (per batch, head, query tile):  dQ of that tile over its visible key tiles.
// Each output element has exactly one writer and a fixed summation order, so results are
// bit-identical run to run and for any thread count. P is recomputed from the saved lse as
// exp(z - lse), which is 0 for empty rows (lse = +inf), so they contribute nothing; a NaN lse
// (NaN in the forward's inputs) makes the row's gradients NaN.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/tiles.h"

namespace flashplus::cpu {

namespace {

// Every function below is instantiated for each tile shape of tiles.h; kBlockM/kBlockN are the
// instance's template parameters.
template <int kBlockM, int kBlockN>
struct BwdScratch {
  int dp;
  Buffer q, dout;   // [kBlockM][dp]
  Buffer kt, vt;    // [dp][kBlockN]
  Buffer k;         // [kBlockN][dp] (pass 2: dQ += dS @ K)
  Buffer s;         // [kBlockM][kBlockN]: S, then the softcap derivative factor
  Buffer pr;        // [kBlockM][kBlockN]: P
  Buffer dpm;       // [kBlockM][kBlockN]: dP, then dS
  Buffer pt, dst;   // [kBlockN][kBlockM]: P^T and dS^T (pass 1)
  Buffer acc1, acc2;  // [kBlockN][dp] dK, dV (pass 1) or [kBlockM][dp] dQ (pass 2)
  Buffer row;
  // bf16 inputs on a path with a bf16 dot product: S = Q K^T and dP = dO V^T from bf16 pairs.
  bool bfdot = false;
  Buffer q16, do16;  // [kBlockM][dp] bf16 bits
  Buffer ktp, vtp;   // [dp / 2][kBlockN][2] bf16 bits
  uint16_t* u16(Buffer& b) { return reinterpret_cast<uint16_t*>(b.data()); }
  explicit BwdScratch(int d, bool bf)
      : dp(round_up(d, kNr)),
        q(static_cast<size_t>(kBlockM) * dp),
        dout(static_cast<size_t>(kBlockM) * dp),
        kt(static_cast<size_t>(dp) * kBlockN),
        vt(static_cast<size_t>(dp) * kBlockN),
        k(static_cast<size_t>(kBlockN) * dp),
        s(static_cast<size_t>(kBlockM) * kBlockN),
        pr(static_cast<size_t>(kBlockM) * kBlockN),
        dpm(static_cast<size_t>(kBlockM) * kBlockN),
        pt(static_cast<size_t>(kBlockN) * kBlockM),
        dst(static_cast<size_t>(kBlockN) * kBlockM),
        acc1(static_cast<size_t>(std::max(kBlockM, kBlockN)) * dp),
        acc2(static_cast<size_t>(std::max(kBlockM, kBlockN)) * dp),
        row(dp),
        bfdot(bf),
        q16(bf ? static_cast<size_t>(kBlockM) * dp / 2 : 0),
        do16(bf ? static_cast<size_t>(kBlockM) * dp / 2 : 0),
        ktp(bf ? static_cast<size_t>(dp) * kBlockN / 2 : 0),
        vtp(bf ? static_cast<size_t>(dp) * kBlockN / 2 : 0) {}
};

template <int kBlockM, int kBlockN>
void load_kv(const AttnParams& p, int b, int hk, int j0, int n, bool want_k, BwdScratch<kBlockM, kBlockN>& w) {
  KvTileDst kv;
  kv.ld = kBlockN;
  if (w.bfdot) {
    kv.ktp = w.u16(w.ktp);
    kv.vtp = w.u16(w.vtp);
  } else {
    kv.kt = w.kt.data();
    kv.vt = w.vt.data();
  }
  kv.k = want_k ? w.k.data() : nullptr;
  load_kv_tile(p, b, hk, j0, n, w.dp, kv, w.row.data());
}

// Q and dO rows [i0, i0 + nr) of head h; padding rows zeroed.
template <int kBlockM, int kBlockN>
void load_q_do(const AttnParams& p, int b, int h, int i0, int nr, BwdScratch<kBlockM, kBlockN>& w) {
  const int64_t n = static_cast<int64_t>(kBlockM) * w.dp;
  std::fill(w.q.data(), w.q.data() + n, 0.f);
  std::fill(w.dout.data(), w.dout.data() + n, 0.f);
  for (int r = 0; r < nr; ++r) {
    load_row(p.q, p.dtype, p.q_offset(p.q_stride, b, i0 + r) + h * p.q_stride.head, p.head_dim,
             w.q.data() + static_cast<int64_t>(r) * w.dp);
    load_row(p.dout, p.dtype, p.q_offset(p.dout_stride, b, i0 + r) + h * p.dout_stride.head,
             p.head_dim, w.dout.data() + static_cast<int64_t>(r) * w.dp);
  }
  if (w.bfdot) {
    pack_bf16_rows(w.q.data(), w.dp, kBlockM, w.dp, w.u16(w.q16));
    pack_bf16_rows(w.dout.data(), w.dp, kBlockM, w.dp, w.u16(w.do16));
  }
}

// For the (query tile, key tile) pair: P, dP and dS = P * (dP - D) * softcap'(s), in w.pr and
// w.dpm (row-major [r][c]). Rows/columns outside the visible set get P = dS = 0. sq, sk: the
// sequence's actual lengths.
template <int kBlockM, int kBlockN>
void tile_grads(const AttnParams& p, int b, int h, int sq, int sk, int i0, int nr, int j0, int nc,
                const float* lse, const float* dvec, BwdScratch<kBlockM, kBlockN>& w) {
  const int d = p.head_dim;
  const int mr = round_up(nr, kMr);
  const float scale = p.softmax_scale;
  const float cap = p.softcap;
  const bool has_alibi = p.alibi_slopes != nullptr;
  const float slope = alibi_slope(p, b, h);
  const bool dropout = p.has_dropout();
  float* s = w.s.data();
  float* pr = w.pr.data();
  float* dpm = w.dpm.data();
  const size_t tile = static_cast<size_t>(kBlockM) * kBlockN;
  std::fill(s, s + tile, 0.f);
  std::fill(dpm, dpm + tile, 0.f);
  if (w.bfdot) {
    gemm_bf16_acc(mr, kBlockN, d, w.u16(w.q16), w.dp, w.u16(w.ktp), 2 * kBlockN, s, kBlockN);
    gemm_bf16_acc(mr, kBlockN, d, w.u16(w.do16), w.dp, w.u16(w.vtp), 2 * kBlockN, dpm, kBlockN);
  } else {
    gemm_acc(mr, kBlockN, d, w.q.data(), w.dp, w.kt.data(), kBlockN, s, kBlockN);
    gemm_acc(mr, kBlockN, d, w.dout.data(), w.dp, w.vt.data(), kBlockN, dpm, kBlockN);
  }
  for (int r = 0; r < kBlockM; ++r) {
    float* srow = s + static_cast<int64_t>(r) * kBlockN;
    float* prow = pr + static_cast<int64_t>(r) * kBlockN;
    float* drow = dpm + static_cast<int64_t>(r) * kBlockN;
    int c0 = 0, c1 = 0;
    const int i = i0 + r;
    // Empty rows (lse = +inf; -inf: rows no varlen sequence covers) contribute nothing. A NaN
    // lse (the forward met NaN) is used: P, dS and so dq, dk, dv come out NaN there, not dq = 0.
    if (r < nr && !std::isinf(lse[r])) {
      int lo, hi;
      key_range(p, i, sq, sk, &lo, &hi);
      c0 = std::max(lo, j0) - j0;
      c1 = std::min(hi, j0 + nc) - j0;
    }
    for (int c = 0; c < kBlockN; ++c) {
      if (c < c0 || c >= c1) {
        prow[c] = 0.f;
        drow[c] = 0.f;
        continue;
      }
      float z = srow[c] * scale;
      float fac = 1.f;
      if (cap > 0.f) {
        const float t = std::tanh(z / cap);
        z = cap * t;
        fac = 1.f - t * t;  // d/ds softcap * tanh(s / softcap)
      }
      if (has_alibi) z += alibi_bias(p, slope, i, j0 + c, sq, sk);
      const float pv = std::exp(z - lse[r]);
      if (dropout) {
        // O = P_d V with P_d = P * keep / (1 - p): dV takes P_d, and dP = dP_d * keep / (1 - p).
        const bool keep = p.dropout_keep(b, h, i, j0 + c);
        prow[c] = keep ? pv * p.rp_dropout : 0.f;
        drow[c] = pv * ((keep ? drow[c] * p.rp_dropout : 0.f) - dvec[r]) * fac;
        continue;
      }
      prow[c] = pv;
      drow[c] = pv * (drow[c] - dvec[r]) * fac;
    }
  }
}

// Query tiles [first, last) of a head that can see keys [j0, j0 + nc).
template <int kBlockM, int kBlockN>
void query_tiles_for_keys(const AttnParams& p, int sq, int sk, int j0, int nc, int* first, int* last) {
  const int nqt = (sq + kBlockM - 1) / kBlockM;
  int f = nqt, l = 0;
  for (int qt = 0; qt < nqt; ++qt) {
    const int i0 = qt * kBlockM, i1 = std::min(sq, i0 + kBlockM);
    int lo0, hi0, lo1, hi1;
    key_range(p, i0, sq, sk, &lo0, &hi0);
    key_range(p, i1 - 1, sq, sk, &lo1, &hi1);
    if (lo0 < hi1 && lo0 < j0 + nc && hi1 > j0) {
      f = std::min(f, qt);
      l = qt + 1;
    }
  }
  *first = f;
  *last = std::max(f, l);
}

template <int kBlockM, int kBlockN>
void dkdv_tile(const AttnParams& p, int b, int hk, int kt_idx, int sq, int sk, const float* dall,
               BwdScratch<kBlockM, kBlockN>& w) {
  const int d = p.head_dim, dp = w.dp;
  const int j0 = kt_idx * kBlockN;
  const int nc = std::min(kBlockN, sk - j0);
  load_kv(p, b, hk, j0, nc, false, w);
  float* dk = w.acc1.data();
  float* dv = w.acc2.data();
  std::fill(dk, dk + static_cast<int64_t>(kBlockN) * dp, 0.f);
  std::fill(dv, dv + static_cast<int64_t>(kBlockN) * dp, 0.f);
  int qt0, qt1;
  query_tiles_for_keys<kBlockM, kBlockN>(p, sq, sk, j0, nc, &qt0, &qt1);
  const int G = p.group();
  for (int g = 0; g < G; ++g) {
    const int h = hk * G + g;
    const int64_t rowbase = p.lse_offset(b, h, 0);
    for (int qt = qt0; qt < qt1; ++qt) {
      const int i0 = qt * kBlockM;
      const int nr = std::min(kBlockM, sq - i0);
      load_q_do(p, b, h, i0, nr, w);
      tile_grads(p, b, h, sq, sk, i0, nr, j0, nc, p.softmax_lse + rowbase + i0, dall + rowbase + i0, w);
      // Transpose P and dS so dV += P^T dO and dK += dS^T Q are plain row-major GEMMs.
      float* pt = w.pt.data();
      float* dst = w.dst.data();
      for (int r = 0; r < kBlockM; ++r)
        for (int c = 0; c < kBlockN; ++c) {
          pt[static_cast<int64_t>(c) * kBlockM + r] = w.pr.data()[static_cast<int64_t>(r) * kBlockN + c];
          dst[static_cast<int64_t>(c) * kBlockM + r] = w.dpm.data()[static_cast<int64_t>(r) * kBlockN + c];
        }
      gemm_acc(kBlockN, dp, kBlockM, pt, kBlockM, w.dout.data(), dp, dv, dp);
      gemm_acc(kBlockN, dp, kBlockM, dst, kBlockM, w.q.data(), dp, dk, dp);
    }
  }
  for (int c = 0; c < nc; ++c) {
    const int64_t j = j0 + c;
    store_row(p.dk, p.dtype, p.kv_offset(p.dk_stride, b, static_cast<int>(j)) + hk * p.dk_stride.head, d,
              dk + static_cast<int64_t>(c) * dp, p.softmax_scale);
    store_row(p.dv, p.dtype, p.kv_offset(p.dv_stride, b, static_cast<int>(j)) + hk * p.dv_stride.head, d,
              dv + static_cast<int64_t>(c) * dp, 1.f);
  }
}

template <int kBlockM, int kBlockN>
void dq_tile(const AttnParams& p, int b, int h, int qt, int sq, int sk, const float* dall,
             BwdScratch<kBlockM, kBlockN>& w) {
  const int d = p.head_dim, dp = w.dp;
  const int hk = h / p.group();
  const int i0 = qt * kBlockM;
  const int nr = std::min(kBlockM, sq - i0);
  const int mr = round_up(nr, kMr);
  const int64_t rowbase = p.lse_offset(b, h, 0);
  float* dq = w.acc1.data();
  std::fill(dq, dq + static_cast<int64_t>(kBlockM) * dp, 0.f);
  int lo0, hi0, lo1, hi1;
  key_range(p, i0, sq, sk, &lo0, &hi0);
  key_range(p, i0 + nr - 1, sq, sk, &lo1, &hi1);
  if (lo0 < hi1) {
    load_q_do(p, b, h, i0, nr, w);
    for (int j0 = lo0; j0 < hi1; j0 += kBlockN) {
      const int nc = std::min(kBlockN, hi1 - j0);
      load_kv(p, b, hk, j0, nc, true, w);
      tile_grads(p, b, h, sq, sk, i0, nr, j0, nc, p.softmax_lse + rowbase + i0, dall + rowbase + i0, w);
      gemm_acc(mr, dp, kBlockN, w.dpm.data(), kBlockN, w.k.data(), dp, dq, dp);
    }
  }
  for (int r = 0; r < nr; ++r) {
    const int64_t i = i0 + r;
    store_row(p.dq, p.dtype, p.q_offset(p.dq_stride, b, static_cast<int>(i)) + h * p.dq_stride.head, d,
              dq + static_cast<int64_t>(r) * dp, p.softmax_scale);
  }
}

// Fill dq, dk, dv with 0 everywhere (and softmax_d with 0): zero_tensors (varlen).
void zero_grads(const AttnParams& p) {
  std::vector<float> z(p.head_dim, 0.f);
  auto zero = [&](void* base, const Strides3& st, int nb, int rows, int heads) {
    for (int b = 0; b < nb; ++b)
      for (int i = 0; i < rows; ++i)
        for (int h = 0; h < heads; ++h)
          store_row(base, p.dtype, b * st.batch + static_cast<int64_t>(i) * st.row + h * st.head,
                    p.head_dim, z.data(), 1.f);
  };
  const int nb = p.is_varlen() ? 1 : p.batch;
  zero(p.dq, p.dq_stride, nb, p.is_varlen() ? p.total_q : p.seqlen_q, p.nheads);
  zero(p.dk, p.dk_stride, nb, p.is_varlen() ? p.total_k : p.seqlen_k, p.nheads_k);
  zero(p.dv, p.dv_stride, nb, p.is_varlen() ? p.total_k : p.seqlen_k, p.nheads_k);
  if (p.softmax_d) std::fill(p.softmax_d, p.softmax_d + p.lse_size(), 0.f);
}

template <int kBlockM, int kBlockN>
Status bwd_tiles(const AttnParams& p, const RunOptions& opts) {
  if (p.dtype == DType::i32) return Status::Unsupported("cpu backend: int32 attention");
  if (p.zero_tensors) zero_grads(p);
  if (p.batch <= 0 || p.nheads <= 0) return Status::Ok();
  const int nthreads_max = resolve_threads(opts);
  const int64_t bh = static_cast<int64_t>(p.batch) * p.nheads;
  const int d = p.head_dim;
  const bool bfdot = p.dtype == DType::bf16 && bf16_dot_active();
  // Actual lengths per sequence (varlen: from cu_seqlens; fixed length: all equal). Work items
  // exist only for real tokens.
  std::vector<int> sqs(p.batch), sks(p.batch);
  std::vector<std::pair<int, int>> qtiles, ktiles;  // (sequence, tile)
  for (int b = 0; b < p.batch; ++b) {
    sqs[b] = p.actual_seqlen_q(b);
    sks[b] = p.actual_seqlen_k(b);
    for (int t = 0; t * kBlockM < sqs[b]; ++t) qtiles.emplace_back(b, t);
    for (int t = 0; t * kBlockN < sks[b]; ++t) ktiles.emplace_back(b, t);
  }
  // Last query tiles first (they see the most keys under a causal mask).
  std::stable_sort(qtiles.begin(), qtiles.end(),
                   [](const auto& x, const auto& y) { return x.second > y.second; });

  // ---- pass 0: D = rowsum(dout * out), one float per query row ----------------------------------
  std::vector<float> dtmp;
  float* dall = p.softmax_d;
  if (!dall) {
    dtmp.assign(static_cast<size_t>(p.lse_size()), 0.f);
    dall = dtmp.data();
  }
  {
    std::atomic<int64_t> next{0};
    const int nt = static_cast<int>(std::min<int64_t>(nthreads_max, bh));
    FLASHPLUS_RETURN_IF_ERROR(run_threads(nt, [&](int) {
      std::vector<float> a(d), o(d);
      for (int64_t it; (it = next.fetch_add(1)) < bh;) {
        const int b = static_cast<int>(it / p.nheads), h = static_cast<int>(it % p.nheads);
        for (int i = 0; i < sqs[b]; ++i) {
          load_row(p.dout, p.dtype, p.q_offset(p.dout_stride, b, i) + h * p.dout_stride.head, d, a.data());
          load_row(p.out, p.dtype, p.q_offset(p.out_stride, b, i) + h * p.out_stride.head, d, o.data());
          double acc = 0;
          for (int x = 0; x < d; ++x) acc += static_cast<double>(a[x]) * o[x];
          dall[p.lse_offset(b, h, i)] = static_cast<float>(acc);
        }
      }
    }));
  }

  // ---- pass 1: dK, dV per (sequence, kv head, key tile) -----------------------------------------
  if (!ktiles.empty()) {
    const int64_t items = static_cast<int64_t>(ktiles.size()) * p.nheads_k;
    std::atomic<int64_t> next{0};
    const int nt = static_cast<int>(std::min<int64_t>(nthreads_max, items));
    FLASHPLUS_RETURN_IF_ERROR(run_threads(nt, [&](int) {
      BwdScratch<kBlockM, kBlockN> w(d, bfdot);
      for (int64_t it; (it = next.fetch_add(1)) < items;) {
        const auto& t = ktiles[static_cast<size_t>(it / p.nheads_k)];
        dkdv_tile(p, t.first, static_cast<int>(it % p.nheads_k), t.second, sqs[t.first],
                  sks[t.first], dall, w);
      }
    }));
  }

  // ---- pass 2: dQ per (sequence, head, query tile) ----------------------------------------------
  if (!qtiles.empty()) {
    const int64_t items = static_cast<int64_t>(qtiles.size()) * p.nheads;
    std::atomic<int64_t> next{0};
    const int nt = static_cast<int>(std::min<int64_t>(nthreads_max, items));
    FLASHPLUS_RETURN_IF_ERROR(run_threads(nt, [&](int) {
      BwdScratch<kBlockM, kBlockN> w(d, bfdot);
      for (int64_t it; (it = next.fetch_add(1)) < items;) {
        const auto& t = qtiles[static_cast<size_t>(it / p.nheads)];
        dq_tile(p, t.first, static_cast<int>(it % p.nheads), t.second, sqs[t.first], sks[t.first],
                dall, w);
      }
    }));
  }
  return Status::Ok();
}

}  // namespace

Status bwd(const AttnParams& p, const RunOptions& opts) {
  const KernelConfig c = tile_config(p, opts, "bwd");
  return with_tile(c.block_m, c.block_n, [&](auto bm, auto bn) {
    return bwd_tiles<decltype(bm)::value, decltype(bn)::value>(p, opts);
  });
}

}  // namespace flashplus::cpu
