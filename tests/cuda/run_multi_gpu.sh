#!/usr/bin/env bash
# run_multi_gpu.sh: the data-parallel checks that need a machine with several GPUs (issue 8),
# in one call, from the project root, after a build in build-gpu/ (tests/cuda/run_on_gpu.sh):
#   bash tests/cuda/run_multi_gpu.sh [N_GPUS] [TEXT_FILE]
# - the same global batch on 1 and on N GPUs: the loss of each of 20 steps (fp32: the issue
#   asks 1e-4; bf16: within noise), dropout on (masks keyed by the global batch);
# - tokens/s of the enwik8-shape model on 1 GPU (batch 1) and N GPUs (batch N): the scaling
#   efficiency (the issue asks 0.90 at N = 2, 0.85 at N = 8);
# - a rank killed with SIGKILL mid-run (no launcher): rank 0 must stop with a message within
#   --dist-timeout (20 s here), not hang.
# Logs go to $OUT (default /tmp/out). TEXT_FILE defaults to data/kjv.txt (data/get-kjv.sh).
set -u
N=${1:-2}
D=$(realpath "${2:-data/kjv.txt}")
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpus.txt"
[ "$(nvidia-smi -L | wc -l)" -ge "$N" ] || { echo "run_multi_gpu.sh: fewer than $N GPUs"; exit 2; }
T=$PWD/build-gpu/cli/sparsetx-train; L=$PWD/build-gpu/cli/sparsetx-launch
C="$D --device cuda --layers 4 --width 256 --heads 4 --pattern fixed:128:32:4 --ctx 1024 --block 32 --dropout 0.1 --steps 20 --log-every 1 --batch 8 --lr 1e-3 --plain --eval-batches 2"
for p in fp32 bf16; do
  $T $C --precision $p --log $OUT/$p-w1.json > $OUT/$p-w1.txt 2>&1; echo "$p W1 rc=$?"
  $L --gpus $N -- $T $C --precision $p --log $OUT/$p-wN.json > $OUT/$p-wN.txt 2>&1; echo "$p WN rc=$?"
done
python3 - $OUT <<'PY'
import json,sys
o=sys.argv[1]
for p in ("fp32","bf16"):
    try:
        a=[json.loads(l) for l in open(f"{o}/{p}-w1.json")]; b=[json.loads(l) for l in open(f"{o}/{p}-wN.json")]
    except Exception as e: print(p, "no logs", e); continue
    d=[abs(x["loss"]-y["loss"]) for x,y in zip(a,b)]
    print(f"{p}: {len(a)} vs {len(b)} steps; loss step1 {a[0]['loss']:.6f} / {b[0]['loss']:.6f}; last step {a[-1]['loss']:.6f} / {b[-1]['loss']:.6f}; max |diff| {max(d):.3e}; val_bpb {a[-1].get('val_bpb')} / {b[-1].get('val_bpb')}")
PY
E="$D --preset enwik8 --device cuda --precision bf16 --steps 8 --log-every 1 --plain --eval-batches 1"
$T $E --batch 1 --log $OUT/e-w1.json > $OUT/e-w1.txt 2>&1; echo "enwik8 W1 rc=$?"
$L --gpus $N -- $T $E --batch $N --log $OUT/e-wN.json > $OUT/e-wN.txt 2>&1; echo "enwik8 WN rc=$?"
python3 - $OUT $N <<'PY'
import json,sys,statistics as st
o=sys.argv[1]; n=int(sys.argv[2])
r={}
for w in (1,"N"):
    try: a=[json.loads(l) for l in open(f"{o}/e-w{w}.json")]
    except Exception as e: print("no log",w,e); continue
    r[w]=st.median(x["tokens_per_s"] for x in a[2:]); print(f"W{w}: median tokens/s over steps 3..: {r[w]:.0f}")
if len(r)==2: print(f"scaling efficiency at N = {n}: {r['N']/(n*r[1]):.3f}")
PY
echo "== dead rank (kill -9 rank 1 mid-run, no launcher)"
rv=$(mktemp -u); K="$C --precision fp32 --steps 100000 --dist-rendezvous $rv --dist-timeout 20"
RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 $T $K > $OUT/dead-r0.txt 2>&1 & p0=$!
RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 $T $K > $OUT/dead-r1.txt 2>&1 & p1=$!
sleep 25; kill -9 $p1; t=$(date +%s)
for i in $(seq 90); do kill -0 $p0 2>/dev/null || break; sleep 1; done
if kill -0 $p0 2>/dev/null; then echo "rank 0 still running 90 s after rank 1 died: HANG"; kill -9 $p0; fi
wait $p0; echo "rank 0 rc=$? $(( $(date +%s) - t )) s after rank 1 was killed"; tail -4 $OUT/dead-r0.txt
