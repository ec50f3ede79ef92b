#!/usr/bin/env bash
# Builds the library apps ship (profile `mobile`: opt-level z, LTO, one
# codegen unit, stripped, panics unwind) and prints its size.
#
#   bash ffi/build-mobile.sh                             # this machine's target
#   bash ffi/build-mobile.sh --target aarch64-linux-android   # with the NDK's linker set up
set -euo pipefail
cd "$(dirname "$0")/.."
"${CARGO:-cargo}" build --locked --profile mobile -p progress-ffi "$@"
TARGET_DIR=${CARGO_TARGET_DIR:-target}
find "$TARGET_DIR" -path '*/mobile/libprogress_ffi.*' \( -name '*.so' -o -name '*.dylib' \) | while read -r lib; do
  bytes=$(wc -c <"$lib")
  gz=$(gzip -9 -c "$lib" | wc -c)
  awk -v f="$lib" -v b="$bytes" -v g="$gz" 'BEGIN { printf "%s: %d bytes (%.1f MiB), %.1f MiB gzipped\n", f, b, b / 1048576, g / 1048576 }'
done
