#!/usr/bin/env bash
# fuzz.sh - builds the cargo-fuzz targets of conformance/fuzz/ and runs each one for a
# bounded time (FUZZ_SECONDS, default 30).
#
# It does what `cargo fuzz run` does, without needing cargo-fuzz or a
# nightly toolchain: libFuzzer comes from the libfuzzer-sys crate, coverage
# from the stable `-Cpasses=sancov-module` flags, and `--target <host>`
# keeps those flags away from build scripts. (With cargo-fuzz installed,
# `cargo fuzz run <target>` in conformance/ works too.)
#
# Each target's corpus is conformance/fuzz/corpus/<target> (kept between runs);
# a crash leaves its input in conformance/fuzz/artifacts/<target>/ and makes the script
# exit 1 (reproduce: conformance/fuzz/target/<host>/release/<target> <that file>, then
# add it as a regression test in tests/properties.rs).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS="${FUZZ_SECONDS:-30}"
TARGETS=(oci_parsers manifest rest_json elf)
HOST=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TERM_COLOR=never
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
echo "building fuzz targets for $HOST"
if ! cargo build --release --manifest-path conformance/fuzz/Cargo.toml --target "$HOST" --bins; then
  echo "fuzz: build FAILED"
  exit 1
fi
failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p "conformance/fuzz/corpus/$t" "conformance/fuzz/artifacts/$t"
  log=$(mktemp)
  "conformance/fuzz/target/$HOST/release/$t" -max_total_time="$SECS" -print_final_stats=1 \
    -artifact_prefix="conformance/fuzz/artifacts/$t/" "conformance/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  corpus=$(ls "conformance/fuzz/corpus/$t" | wc -l)
  if [[ $rc -ne 0 ]]; then
    echo "fuzz $t: CRASH after ${runs:-?} runs (exit $rc); input in conformance/fuzz/artifacts/$t/"
    tail -n 30 "$log"
    failed+=("$t")
  else
    echo "fuzz $t: ${SECS}s, ${runs:-?} runs, ${cov:-cov: ?}, corpus $corpus inputs, no crash"
  fi
  rm -f "$log"
done
if ((${#failed[@]})); then
  echo "fuzz: crashes in ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#TARGETS[@]} targets, ${SECS}s each, no crash"
