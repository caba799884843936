#!/usr/bin/env bash
# Long local fuzzing run: every fuzz target for SECS seconds of random cases (after its
# deterministic pass), each under `nice -n 19` and `/usr/bin/time -v`, JOBS at a time,
# with its address space capped at MEM_MB (default 4096) so that a reader allocating
# what a lying length field asks for aborts the target (its input is left in
# `target/tmp/fuzz/<reader>/`) instead of exhausting a shared machine's memory.
# Per-target logs and a summary table (wall, CPU s, cases, failures) go to OUT.
#
#   fuzz/long_run.sh                       # 600 s per target, 1 at a time, OUT=target/fuzz-long
#   SECS=60 JOBS=3 OUT=/some/dir fuzz/long_run.sh ['gguf|smelt-evals']  # ERE on package:test:name
#
# The test binaries are built once and copied into OUT, so later rebuilds of the tree do
# not touch a running campaign.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-600}
JOBS=${JOBS:-1}
MEM_MB=${MEM_MB:-4096}
OUT=${OUT:-target/fuzz-long}
FILTER=${1:-}
mkdir -p "$OUT/bin"

# package:test-file:test-name ...
TARGETS=(
  smelt:fuzz_readers:jsonl_records_of_every_dataset_format
  smelt:fuzz_readers:parquet_records
  smelt:fuzz_readers:train_recipes
  smelt:fuzz_readers:model_config_json
  smelt:fuzz_readers:safetensors_headers
  smelt:fuzz_readers:gguf_headers_and_metadata
  smelt:fuzz_readers:tokenizer_json
  smelt-pretrain:fuzz_pretrain_readers:shard_data
  smelt-pretrain:fuzz_pretrain_readers:shard_index
  smelt-pretrain:fuzz_pretrain_readers:shard_metadata
  smelt-pretrain:fuzz_pretrain_readers:corpus_jsonl
  smelt-pretrain:fuzz_pretrain_readers:corpus_parquet
  smelt-pretrain:fuzz_pretrain_readers:corpus_text
  smelt-pretrain:fuzz_pretrain_readers:pretrain_recipe
  smelt-evals:fuzz_eval_readers:eval_task_specs
  smelt-evals:fuzz_eval_readers:eval_data_jsonl
  smelt-evals:fuzz_eval_readers:eval_data_bigbench
)

for pkg_test in $(printf '%s\n' "${TARGETS[@]}" | cut -d: -f1,2 | sort -u); do
  pkg=${pkg_test%%:*}; test=${pkg_test##*:}
  exe=$(cargo test --release -p "$pkg" --test "$test" --no-run --message-format=json 2>/dev/null |
        grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  cp "$exe" "$OUT/bin/$test"
done

run_one() {
  local spec=$1 test name log
  test=$(cut -d: -f2 <<<"$spec"); name=$(cut -d: -f3 <<<"$spec")
  log="$OUT/$name.log"
  (ulimit -v $((MEM_MB * 1024))
   SMELT_FUZZ_SECS=$SECS nice -n 19 /usr/bin/time -v "$OUT/bin/$test" --exact "$name" \
     --nocapture --test-threads=1) >"$log" 2>&1 || true
  local wall user sys line
  wall=$(grep 'Elapsed (wall clock)' "$log" | awk '{print $NF}')
  user=$(grep 'User time' "$log" | awk '{print $NF}')
  sys=$(grep 'System time' "$log" | awk '{print $NF}')
  line=$(grep -E '^fuzz .*cases \(' "$log" | tail -1 || true)
  local status=ok
  grep -q "test result: ok" "$log" || status=FAILED
  printf '%s\t%s\t%s\t%.1f\t%s\t%s\n' "$name" "$status" "$wall" \
    "$(echo "$user + $sys" | bc)" "$(grep -oE '[0-9]+ cases' <<<"$line" | head -1 | cut -d' ' -f1)" \
    "$(grep -oE '[0-9]+ failures' <<<"$line" | cut -d' ' -f1)" >>"$OUT/summary.tsv"
}
export -f run_one
export OUT SECS MEM_MB

printf 'target\tstatus\twall\tcpu_s\tcases\tfailures\n' >"$OUT/summary.tsv"
printf '%s\n' "${TARGETS[@]}" | grep -E -- "$FILTER" | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
column -t -s $'\t' "$OUT/summary.tsv"
