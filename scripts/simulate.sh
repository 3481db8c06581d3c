#!/usr/bin/env bash
# The long run of the seeded concurrency exploration (tests/simulation/explore.rs): SEEDS seeds
# from FIRST (default 1) on the memory stores and on SQLite + a directory, each seed a schedule
# of four actors (two pushers, a deleter that also moves tags and unlinks blobs, a collector)
# interleaved at every store call, with faults drawn from the same seed. Prints seeds/second;
# a failing seed is printed with its faults and replays with `scripts/simulate.sh 1 SEED`.
#
#   scripts/simulate.sh 20000          # seeds 1..20000
#   scripts/simulate.sh 5000 20001     # seeds 20001..25000
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:?usage: scripts/simulate.sh SEEDS [FIRST_SEED]}"
first="${2:-1}"
BERTH_SIM_SEEDS="$seeds" BERTH_SIM_FIRST_SEED="$first" \
  cargo test --test simulation exploration -- --nocapture --test-threads 2
