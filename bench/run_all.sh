#!/usr/bin/env bash
# Regenerate docs/results.md: run every bench and the evaluation sweep, then bench/report.py.
#
#   bench/run_all.sh            full run (an hour or more on a small CPU machine, mostly the sweep)
#   bench/run_all.sh --quick    or QUICK=1: few iterations and episodes, under 10 minutes
#   CHECKPOINT=DIR              the policy the sweep evaluates (default checkpoints/demo);
#                               the sweep is skipped, with a note, when DIR does not exist;
#                               CHECKPOINT=synthetic sweeps the analytic flow policy
#   SWEEP_DIR=DIR               put an existing `rtvla sweep` output (its output_dir) into the
#                               report instead of running one (its sweep.json holds its config)
#   SWEEP_ARGS="k=v ..."        overrides for `rtvla sweep` (default: quick=true with two
#                               episodes a point and one horizon in a quick run; its own
#                               configs/sweep.yaml grid otherwise)
#
# Each bench's JSON line goes to outputs/report/<name>.json (its stderr to <name>.log), the
# commands run to outputs/report/commands.tsv, and what was not run, and why, to
# outputs/report/skipped.tsv. The incumbents bench times LeRobot's gRPC transport only when
# the bench dependency group is installed (uv sync --group bench); otherwise it still audits
# LeRobot's unpickling and compares the RTC corrections.
set -euo pipefail

cd "$(dirname "$0")/.."
QUICK=${QUICK:-0}
if [[ "${1:-}" == "--quick" ]]; then QUICK=1; fi
CHECKPOINT=${CHECKPOINT:-checkpoints/demo}
OUT=outputs/report
export MUJOCO_GL=${MUJOCO_GL:-egl}

if [[ "$QUICK" == 1 ]]; then
  SIM_ARGS=(--frames 30 --episodes 1)
  POLICY_ARGS=(--repeats 3 --batch 4 --train-steps 1)
  TRANSPORT_ARGS=(--round-trips 200)
  JITTER_ARGS=(--seconds 1)
  RTC_ARGS=(--repeats 5)
  THROUGHPUT_ARGS=(--seconds 2)
  HOSTILE_ARGS=(--messages 2000 --quiet-requests 100)
  INCUMBENTS_ARGS=(--round-trips 200)
  SWEEP_ARGS=${SWEEP_ARGS-"quick=true quick_grid.episodes=2 quick_grid.horizons=[10]"}
else
  SIM_ARGS=()
  POLICY_ARGS=()
  TRANSPORT_ARGS=()
  JITTER_ARGS=()
  RTC_ARGS=()
  THROUGHPUT_ARGS=(--seconds 10)
  HOSTILE_ARGS=(--repeats 5)
  INCUMBENTS_ARGS=(--round-trips 2000)
  SWEEP_ARGS=${SWEEP_ARGS-}
fi

rm -rf "$OUT"
mkdir -p "$OUT"

note_load() {  # note_load WHEN: the load averages (1, 5, 15 min), to judge the figures by
  if [[ -r /proc/loadavg ]]; then
    printf '%s\t%s\n' "$1" "$(cut -d ' ' -f 1-3 /proc/loadavg)" >> "$OUT/load.tsv"
  fi
}
note_load start

note_skipped() {  # note_skipped NAME REASON
  printf '%s\t%s\n' "$1" "$2" >> "$OUT/skipped.tsv"
  echo "-- $1 not run: $2" >&2
}

bench() {  # bench NAME COMMAND...: run it, keep its last stdout line as NAME.json
  local name=$1 status=0
  shift
  printf '%s\t%s\n' "$name" "$*" >> "$OUT/commands.tsv"
  echo "== $name: $*" >&2
  "$@" > "$OUT/$name.out" 2> "$OUT/$name.log" || status=$?
  if [[ $status == 0 ]]; then
    tail -n 1 "$OUT/$name.out" > "$OUT/$name.json"
  else
    note_skipped "$name" "failed with exit status $status (see $OUT/$name.log)"
  fi
}

bench sim_speed uv run python bench/sim_speed.py "${SIM_ARGS[@]}"
bench policy_speed uv run python bench/policy_speed.py "${POLICY_ARGS[@]}"
bench transport uv run python bench/transport.py "${TRANSPORT_ARGS[@]}"
bench jitter uv run python bench/jitter.py "${JITTER_ARGS[@]}"
bench rtc_overhead uv run python bench/rtc_overhead.py "${RTC_ARGS[@]}"
bench throughput uv run python bench/throughput.py "${THROUGHPUT_ARGS[@]}"
bench hostile uv run python bench/hostile.py "${HOSTILE_ARGS[@]}"
if [[ $(nproc) -ge 2 ]]; then  # the flooder on the last CPU, as from another machine
  bench hostile_remote uv run python bench/hostile.py "${HOSTILE_ARGS[@]}" \
    --flood-cpus "$(($(nproc) - 1))"
else
  note_skipped hostile_remote "one CPU: the attacker cannot have one of its own"
fi
# the control: CPU contention alone, 3 busy processes in place of the flood
bench hostile_hog uv run python bench/hostile.py "${HOSTILE_ARGS[@]}" --cpu-hog 3
bench kill_record uv run python bench/kill_record.py
if uv run python -c "import grpc, google.protobuf" > /dev/null 2>&1; then
  bench incumbents uv run --group bench python bench/incumbents.py "${INCUMBENTS_ARGS[@]}"
else
  bench incumbents uv run python bench/incumbents.py "${INCUMBENTS_ARGS[@]}"
fi

read -r -a SWEEP_OVERRIDES <<< "$SWEEP_ARGS"
if [[ "$CHECKPOINT" == synthetic ]]; then
  POLICY=(server=local:synthetic)
else
  POLICY=("checkpoint=$CHECKPOINT")
fi
if [[ -n "${SWEEP_DIR:-}" ]]; then
  if [[ -f "$SWEEP_DIR/sweep.json" ]]; then
    cp -r "$SWEEP_DIR" "$OUT/sweep"
    printf '%s\t%s\n' sweep "an earlier run, reused from $SWEEP_DIR (see its config in sweep.json)" \
      >> "$OUT/commands.tsv"
  else
    note_skipped sweep "SWEEP_DIR=$SWEEP_DIR has no sweep.json"
  fi
elif ! uv run rtvla sweep --help > /dev/null 2>&1; then
  note_skipped sweep "this install has no 'rtvla sweep' command"
elif [[ "$CHECKPOINT" != synthetic && ! -e "$CHECKPOINT" ]]; then
  note_skipped sweep "no checkpoint at $CHECKPOINT (set CHECKPOINT=DIR to a trained policy)"
else
  bench sweep uv run rtvla sweep "${POLICY[@]}" task=reach "${SWEEP_OVERRIDES[@]}" \
    "output_dir=$OUT/sweep"
fi

note_load end
REPORT_ARGS=()
if [[ "$QUICK" == 1 ]]; then REPORT_ARGS=(--quick); fi
uv run python bench/report.py --results "$OUT" --output docs/results.md "${REPORT_ARGS[@]}"
echo "wrote docs/results.md" >&2
