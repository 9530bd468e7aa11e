#!/bin/bash
# Several tools/train_packed.py runs side by side on one GPU, for SECONDS each, then each run's
# inference files (last checkpoint, metrics, log) tarred into RESULTS_DIR.
# Usage: tools/gpu_runs.sh PACKED RESULTS_DIR SECONDS "name1 overrides..." "name2 overrides..." ...
set -u
packed=$1 results=$2 seconds=$3; shift 3
mkdir -p "$results"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")" && pwd)
nvidia-smi -L 2>/dev/null; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
names=()
for spec in "$@"; do
  read -r name overrides <<< "$spec"; names+=("$name")
  # shellcheck disable=SC2086
  timeout $((${seconds%.*} + 90)) python3 "$here/train_packed.py" "$packed" --output "/tmp/runs/$name" \
    --seconds "$seconds" ${TRAIN_ARGS:-} $overrides > "/tmp/runs_$name.log" 2>&1 &
done
wait
for name in "${names[@]}"; do
  echo "== $name"; tr '\r' '\n' < "/tmp/runs_$name.log" | grep -v '^train: \|^ *$' | tail -5
  tr '\r' '\n' < "/tmp/runs_$name.log" | grep '^train: ' | tail -1
  dir=/tmp/runs/$name; last=$dir/checkpoints/$(cat "$dir/checkpoints/last" 2>/dev/null)
  [ -f "$last/model.safetensors" ] || { echo "$name: no checkpoint"; continue; }
  tr '\r' '\n' < "/tmp/runs_$name.log" | grep -v '^train: ' > "$dir/train.log"
  tar cf "$results/$name.tar" -C "$last" model.safetensors config.json normalizer.safetensors \
    fast_tokenizer.json -C "$dir" metrics.jsonl train.log
  # files come back at most 15 MB each: split larger tars (cat NAME.tar.part-* > NAME.tar)
  if [ "$(stat -c %s "$results/$name.tar")" -gt 15000000 ]; then
    split -b 15000000 "$results/$name.tar" "$results/$name.tar.part-" && rm "$results/$name.tar"
  fi
done
ls -la "$results"
