#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (see docs/benchmarks.md, section GPU).
#
# Expects, in the repository root:
#   .whl/        wheels of what the machine's image lacks (weaver-core and its readers), or an installed weaverlab;
#   .gpudata/    jets/*.root (JetClass-layout generated jets) and ParticleNet_full.pt (../shared's published weights).
# Writes logs and JSON under $OUT (default ./gpu_out) and packs the profiler folders into one tarball.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT" /tmp/gpu_res
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
export PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu GPUS="" runs the same commands here, to check them before a lease
GPUS=${GPUS-0}
JETS=".gpudata/jets/*.root"
export WEAVERLAB_TEST_JETS
WEAVERLAB_TEST_JETS=$(ls .gpudata/jets/*.root | paste -sd:)
CFG=data/JetClass/JetClass_full.yaml
step() { echo; echo "==== $* ($(date -u +%H:%M:%S))"; }
SECTIONS=${SECTIONS:-"tests infer train forward cli"}  # a subset reruns only those
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

step machine
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch, weaver; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"

if want tests; then
step "gpu tests"
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu_paths.py tests/test_backends.py 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -25

fi
if want infer; then
step "inference bench, fp32 and bf16 (batch 256)"
for dt in fp32 bf16; do
    timeout 90 python3 -m profiling.bench --device "$DEVICE" --dtype "$dt" --input "$JETS" --num-batches 4 --repeats 5 \
        --out "$OUT/bench_infer_$dt.json" 2>&1 | tail -12
done

fi
if want train; then
step "training bench: weaver-core vs ours, bucketed and padded paths, batch 128 and 512"
for bs in 128 512; do
    for tp in padded bucketed; do
        timeout 90 python3 -m profiling.bench --train --device "$DEVICE" --training-path "$tp" --batch-size "$bs" \
            --input "$JETS" --num-batches 4 --repeats 3 --out "/tmp/gpu_res/bench_train_${tp}_$bs.json" 2>&1 | tail -6
    done
done

fi
if want forward; then
step "profiling.forward on $DEVICE: our ParT (random) and the published ParticleNet (trained vs random)"
timeout 90 python3 -m profiling.forward --device "$DEVICE" --network-config networks/part.py --data-config "$CFG" \
    --input "$JETS" --batch-sizes 1,64,512 --min-run-time 0.5 --out /tmp/gpu_res/profile_part --quiet 2>&1 | tail -15
timeout 90 python3 -m profiling.forward --device "$DEVICE" --network-config networks/particlenet.py \
    --data-config "$CFG" --input "$JETS" --weights .gpudata/ParticleNet_full.pt --batch-sizes 1,64,512 --min-run-time 0.5 \
    --out /tmp/gpu_res/profile_pnet --quiet 2>&1 | tail -15

fi
if want cli; then
step "weaver CLI on cuda: ParT training (bucketed path, --use-amp), then --compile"
for extra in "--use-amp" "--compile"; do
    tag=${extra#--}
    timeout 150 weaver --data-train "$JETS" --data-config "$CFG" --network-config networks/part.py \
        -o training_path "'bucketed'" -o seed 1 --model-prefix "/tmp/gpu_res/cli_$tag/net" --num-epochs 1 \
        --steps-per-epoch 8 --batch-size 128 --start-lr 1e-3 --optimizer adamw --gpus "$GPUS" --num-workers 0 \
        --in-memory --fetch-step 1 $extra --log-file "/tmp/gpu_res/cli_$tag.log" > "/tmp/gpu_res/cli_$tag.out" 2>&1
    echo "weaver $extra: rc=$?"; grep -E "avg. speed|Train AvgLoss|acc|Error|error" "/tmp/gpu_res/cli_$tag.out" | tail -6
done

fi
# everything but the (large) profiler traces comes back in one tarball
tar -czf "$OUT/results.tar.gz" --exclude="*trace*" -C /tmp/gpu_res . && ls -la "$OUT"
