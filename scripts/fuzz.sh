#!/usr/bin/env bash
# Fuzzing of Berth's parsers (fuzz/: one target per parser of network or file input; see
# fuzz/README.md).
#
#   scripts/fuzz.sh --ci [SECONDS]
#       Stable toolchain, nothing to install: builds the `fuzz-replay` runner, replays every
#       committed input (fuzz/corpus/<target>/), then feeds each target SECONDS (default 3) of
#       random mutations of it. Fails on any crash or broken property, saving the input under
#       fuzz/artifacts/<target>/.
#   scripts/fuzz.sh --long SECONDS [TARGET...]
#       libFuzzer (coverage-guided) through cargo-fuzz, installed if missing: each target (all
#       by default) in turn for SECONDS, on one core at the lowest priority. Prints each
#       target's executions, executions per second and crashes; fails if any target crashed.
#       New inputs go to fuzz/target/long/<target>/ (not the committed corpus), crashes to
#       fuzz/artifacts/<target>/. FUZZ_RUNS=N stops a target after N executions;
#       FUZZ_SANITIZER=address builds with AddressSanitizer (default none: the targets are safe
#       Rust, and run several times faster without it).
#   scripts/fuzz.sh --minimize [TARGET...]
#       Shrinks fuzz/corpus/<target>/ to a small set of inputs with the coverage of it and of
#       what --long found (libFuzzer -set_cover_merge); seed-* and regression-* inputs stay,
#       and the smallest others up to FUZZ_CORPUS_BYTES (default 32768) per target.
#   scripts/fuzz.sh --replay TARGET FILE
#       Runs one input through one target (stable runner), e.g. a crash from fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

TARGETS=(digest name manifest range query route bearer basic acl htpasswd scope trusted_proxies
  immutable_tags config challenge)

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

build_replay() {
  cargo build --locked --profile ci --no-default-features --features replay --bin fuzz-replay
}

# cargo-fuzz drives libFuzzer through the ordinary toolchain; its sanitizer flags are
# nightly-only, which RUSTC_BOOTSTRAP=1 allows on stable. Everything runs at the lowest
# priority. Builds are release builds with debug assertions and overflow checks (-a).
cargo_fuzz() {
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
  fi
  nice -n 19 env RUSTC_BOOTSTRAP=1 cargo fuzz "$@"
}

sanitizer="${FUZZ_SANITIZER:-none}"

# Longest input libFuzzer makes: files and bodies may be long, request lines and headers not.
max_len() {
  case "$1" in
    manifest | config | acl | htpasswd) echo 16384 ;;
    bearer) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

mode="${1:-}"
[ -n "$mode" ] || usage
shift
case "$mode" in
  --ci)
    seconds="${1:-3}"
    build_replay
    exec target/ci/fuzz-replay --seconds "$seconds"
    ;;

  --replay)
    [ $# -eq 2 ] || usage
    build_replay
    exec target/ci/fuzz-replay --input "$2" "$1"
    ;;

  --long)
    [ $# -ge 1 ] || usage
    seconds="$1"
    shift
    selected=("$@")
    [ ${#selected[@]} -gt 0 ] || selected=("${TARGETS[@]}")
    runs="${FUZZ_RUNS:--1}"
    cargo_fuzz build -O -a -s "$sanitizer"
    mkdir -p target/long
    summary=()
    crashed=0
    for target in "${selected[@]}"; do
      work="target/long/$target"
      mkdir -p "$work" "artifacts/$target"
      before=$(find "artifacts/$target" -type f | wc -l)
      log="target/long/$target.log"
      started=$(date +%s)
      status=0
      # The first corpus directory receives new inputs; the committed one is only read.
      cargo_fuzz run -O -a -s "$sanitizer" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -runs="$runs" -timeout=10 -max_len="$(max_len "$target")" \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
      elapsed=$(($(date +%s) - started))
      after=$(find "artifacts/$target" -type f | wc -l)
      executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
      per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
      crashes=$((after - before))
      if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1 # libFuzzer stopped on something it did not save (see the log)
      fi
      [ "$crashes" -eq 0 ] || crashed=1
      line=$(printf '%-16s executions %12s  exec/s %8s  crashes %d  %5ds' "$target" \
        "${executions:-?}" "${per_second:-?}" "$crashes" "$elapsed")
      echo "$line"
      summary+=("$line")
      if [ "$crashes" -ne 0 ]; then
        { grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" || true; } |
          head -5 | sed 's/^/    /'
      fi
    done
    echo
    echo "libFuzzer, sanitizer $sanitizer, ${seconds}s per target:"
    printf '%s\n' "${summary[@]}"
    exit "$crashed"
    ;;

  --minimize)
    selected=("$@")
    [ ${#selected[@]} -gt 0 ] || selected=("${TARGETS[@]}")
    for target in "${selected[@]}"; do
      fresh="target/minimize/$target"
      rm -rf "$fresh"
      mkdir -p "$fresh" "target/long/$target"
      # Hand-written seeds and regression inputs stay; the merge adds only inputs that cover
      # something they do not.
      find "corpus/$target" -type f \( -name 'seed-*' -o -name 'regression-*' \) \
        -exec cp {} "$fresh/" \;
      cargo_fuzz run -O -a -s "$sanitizer" "$target" "$fresh" "corpus/$target" \
        "target/long/$target" -- -set_cover_merge=1 -max_len="$(max_len "$target")" \
        >"target/minimize/$target.log" 2>&1
      # The committed corpus stays small: past the seeds, the smallest inputs of the merge up
      # to FUZZ_CORPUS_BYTES per target (the long runs rebuild the rest from them).
      rm -rf "corpus/$target"
      mkdir -p "corpus/$target"
      find "$fresh" -type f \( -name 'seed-*' -o -name 'regression-*' \) -exec cp {} "corpus/$target/" \;
      kept=$(du -sb "corpus/$target" | cut -f1)
      find "$fresh" -type f ! -name 'seed-*' ! -name 'regression-*' -printf '%s %p\n' | sort -n |
        awk -v total="$kept" -v budget="${FUZZ_CORPUS_BYTES:-32768}" \
          '{ if (total + $1 <= budget) { total += $1; print $2 } }' |
        xargs -r cp -t "corpus/$target/"
      echo "$target: $(find "corpus/$target" -type f | wc -l) inputs," \
        "$(find "corpus/$target" -type f -printf '%s\n' | awk '{s += $1} END {print s}') bytes"
    done
    ;;

  *)
    usage
    ;;
esac
