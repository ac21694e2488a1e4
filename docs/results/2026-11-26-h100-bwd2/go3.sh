#!/bin/bash
# Call 3: A/B round 2 (r2 = committed 8665ec3) vs r2 + peeled first iteration (peel), FA2 in the
# same call; correctness of the peel binary: ci.json, racecheck + memcheck on smoke.json, and the
# gpu.json backward groups call 2 did not run (long/bwd, layout/bwd, cases/bwd).
D=.device-bwd2
S=$OUT/summary.txt
export PATH=$PATH:/usr/local/cuda/bin LD_LIBRARY_PATH=$PWD/$D/lib:$LD_LIBRARY_PATH
for f in r2 peel; do gunzip -c $D/flashplus_$f.gz > /tmp/fp_$f; chmod +x /tmp/fp_$f; done
T0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader; } > $S 2>&1
B="bench --config configs/models/fa-bench.json --backend cuda --mode bwd --max-time 0.25"
for r in 1 2; do
  timeout 35 /tmp/fp_r2 $B > $OUT/bench_r2_$r.txt 2>&1
  timeout 35 /tmp/fp_peel $B > $OUT/bench_peel$r.txt 2>&1
done
echo "bench t=$(( $(date +%s) - T0 ))" >> $S
cd $D && ONLY=sdpa_flash MODES=bwd DIMS=64,128 SEQS=1024,4096,16384 OUT=/tmp timeout 45 python3 peer_bench.py > $OUT/peers.txt 2>&1; cd - >/dev/null
echo "peers t=$(( $(date +%s) - T0 ))" >> $S
python3 $D/table.py $OUT >> $S 2>&1
{
  echo "== verify ci (peel)"; timeout 45 /tmp/fp_peel verify --backend cuda --suite configs/suites/ci.json > /tmp/vci.txt 2>&1; echo "ci rc=$?"
  grep -E "^verify:|details:" /tmp/vci.txt; grep -E "SKIP|FAIL" /tmp/vci.txt | head -5
  echo "== racecheck smoke (peel)"; timeout 40 compute-sanitizer --tool racecheck --error-exitcode 9 /tmp/fp_peel verify --backend cuda --suite configs/suites/smoke.json > /tmp/rc.txt 2>&1; echo "racecheck rc=$?"
  grep -E "^verify:|SUMMARY" /tmp/rc.txt
  echo "== memcheck smoke (peel)"; timeout 30 compute-sanitizer --tool memcheck --error-exitcode 9 /tmp/fp_peel verify --backend cuda --suite configs/suites/smoke.json > /tmp/mc.txt 2>&1; echo "memcheck rc=$?"
  grep -E "^verify:|SUMMARY" /tmp/mc.txt
  L=$(( 233 - ($(date +%s) - T0) ))
  echo "== gpu.json long/bwd layout/bwd cases/bwd (peel, ${L}s)"
  [ $L -gt 5 ] && timeout $L /tmp/fp_peel verify --backend cuda --suite configs/suites/gpu.json --filter long/bwd --filter layout/bwd --filter cases/bwd > /tmp/vg.txt 2>&1; echo "gpu rc=$?"
  grep -E "^verify:" /tmp/vg.txt; echo "PASS cases: $(grep -oE "PASS +[^ ]+" /tmp/vg.txt | sort -u | wc -l)  FAIL lines: $(grep -c FAIL /tmp/vg.txt)"; grep FAIL /tmp/vg.txt | head -3
  grep -oE "PASS +[^ ]+" /tmp/vg.txt | sort -u | awk '{print $2}'
} > $OUT/verify.txt 2>&1
cat $OUT/verify.txt >> $S
echo "t=$(( $(date +%s) - T0 ))" >> $S
cat $S
