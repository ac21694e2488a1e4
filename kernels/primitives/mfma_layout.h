// AMD CDNA (wave64) MFMA fragment layouts and the MFMA forward kernel's tile geometry, as
// constexpr index functions that compile for the host too. kernels/gpu/fwd/fwd_kernel_mfma.h takes
// every fragment address and every (row, column) of a register from here, and
// tests/test_mfma_layout.cpp runs the same functions on a simulated 64-lane wave (no AMD device
// exists where this project is built), so kernel and test cannot disagree on the index math.
// Plain C++: no vendor header, usable from g++.
//
// ---- The instruction layout we rely on ---------------------------------------------------------
// v_mfma_f32_16x16x16f16 and v_mfma_f32_16x16x16bf16_1k (gfx90a; gfx908 has the f16 one), D = A B + C,
// A 16x16 (M x K), B 16x16 (K x N), C/D 16x16 fp32. Source: AMD Matrix Instruction Calculator
// (ROCm/amd_matrix_instruction_calculator, --architecture cdna2 --detail-instruction), "Matrix
// element to register mapping":
//   A[i][k]: lane 16*floor(k/4) + i, GPR floor(k/2)%2, bits [16*(k%2)+15 : 16*(k%2)]
//   B[k][j]: lane 16*floor(k/4) + j, GPR floor(k/2)%2, bits [16*(k%2)+15 : 16*(k%2)]
//   C/D[i][j]: lane 16*floor(i/4) + j, GPR i%4
// In words: lane l holds, for A, row l%16 and the 4 consecutive k = 4*(l/16) .. +3 as 4 16-bit
// elements in 2 VGPRs (element e = k%4 at bits 16e of the 64 bits, little-endian, so one 8-byte
// load of 4 consecutive 16-bit values fills it); for B, column l%16 and the same 4 k; for C/D,
// column l%16 and rows 4*(l/16) .. +3 in its 4 fp32 VGPRs. (The bf16_1k instruction has the f16
// instruction's layout and register counts; the older 16x16x8bf16 does not, and is not used.)
//
// ---- How the forward uses it (all transposed) ----------------------------------------------------
// S^T = K Q^T  (A = a 16-key x 16-d slab of K, B = Q^T: 16 d x 16 queries), so the C layout puts
// query l%16 in every register of lane l, keys 4*(l/16)+e. That is exactly the B layout of
// P^T (k = key, n = query): P stays in registers with no repack beyond rounding to 16 bits, and
// O^T = V^T P^T (A = V^T from a transposed LDS tile) accumulates O^T with query l%16 again in
// every register of lane l. So each lane owns ONE query row per 16-row tile for the whole
// kernel: the softmax max/sum of a row is reduced over the 4 lanes l, l^16, l^32, l^48 that
// share l%16 (two xor shuffles), and the rescale of O needs no shuffle at all.
#pragma once

#if defined(__HIPCC__) || defined(__CUDACC__)
#define FLASHPLUS_MFMA_HD __host__ __device__
#else
#define FLASHPLUS_MFMA_HD
#endif

namespace flashplus::prim::mfma {

// ---- v_mfma_f32_16x16x16{f16,bf16_1k} ---------------------------------------------------------
struct Mfma16 {
  static constexpr int kM = 16, kN = 16, kK = 16;
  static constexpr int kLanes = 64;  // wave64
  static constexpr int kElems = 4;   // 16-bit elements per lane in A and B; fp32 registers in C
  // A (M x K): lane holds A[a_row(lane)][a_k(lane, e)], e = 0..3.
  FLASHPLUS_MFMA_HD static constexpr int a_row(int lane) { return lane % 16; }
  FLASHPLUS_MFMA_HD static constexpr int a_k(int lane, int e) { return 4 * (lane / 16) + e; }
  // B (K x N): lane holds B[b_k(lane, e)][b_col(lane)].
  FLASHPLUS_MFMA_HD static constexpr int b_col(int lane) { return lane % 16; }
  FLASHPLUS_MFMA_HD static constexpr int b_k(int lane, int e) { return 4 * (lane / 16) + e; }
  // C/D (M x N): register e of lane holds C[c_row(lane, e)][c_col(lane)].
  FLASHPLUS_MFMA_HD static constexpr int c_row(int lane, int e) { return 4 * (lane / 16) + e; }
  FLASHPLUS_MFMA_HD static constexpr int c_col(int lane) { return lane % 16; }
  // The lanes holding one C column (one query row of the forward): lane ^ 16, ^ 32, ^ 48.
  static constexpr int kColumnXor0 = 16, kColumnXor1 = 32;
};

// Facts the kernel's code relies on, checked at compile time.
constexpr bool mfma16_c_is_b() {  // C registers of a tile are, as they are, a B fragment
  for (int l = 0; l < Mfma16::kLanes; ++l)
    for (int e = 0; e < Mfma16::kElems; ++e)
      if (Mfma16::c_row(l, e) != Mfma16::b_k(l, e) || Mfma16::c_col(l) != Mfma16::b_col(l))
        return false;
  return true;
}
constexpr bool mfma16_operands_contiguous() {  // one 8-byte load = the 4 elements of a lane
  for (int l = 0; l < Mfma16::kLanes; ++l)
    for (int e = 0; e < Mfma16::kElems; ++e)
      if (Mfma16::a_k(l, e) != Mfma16::a_k(l, 0) + e || Mfma16::b_k(l, e) != Mfma16::b_k(l, 0) + e ||
          Mfma16::a_k(l, 0) % 4 != 0)
        return false;
  return true;
}
constexpr bool mfma16_column_lanes() {  // xor 16 and xor 32 stay within one C column
  for (int l = 0; l < Mfma16::kLanes; ++l)
    if (Mfma16::c_col(l ^ Mfma16::kColumnXor0) != Mfma16::c_col(l) ||
        Mfma16::c_col(l ^ Mfma16::kColumnXor1) != Mfma16::c_col(l))
      return false;
  return true;
}
static_assert(mfma16_c_is_b(), "S^T's C fragment must be P^T's B fragment");
static_assert(mfma16_operands_contiguous(), "A/B fragments must be 4 consecutive k (8-byte loads)");
static_assert(mfma16_column_lanes(), "row reductions assume the column's lanes are l^16, l^32");

// ---- forward tile geometry -------------------------------------------------------------------
// One block: BM query rows of one (batch, head), NW waves of 64 lanes; wave w owns kMT m16 query
// tiles, rows [w*16*kMT, (w+1)*16*kMT) of the block. LDS holds one K tile (BN keys x D, row-major)
// and one V^T tile (D x BN keys); both rows are padded by kPad elements so that the 16 lanes of
// a fragment read (16 different rows, same columns) spread over the 32 banks.
template <int D, int BM, int BN, int NW>
struct FwdMfmaGeom {
  using M = Mfma16;
  static constexpr int kWave = M::kLanes;
  static constexpr int kThreads = NW * kWave;
  static constexpr int kMT = BM / (16 * NW);  // m16 query tiles per wave
  static constexpr int kNT = BN / 16;         // 16-key tiles of S^T (= k-steps of O^T += V^T P^T)
  static constexpr int kDT = D / 16;          // 16-d tiles of O^T (= k-steps of S^T = K Q^T)
  static constexpr int kPad = 4;              // 8 bytes: keeps the 8-byte fragment reads aligned
  static constexpr int kKStride = D + kPad;   // LDS row of K, elements
  static constexpr int kVtStride = BN + kPad; // LDS row of V^T (one head-dim column of V)
  static constexpr int kKElems = BN * kKStride;
  static constexpr int kVtElems = D * kVtStride;
  static constexpr int kLdsBytes = 2 * (kKElems + kVtElems);
  static constexpr int kChunks = D / 8;       // 16-byte global chunks per K/V row
  static constexpr int kCopyIters = BN * kChunks / kThreads;  // chunks per thread per tile
  static_assert(BM % (16 * NW) == 0 && kMT >= 1, "BM must be a multiple of 16 * waves");
  static_assert(BN % 16 == 0 && D % 16 == 0, "BN and D must be multiples of 16");
  static_assert((BN * kChunks) % kThreads == 0 && kCopyIters >= 1, "K/V copy must split evenly");
  static_assert(kLdsBytes <= 64 * 1024, "LDS over the 64 KB a gfx90a workgroup may use");

  // Global -> LDS copy: chunk number c = it * kThreads + tid. K: row-major order (consecutive
  // lanes read consecutive 16 bytes of a row: coalesced), stored as two 8-byte LDS writes.
  FLASHPLUS_MFMA_HD static constexpr int k_copy_row(int tid, int it) { return (it * kThreads + tid) / kChunks; }
  FLASHPLUS_MFMA_HD static constexpr int k_copy_chunk(int tid, int it) { return (it * kThreads + tid) % kChunks; }
  // V: key-major order (consecutive lanes take consecutive keys of one 8-column chunk) so that the
  // 8 transposed 2-byte LDS writes of a lane land next to its neighbours' (same V^T row, adjacent
  // keys) instead of one V^T row apart.
  FLASHPLUS_MFMA_HD static constexpr int v_copy_row(int tid, int it) { return (it * kThreads + tid) % BN; }
  FLASHPLUS_MFMA_HD static constexpr int v_copy_chunk(int tid, int it) { return (it * kThreads + tid) / BN; }
  // LDS element offsets.
  FLASHPLUS_MFMA_HD static constexpr int k_lds(int key, int d) { return key * kKStride + d; }
  FLASHPLUS_MFMA_HD static constexpr int vt_lds(int d, int key) { return d * kVtStride + key; }

  // Rows of the block that m-tile mt of wave `wave` starts at.
  FLASHPLUS_MFMA_HD static constexpr int tile_row0(int wave, int mt) { return wave * 16 * kMT + mt * 16; }

  // S^T = K Q^T, k-step kk (d in [16kk, 16kk+16)), key tile nt.
  //   A = K: 4 elements at k_frag(lane, nt, kk) in LDS.
  FLASHPLUS_MFMA_HD static constexpr int k_frag(int lane, int nt, int kk) {
    return k_lds(nt * 16 + M::a_row(lane), kk * 16 + M::a_k(lane, 0));
  }
  //   B = Q^T: 4 elements of query row tile_row0 + q_row(lane), from column q_col(lane, kk) on
  //   (read once from global memory into registers: Q is reused by every key tile).
  FLASHPLUS_MFMA_HD static constexpr int q_row(int lane) { return M::b_col(lane); }
  FLASHPLUS_MFMA_HD static constexpr int q_col(int lane, int kk) { return kk * 16 + M::b_k(lane, 0); }
  //   C = S^T: register e of key tile nt is the score of (query tile_row0 + s_query(lane),
  //   key n0 + s_key(lane, nt, e)).
  FLASHPLUS_MFMA_HD static constexpr int s_query(int lane) { return M::c_col(lane); }
  FLASHPLUS_MFMA_HD static constexpr int s_key(int lane, int nt, int e) { return nt * 16 + M::c_row(lane, e); }

  // O^T += V^T P^T, k-step kk (keys [16kk, 16kk+16) of the tile), d tile dt.
  //   A = V^T: 4 elements at vt_frag(lane, dt, kk) in LDS.
  FLASHPLUS_MFMA_HD static constexpr int vt_frag(int lane, int dt, int kk) {
    return vt_lds(dt * 16 + M::a_row(lane), kk * 16 + M::a_k(lane, 0));
  }
  //   B = P^T: the 4 C registers of S^T key tile kk, rounded to 16 bits (mfma16_c_is_b).
  //   C = O^T: register e of d tile dt is O[query tile_row0 + o_query(lane)][o_d(lane, dt, e)].
  FLASHPLUS_MFMA_HD static constexpr int o_query(int lane) { return M::c_col(lane); }
  FLASHPLUS_MFMA_HD static constexpr int o_d(int lane, int dt, int e) { return dt * 16 + M::c_row(lane, e); }
  // The lane of each query row that writes its lse.
  FLASHPLUS_MFMA_HD static constexpr bool writes_lse(int lane) { return lane < 16; }
};

// ---- backward tile geometry ------------------------------------------------------------------
// One block: BN = 16 * NW keys of one (batch, kv head); wave w owns keys [16w, 16w+16) and keeps
// their K and V rows as B fragments in registers and their dK^T / dV^T accumulators in registers
// for the whole block. The block walks blocks of BM queries. Every product is arranged so that a C
// fragment feeds the next MFMA as a B operand without moving data (mfma16_c_is_b):
//   S   = Q K^T      A = Q (LDS, row-major)      B = K^T (registers)  C: key lane%16, 4 queries
//   dV^T += dO^T P   A = dO^T (LDS, transposed)  B = P  (C of S, 16-bit)
//   dP  = dO V^T     A = dO (LDS, row-major)     B = V^T (registers)  C: as S
//   dK^T += Q^T dS   A = Q^T (LDS, transposed)   B = dS (C of dP, 16-bit)
//   dQ  = dS K       A = dS (LDS: C layout has the key as column, dQ sums over keys, so dS is
//                    staged [query][key])        B = K (from a K^T LDS tile)  C: fp32 atomics
template <int D, int BN, int BM, int NW>
struct BwdMfmaGeom {
  using M = Mfma16;
  static constexpr int kWave = M::kLanes;
  static constexpr int kThreads = NW * kWave;
  static constexpr int kQT = BM / 16;  // query tiles of a step (k-steps of dV^T, dK^T)
  static constexpr int kDT = D / 16;   // head-dim tiles (k-steps of S and dP; tiles of dK^T, dV^T)
  static constexpr int kKT = BN / 16;  // key tiles of the block (k-steps of dQ)
  static constexpr int kPad = 4;
  static constexpr int kRowStride = D + kPad;   // Q, dO: [BM][D]
  static constexpr int kTStride = BM + kPad;    // Q^T, dO^T: [D][BM]
  static constexpr int kDsStride = BN + kPad;   // dS: [BM][BN]
  static constexpr int kKtStride = BN + kPad;   // K^T: [D][BN]
  static constexpr int kRowElems = BM * kRowStride, kTElems = D * kTStride;
  static constexpr int kDsElems = BM * kDsStride, kKtElems = D * kKtStride;
  static constexpr int kLdsBytes =
      2 * (2 * kRowElems + 2 * kTElems + kDsElems + kKtElems) + 2 * BM * 4;  // + lse, Dsum
  static constexpr int kChunks = D / 8;
  static constexpr int kDqTiles = kQT * kDT / NW;  // dQ tiles (16 x 16) per wave and step
  static_assert(BN == 16 * NW, "one wave per 16 keys");
  static_assert(BM % 16 == 0 && D % 16 == 0, "BM and D must be multiples of 16");
  static_assert((kQT * kDT) % NW == 0, "dQ tiles must split evenly over the waves");
  static_assert(kLdsBytes <= 64 * 1024, "LDS over the 64 KB a gfx90a workgroup may use");

  // Global -> LDS copies (chunk c of 8 elements): Q/dO row-major order (coalesced), stored
  // twice: row-major and transposed. K^T: key-major order (see FwdMfmaGeom::v_copy_row).
  FLASHPLUS_MFMA_HD static constexpr int q_copy_row(int c) { return c / kChunks; }
  FLASHPLUS_MFMA_HD static constexpr int q_copy_chunk(int c) { return c % kChunks; }
  FLASHPLUS_MFMA_HD static constexpr int kt_copy_key(int c) { return c % BN; }
  FLASHPLUS_MFMA_HD static constexpr int kt_copy_chunk(int c) { return c / BN; }
  FLASHPLUS_MFMA_HD static constexpr int row_lds(int q, int d) { return q * kRowStride + d; }
  FLASHPLUS_MFMA_HD static constexpr int t_lds(int d, int q) { return d * kTStride + q; }
  FLASHPLUS_MFMA_HD static constexpr int ds_lds(int q, int key) { return q * kDsStride + key; }
  FLASHPLUS_MFMA_HD static constexpr int kt_lds(int d, int key) { return d * kKtStride + key; }

  // K and V rows of the wave as B fragments (k-step kk over d): row wave*16 + kv_row(lane) of the
  // block, columns kv_col(lane, kk) .. +3, read once from global memory.
  FLASHPLUS_MFMA_HD static constexpr int kv_row(int lane) { return M::b_col(lane); }
  FLASHPLUS_MFMA_HD static constexpr int kv_col(int lane, int kk) { return kk * 16 + M::b_k(lane, 0); }
  // S = Q K^T and dP = dO V^T, query tile qt, k-step kk: A at row_frag(lane, qt, kk) of Q / dO.
  FLASHPLUS_MFMA_HD static constexpr int row_frag(int lane, int qt, int kk) {
    return row_lds(qt * 16 + M::a_row(lane), kk * 16 + M::a_k(lane, 0));
  }
  // Their C, register e: query qt*16 + sc_query(lane, e) of the step, key wave*16 + sc_key(lane).
  FLASHPLUS_MFMA_HD static constexpr int sc_query(int lane, int e) { return M::c_row(lane, e); }
  FLASHPLUS_MFMA_HD static constexpr int sc_key(int lane) { return M::c_col(lane); }
  // dV^T += dO^T P and dK^T += Q^T dS, d tile dt, k-step qt: A at t_frag(lane, dt, qt) of
  // dO^T / Q^T; B = the C registers of S / dP tile qt, rounded to 16 bits.
  FLASHPLUS_MFMA_HD static constexpr int t_frag(int lane, int dt, int qt) {
    return t_lds(dt * 16 + M::a_row(lane), qt * 16 + M::a_k(lane, 0));
  }
  // Their C, register e: key wave*16 + acc_key(lane), column acc_d(lane, dt, e).
  FLASHPLUS_MFMA_HD static constexpr int acc_key(int lane) { return M::c_col(lane); }
  FLASHPLUS_MFMA_HD static constexpr int acc_d(int lane, int dt, int e) { return dt * 16 + M::c_row(lane, e); }
  // dQ: tile x (0 .. kDqTiles-1) of wave w is query tile dq_qt, d tile dq_dt; k-step kk over keys:
  //   A = dS at ds_frag(lane, qt, kk), B = K at kt_frag(lane, dt, kk) of the K^T tile;
  //   C register e: query qt*16 + dq_query(lane, e), column dt*16 + dq_d(lane).
  FLASHPLUS_MFMA_HD static constexpr int dq_qt(int wave, int x) { return (wave + NW * x) / kDT; }
  FLASHPLUS_MFMA_HD static constexpr int dq_dt(int wave, int x) { return (wave + NW * x) % kDT; }
  FLASHPLUS_MFMA_HD static constexpr int ds_frag(int lane, int qt, int kk) {
    return ds_lds(qt * 16 + M::a_row(lane), kk * 16 + M::a_k(lane, 0));
  }
  FLASHPLUS_MFMA_HD static constexpr int kt_frag(int lane, int dt, int kk) {
    return kt_lds(dt * 16 + M::b_col(lane), kk * 16 + M::b_k(lane, 0));
  }
  FLASHPLUS_MFMA_HD static constexpr int dq_query(int lane, int e) { return M::c_row(lane, e); }
  FLASHPLUS_MFMA_HD static constexpr int dq_d(int lane) { return M::c_col(lane); }
};

// The fp32 registers a lane keeps across the key loop (O^T, S^T, Q fragments, K/V prefetch):
// gfx90a has 512 (256 arch + 256 acc VGPRs) per lane at one wave per SIMD.
template <int D, int BM, int BN, int NW>
constexpr int fwd_mfma_live_regs() {
  using G = FwdMfmaGeom<D, BM, BN, NW>;
  return G::kMT * G::kDT * 4 + G::kMT * G::kNT * 4 + G::kMT * G::kDT * 2 + 2 * G::kCopyIters * 4;
}

}  // namespace flashplus::prim::mfma
