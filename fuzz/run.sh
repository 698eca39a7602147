#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from the checked-in
# corpus; new inputs go to a scratch directory, so the checked-in corpus stays small.
# Crashes are saved under fuzz/artifacts/<target>/ and make this script fail.
# Needs cargo-fuzz (cargo install cargo-fuzz --locked); on a stable toolchain
# RUSTC_BOOTSTRAP=1 lets it use the sanitizer-coverage flags it needs.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# Debug build (--dev), no sanitizer: safe Rust, so ASan adds little; panics and
# debug assertions (overflow checks) are what we look for.
flags=(--dev --sanitizer none)
cargo fuzz build "${flags[@]}"
for target in $(cargo fuzz list); do
  echo "=== fuzz $target for ${seconds}s"
  mkdir -p "$scratch/$target" "corpus/$target"
  cargo fuzz run "${flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
