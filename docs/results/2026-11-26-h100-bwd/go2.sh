#!/bin/bash
# Call 2: pipelined wgmma backward (v3): check, verify, bench vs mma.sync, CLI bench, ncu stalls.
D=.device-bwd
S=$OUT/summary.txt
export PATH=$PATH:/usr/local/cuda/bin LD_LIBRARY_PATH=$PWD/$D/lib:$LD_LIBRARY_PATH
chmod +x $D/tc_selftest $D/tc_selftest_v2 $D/flashplus
{ date -u; nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader; } > $S 2>&1
timeout 60 $D/tc_selftest check > $OUT/check.txt 2>&1; RC=$?; echo "check v3 rc=$RC" >> $S
grep -E "FAIL|CHECK|error|CUDA" $OUT/check.txt | head -20 >> $S
SELF=$D/tc_selftest
if [ $RC -ne 0 ]; then
  timeout 60 $D/tc_selftest_v2 check > $OUT/check_v2.txt 2>&1; echo "check v2 rc=$?" >> $S
  grep -E "FAIL|CHECK|error|CUDA" $OUT/check_v2.txt | head -10 >> $S
  SELF=$D/tc_selftest_v2
fi
(timeout 50 $SELF bench; FLASHPLUS_BWD_NO_WGMMA=1 timeout 50 $SELF bench) > $OUT/bench.txt 2>&1
echo "== ours: first block $SELF (wgmma), second FLASHPLUS_BWD_NO_WGMMA=1 (mma.sync) ==" >> $S
grep BENCH $OUT/bench.txt | grep -v " fwd " >> $S
if [ $RC -eq 0 ]; then
  { timeout 40 $D/flashplus verify --backend cuda --suite $D/configs/suites/ci.json; echo "ci rc=$?";
    timeout 75 $D/flashplus verify --backend cuda --suite $D/configs/suites/gpu.json --filter tiles/ --filter batch/ --filter deterministic --filter window/ --filter layout/; echo "gpu(no long) rc=$?"; } > $OUT/verify.txt 2>&1
  grep -E "FAIL|passed|failed| rc=" $OUT/verify.txt | tail -12 >> $S
  timeout 60 $D/flashplus bench --config $D/configs/models/fa-bench.json --backend cuda --mode bwd --max-time 1.5 > $OUT/clibench.txt 2>&1
  tail -16 $OUT/clibench.txt >> $S
fi
NC="ncu --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section InstructionStats --section MemoryWorkloadAnalysis --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio -c 1 --kernel-name regex:bwd_gmma_kernel"
for d in 128 64; do
  timeout 35 $NC $SELF one 4096 $d 0 > $OUT/ncu_d$d.txt 2>&1
  echo "== ncu d$d" >> $S
  grep -E "Duration|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Executed Instructions  |highest-utilized|stalled_(barrier|long_scoreboard|short_scoreboard|wait|math_pipe_throttle|mio_throttle|no_instruction|dispatch_stall|lg_throttle|membar|sleeping|selected|not_selected|tex_throttle|imc_miss|branch_resolving|drain|misc|gmma)" $OUT/ncu_d$d.txt | sed 's/  \+/ /g' | head -30 >> $S
done
cat $S
