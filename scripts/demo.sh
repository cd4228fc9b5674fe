#!/usr/bin/env bash
# `make demo`: real Pythia jets -> preflight check -> weaver training -> weaver --predict -> metrics -> profiler report.
# Runs in a few minutes on a 2-core CPU. Everything lands in demo_output/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUT:-demo_output}
JETS_PER_CLASS=${DEMO_JETS_PER_CLASS:-400}
EPOCHS=${DEMO_EPOCHS:-4}
WORKERS=${DEMO_WORKERS:-2}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

echo "== 1/5 Generating real Pythia 8 + FastJet jets (10 classes x ${JETS_PER_CLASS} train, x 100 test)"
python -m data.generate --classes all --jets-per-class "$JETS_PER_CLASS" --jets-per-file "$JETS_PER_CLASS" \
    --out "$OUT/data/train" --seed 1 --workers "$WORKERS"
python -m data.generate --classes all --jets-per-class 100 --jets-per-file 100 \
    --out "$OUT/data/test" --seed 2 --workers "$WORKERS"
# preflight: every branch the data config needs is present, typed right, readable and finite (exit 1 otherwise)
python -m data.check "$OUT"/data/train/*.root "$OUT"/data/test/*.root -c data/JetClass/JetClass_kin.yaml --quiet \
    --no-progress

# A small ParT (2 particle blocks, 64-dim) so that a few epochs fit in a couple of minutes on CPU.
NET_OPTS=(-o num_layers 2 -o num_cls_layers 1 -o embed_dims "(64,64)" -o pair_embed_dims "(32,32)" -o num_heads 4)

echo "== 2/5 Training ParT with the real weaver command (${EPOCHS} epochs, -o seed 1: reproducible)"
weaver --data-train "$OUT"/data/train/*.root --data-config data/JetClass/JetClass_kin.yaml \
    --network-config networks/part.py "${NET_OPTS[@]}" -o seed 1 --model-prefix "$OUT/part/net" \
    --num-epochs "$EPOCHS" --batch-size 64 --start-lr 2e-3 --optimizer adamw --fetch-step 1 \
    --gpus "" --num-workers 0 --log-file "$OUT/part/train.log"

# weaver writes the best-epoch state only when validation accuracy beats 0; the last epoch's state always exists
CKPT="$OUT/part/net_best_epoch_state.pt"
[ -f "$CKPT" ] || CKPT="$OUT/part/net_epoch-$((EPOCHS - 1))_state.pt"

echo "== 3/5 weaver --predict on an independent test sample"
weaver --predict --data-test "$OUT"/data/test/*.root --data-config data/JetClass/JetClass_kin.yaml \
    --network-config networks/part.py "${NET_OPTS[@]}" --model-prefix "$CKPT" \
    --gpus "" --num-workers 0 --batch-size 256 --predict-output "$PWD/$OUT/part/pred.root"

echo "== 4/5 Metrics (accuracy, AUC, background rejection)"
python -m evaluation.metrics "$OUT/part/pred.root" --out "$OUT/part/metrics.json"

echo "== 5/5 Profiling the trained model against random weights"
python -m profiling.forward --network-config networks/part.py --data-config data/JetClass/JetClass_kin.yaml \
    --weights "$CKPT" --input "$OUT/data/test/*.root" \
    --device cpu --batch-sizes 1,64 --out "$OUT/profile" "${NET_OPTS[@]}"

echo
echo "Done. Outputs:"
echo "  jets:        $OUT/data/{train,test}/*.root"
echo "  checkpoints: $OUT/part/net_*.pt (training log $OUT/part/train.log)"
echo "  predictions: $OUT/part/pred.root (metrics $OUT/part/metrics.json)"
echo "  profile:     $OUT/profile/report.md (+ report.json, traces, PNG plots)"
