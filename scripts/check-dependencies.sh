#!/usr/bin/env bash
# Checks Berth's dependency tree (no network needed beyond installing the tools):
#   cargo machete                   no dependency declared that no source file uses (the fuzz
#                                   crate included);
#   cargo deny check bans licenses  what ships - every feature, Linux x86_64 and aarch64, no
#                                   dev-dependencies - carries only the licences deny.toml
#                                   allows, no test-only crate (testcontainers, bollard), and
#                                   no second version of a crate beyond those it lists.
# The tools are installed with cargo at pinned versions when missing (a few minutes);
# `--install` installs them and stops, so that the test suite can start that early and in the
# background.
set -euo pipefail
cd "$(dirname "$0")/.."

MACHETE_VERSION=0.9.2
DENY_VERSION=0.20.2

installed() { command -v "$1" >/dev/null 2>&1 && "$1" --version 2>/dev/null | grep -qF "$2"; }
install_tools() {
  local crates=()
  installed cargo-machete "$MACHETE_VERSION" || crates+=("cargo-machete@$MACHETE_VERSION")
  installed cargo-deny "$DENY_VERSION" || crates+=("cargo-deny@$DENY_VERSION")
  if [ "${#crates[@]}" -gt 0 ]; then
    echo "installing ${crates[*]}" >&2
    # Unoptimized: they compile in about half the time, and still check Berth's tree in seconds.
    cargo install --quiet --locked --debug "${crates[@]}"
  fi
}

install_tools
[ "${1:-}" = --install ] && exit 0

echo "dependencies: none unused (cargo machete)"
cargo machete
echo "dependencies: licences, bans and duplicate versions (cargo deny)"
cargo deny --log-level error check bans licenses
echo "dependencies: all checks passed"
