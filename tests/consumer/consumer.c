/* Uses the installed libflashplus through its C ABI only: a causal GQA forward on random fp32
 * CPU data, checked against a naive softmax(q k^T * scale) v computed here. Exit 0 = pass. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flashplus/flashplus_c.h>

enum { B = 2, SQ = 5, SK = 7, H = 4, HK = 2, D = 12 };

static unsigned long long g_state = 88172645463325252ull;
static float rnd(void) { /* uniform in [-1, 1], never 0 */
  g_state ^= g_state << 13;
  g_state ^= g_state >> 7;
  g_state ^= g_state << 17;
  float x = (float)((g_state >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
  return x == 0.f ? 0.125f : x;
}

static DLTensor tensor(void* data, int ndim, int64_t* shape, uint8_t code) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = ndim;
  t.dtype.code = code;
  t.dtype.bits = 32;
  t.dtype.lanes = 1;
  t.shape = shape;
  t.strides = NULL; /* compact row-major */
  return t;
}

int main(void) {
  static float q[B * SQ * H * D], k[B * SK * HK * D], v[B * SK * HK * D];
  static float out[B * SQ * H * D], lse[B * H * SQ];
  size_t i;
  for (i = 0; i < sizeof q / sizeof *q; ++i) q[i] = rnd();
  for (i = 0; i < sizeof k / sizeof *k; ++i) k[i] = rnd();
  for (i = 0; i < sizeof v / sizeof *v; ++i) v[i] = rnd();

  int64_t qs[4] = {B, SQ, H, D}, ks[4] = {B, SK, HK, D}, ls[3] = {B, H, SQ};
  DLTensor tq = tensor(q, 4, qs, kDLFloat), tk = tensor(k, 4, ks, kDLFloat);
  DLTensor tv = tensor(v, 4, ks, kDLFloat), to = tensor(out, 4, qs, kDLFloat);
  DLTensor tl = tensor(lse, 3, ls, kDLFloat);

  flashplus_fwd_args a;
  memset(&a, 0, sizeof a);
  a.struct_size = sizeof a;
  a.q = &tq;
  a.k = &tk;
  a.v = &tv;
  a.out = &to;
  a.softmax_lse = &tl;
  a.is_causal = 1;
  a.window_size_left = -1;
  a.window_size_right = -1;
  a.opts.backend = FLASHPLUS_BACKEND_CPU;
  flashplus_status st = flashplus_mha_fwd(&a);
  if (st != FLASHPLUS_OK) {
    fprintf(stderr, "flashplus_mha_fwd: %s: %s\n", flashplus_status_name(st), flashplus_last_error());
    return 1;
  }

  /* Naive reference in double; causal aligned bottom-right: key j is visible to query i when
   * j <= i + SK - SQ. */
  const double scale = 1.0 / sqrt((double)D);
  double max_err = 0;
  int b, h, qi, j, d;
  for (b = 0; b < B; ++b)
    for (h = 0; h < H; ++h)
      for (qi = 0; qi < SQ; ++qi) {
        const int hk = h / (H / HK);
        double s[SK], m = -INFINITY, sum = 0;
        for (j = 0; j < SK; ++j) {
          s[j] = -INFINITY;
          if (j > qi + SK - SQ) continue;
          double dot = 0;
          for (d = 0; d < D; ++d)
            dot += (double)q[((b * SQ + qi) * H + h) * D + d] * k[((b * SK + j) * HK + hk) * D + d];
          s[j] = dot * scale;
          if (s[j] > m) m = s[j];
        }
        for (j = 0; j < SK; ++j) sum += s[j] == -INFINITY ? 0 : exp(s[j] - m);
        const double ref_lse = m + log(sum);
        double e = fabs(ref_lse - lse[(b * H + h) * SQ + qi]);
        if (e > max_err) max_err = e;
        for (d = 0; d < D; ++d) {
          double o = 0;
          for (j = 0; j < SK; ++j)
            if (s[j] != -INFINITY) o += exp(s[j] - m) / sum * v[((b * SK + j) * HK + hk) * D + d];
          e = fabs(o - out[((b * SQ + qi) * H + h) * D + d]);
          if (e > max_err) max_err = e;
        }
      }
  const int ok = max_err < 1e-4 && flashplus_c_abi_version() == FLASHPLUS_C_ABI_VERSION;
  printf("consumer_c: flashplus %s, C ABI %d, max |err| %.3g: %s\n", flashplus_version_string(),
         (int)flashplus_c_abi_version(), max_err, ok ? "ok" : "FAIL");
  return ok ? 0 : 1;
}
