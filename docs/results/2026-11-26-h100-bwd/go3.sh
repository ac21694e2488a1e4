#!/bin/bash
# Call 3 (final): heavy-first grid (v4) check, bench v4, peers (same run), CLI bench, v3 A/B (causal), verify.
D=.device-bwd
S=$OUT/summary.txt
export PATH=$PATH:/usr/local/cuda/bin LD_LIBRARY_PATH=$PWD/$D/lib:$LD_LIBRARY_PATH
chmod +x $D/tc_selftest $D/tc_selftest_v3 $D/flashplus
T0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader; } > $S 2>&1
timeout 40 $D/tc_selftest check > $OUT/check.txt 2>&1; echo "check v4 rc=$?" >> $S
grep -E "FAIL|CHECK|error|CUDA" $OUT/check.txt | head -20 >> $S
timeout 50 $D/tc_selftest bench > $OUT/bench.txt 2>&1
echo "== ours v4 (tc_selftest bench) ==" >> $S; grep BENCH $OUT/bench.txt | grep -v " fwd " >> $S
cd $D && ONLY=sdpa_flash,sdpa_cudnn MODES=bwd DIMS=64,128 SEQS=1024,4096,16384 OUT=/tmp timeout 80 python3 peer_bench.py > $OUT/peers.txt 2>&1; cd - >/dev/null
echo "== peers ==" >> $S; grep -E "PEAK|bwd" $OUT/peers.txt | tail -30 >> $S
timeout 40 $D/flashplus bench --config $D/configs/models/fa-bench.json --backend cuda --mode bwd --max-time 0.5 > $OUT/clibench.txt 2>&1
echo "== flashplus bench ==" >> $S; grep -E "^fa-bench" $OUT/clibench.txt >> $S
{ for d in 64 128; do for s in 1024 4096; do timeout 8 $D/tc_selftest_v3 one $s $d 1; timeout 8 $D/tc_selftest one $s $d 1; done; done; } > $OUT/ab.txt 2>&1
echo "== A/B causal: v3 (key-block-fastest grid) then v4 (heavy-first) ==" >> $S; grep -E "BENCH bwd " $OUT/ab.txt >> $S
echo "t=$(( $(date +%s) - T0 ))s" >> $S
{ timeout 30 $D/flashplus verify --backend cuda --suite $D/configs/suites/ci.json; echo "ci rc=$?";
  L=$(( 285 - ($(date +%s) - T0) )); [ $L -gt 5 ] && timeout $L $D/flashplus verify --backend cuda --suite $D/configs/suites/gpu.json --filter long/bwd --filter window/bwd --filter deterministic; echo "gpu(long/window bwd, det) rc=$?"; } > $OUT/verify.txt 2>&1
grep -E "FAIL|passed|failed| rc=" $OUT/verify.txt | tail -8 >> $S; echo "PASS lines: $(grep -c PASS $OUT/verify.txt)" >> $S
cat $S
