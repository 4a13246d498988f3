#!/usr/bin/env bash
# Runs each cargo-fuzz target for FUZZ_SECONDS (default 600), one after another, and
# prints the executions per target. `make fuzz` calls this.
#
# The seeds in fuzz/corpus/<target> are read, never written: what libFuzzer finds goes to
# fuzz/target/corpus/<target> (kept between runs). A crash is saved under
# fuzz/artifacts/<target>/; replay it with `cargo +nightly fuzz run <target> <file>`.
#
# Built without AddressSanitizer (the filter crate has no `unsafe`; ASan would cost 2-3x
# in executions) and with debug assertions, so integer overflow fails too. Override with
# FUZZ_BUILD_FLAGS (e.g. "-s address").
#   FUZZ_SECONDS=60 fuzz/run.sh                  # a short run of every target
#   FUZZ_TARGETS="normalize jwt_parse" fuzz/run.sh
set -u
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-600}
read -r -a flags <<<"${FUZZ_BUILD_FLAGS:--s none --debug-assertions}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 2
targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
cargo +nightly fuzz build "${flags[@]}" || exit 2

results=()
crashed=0
for target in $targets; do
  mkdir -p "target/corpus/$target"
  log="target/$target.log"
  echo "fuzz: $target for ${seconds}s (log: fuzz/$log)"
  cargo +nightly fuzz run "${flags[@]}" "$target" "target/corpus/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1
  status=$?
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
  [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
  if [ "$status" -eq 0 ]; then
    results+=("$(printf '%-24s %12s executions  ok' "$target" "${execs:-?}")")
  else
    crashed=$((crashed + 1))
    artifact=$(grep -oE 'artifacts/[^ ]+' "$log" | tail -n 1)
    results+=("$(printf '%-24s %12s executions  CRASH %s' "$target" "${execs:-?}" "fuzz/${artifact:-?}")")
    grep -m 3 -E 'panicked|ERROR: |SUMMARY' "$log" | sed 's/^/    /'
  fi
done
echo "fuzz: ${seconds}s per target"
printf '  %s\n' "${results[@]}"
[ "$crashed" -eq 0 ]
