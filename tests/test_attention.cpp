// Every runnable backend (the CPU backend here; GPU backends where a device exists) against the
// fp64 reference, across the option matrix and the hard cases: seqlen 1, sizes off the tile
// grid, seqlen_q != seqlen_k, fully masked rows, GQA/MQA, ALiBi, softcap, windows.
#include <catch2/catch.hpp>

#include <cmath>

#include "harness.h"

using namespace flashplus;
using flashplus::testing::Case;

namespace {

Case make(int b, int sq, int sk, int h, int hk, int d, DType t) {
  return flashplus::testing::make_case(b, sq, sk, h, hk, d, t);
}

std::vector<double> slopes(int n, double base) {
  std::vector<double> s(n);
  for (int i = 0; i < n; ++i) s[i] = base * std::pow(0.5, i % 8 + 1) + 0.01 * i;
  return s;
}

void check_all(const std::vector<Case>& cases) {
  for (Backend b : flashplus::testing::runnable_backends()) {
    for (const Case& c : cases) {
      const auto r = flashplus::testing::run_case(c, b);
      INFO("backend " << backend_name(b) << ": " << c.describe());
      INFO(r.summary());
      CHECK(r.pass());
    }
  }
}

}  // namespace

TEST_CASE("plain attention, every dtype, odd sizes", "[attention]") {
  std::vector<Case> cs;
  for (DType t : {DType::f32, DType::f16, DType::bf16}) {
    cs.push_back(make(1, 1, 1, 1, 1, 8, t));      // smallest
    cs.push_back(make(2, 17, 17, 2, 2, 40, t));   // off the tile grid
    cs.push_back(make(1, 129, 65, 2, 1, 72, t));  // sq > sk, MQA
    cs.push_back(make(1, 3, 130, 4, 2, 96, t));   // sq < sk, GQA
  }
  check_all(cs);
}

TEST_CASE("head dims up to 256", "[attention]") {
  std::vector<Case> cs;
  for (int d : {1, 7, 32, 64, 128, 160, 256}) cs.push_back(make(1, 33, 47, 2, 1, d, DType::bf16));
  check_all(cs);
}

TEST_CASE("causal masks are aligned bottom-right, fully masked rows are empty", "[attention]") {
  std::vector<Case> cs;
  for (auto [sq, sk] : std::vector<std::pair<int, int>>{{1, 1}, {1, 50}, {2, 5}, {5, 2},
                                                         {70, 70}, {100, 31}, {31, 100}}) {
    Case c = make(2, sq, sk, 4, 2, 32, DType::f16);
    c.p.causal = true;
    cs.push_back(c);
  }
  check_all(cs);
}

TEST_CASE("sliding windows, with and without causal", "[attention]") {
  std::vector<Case> cs;
  for (auto [wl, wr] : std::vector<std::pair<int, int>>{{0, 0}, {5, -1}, {-1, 3}, {16, 4},
                                                         {3, 200}, {-1, 0}}) {
    for (bool causal : {false, true}) {
      Case c = make(1, 77, 90, 2, 2, 64, DType::bf16);
      c.p.window_left = wl;
      c.p.window_right = wr;
      c.p.causal = causal;
      cs.push_back(c);
    }
  }
  // A window that leaves rows empty: sq > sk with a narrow window.
  Case c = make(1, 40, 8, 2, 1, 16, DType::f32);
  c.p.window_left = 1;
  c.p.window_right = 0;
  cs.push_back(c);
  check_all(cs);
}

TEST_CASE("softcap", "[attention]") {
  std::vector<Case> cs;
  for (double cap : {50.0, 2.0}) {
    Case c = make(1, 45, 61, 4, 1, 64, DType::bf16);
    c.p.softcap = cap;
    c.p.softmax_scale = 0.5;  // large scores so the cap bites
    cs.push_back(c);
    c.p.causal = true;
    cs.push_back(c);
  }
  check_all(cs);
}

TEST_CASE("ALiBi per head and per batch, causal and not", "[attention]") {
  std::vector<Case> cs;
  for (bool per_batch : {false, true}) {
    for (bool causal : {false, true}) {
      Case c = make(2, 29, 53, 4, 2, 32, DType::f16);
      c.alibi_per_batch = per_batch;
      c.p.alibi = slopes(per_batch ? 8 : 4, 0.5);
      c.p.causal = causal;
      cs.push_back(c);
    }
  }
  Case w = make(1, 30, 30, 2, 2, 32, DType::f32);  // ALiBi with a window (absolute form)
  w.p.alibi = slopes(2, 0.3);
  w.p.window_left = 4;
  w.p.window_right = 2;
  cs.push_back(w);
  Case one = make(1, 1, 40, 2, 1, 32, DType::f32);  // causal + ALiBi + one row: column form
  one.p.alibi = slopes(2, 0.3);
  one.p.causal = true;
  cs.push_back(one);
  check_all(cs);
}

TEST_CASE("explicit softmax_scale and MQA with many heads", "[attention]") {
  Case c = make(1, 64, 64, 8, 1, 48, DType::bf16);
  c.p.softmax_scale = 0.3;
  Case d = c;
  d.p.causal = true;
  d.deterministic = true;
  check_all({c, d});
}

TEST_CASE("seqlen_k = 0 gives zero output and +inf lse", "[attention]") {
  Case c = make(1, 5, 0, 2, 2, 16, DType::f32);
  check_all({c});
}

TEST_CASE("the backward is deterministic when asked", "[attention]") {
  // Two runs of the same inputs give bit-identical gradients.
  for (Backend b : flashplus::testing::runnable_backends()) {
    Case c = make(2, 70, 90, 4, 2, 64, DType::bf16);
    c.p.causal = true;
    c.deterministic = true;
    const auto r1 = flashplus::testing::run_case(c, b);
    const auto r2 = flashplus::testing::run_case(c, b);
    INFO(r1.summary());
    REQUIRE(r1.pass());
    REQUIRE(r2.pass());
    REQUIRE(r1.grads.size() == r2.grads.size());
    CHECK(r1.grads == r2.grads);  // bitwise: no tolerance
  }
}
