#!/usr/bin/env bash
# Builds the engine's library and generates its Kotlin and Swift sources
# from it (UniFFI library mode), into ffi/ or the directory given.
#
#   bash ffi/generate.sh            # regenerate the committed sources
#   bash ffi/generate.sh /tmp/x     # generate elsewhere (the drift test does)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-ffi}
"${CARGO:-cargo}" build --locked --quiet -p progress-ffi -p progress-ffi-bindgen
TARGET=${CARGO_TARGET_DIR:-target}
case "$(uname -s)" in
  Darwin) LIB="$TARGET/debug/libprogress_ffi.dylib" ;;
  *) LIB="$TARGET/debug/libprogress_ffi.so" ;;
esac
# --no-format: the output must not depend on which formatters a machine has.
"$TARGET/debug/uniffi-bindgen" generate "$LIB" --language kotlin --no-format \
  --out-dir "$OUT/kotlin/src/main/kotlin"
"$TARGET/debug/uniffi-bindgen" generate "$LIB" --language swift --no-format \
  --out-dir "$OUT/swift/generated"
