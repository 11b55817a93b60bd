#!/usr/bin/env bash
# Build `humanlm` with candle's `cuda` feature for the H100 (sm_90, driver 580 / CUDA 13.0) on
# this machine (no GPU, no nvcc) and pack what the device needs into gpu-bundle/ (git-ignored).
#
#   scripts/gpu/build.sh [--no-model]
#
# The device receives at most 64 MiB a call, and the default checkpoint alone is 98 MB, so the
# bundle is cut into parts that travel in separate calls (see scripts/gpu/run.sh and README,
# "GPU"):
#   gpu-bundle/a/   the stripped binary (xz) and the first slice of the default GGUF
#   gpu-bundle/b/   the rest of the GGUF
# each with a manifest of sha256 sums. --no-model packs the binary alone (the default-model
# parity check is then skipped on the device, and says so in its JSON).
#
# Uses its own target folder (target/cuda) so the shared target/release is left alone, and
# RUSTFLAGS=-C target-cpu=x86-64-v3 instead of the repository's `native`: the binary runs on
# another host, whose CPU must not be assumed to have this one's AVX-512.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
WITH_MODEL=1
[ "${1:-}" = "--no-model" ] && WITH_MODEL=0
BUILD="${CUDA_BUILD_TOOL:-$ROOT/../shared/tools/cuda-build.sh}"
[ -x "$BUILD" ] || { echo "build.sh: $BUILD: not found or not executable (the verified CUDA build route)" >&2; exit 2; }

export CARGO_TARGET_DIR="$ROOT/target/cuda"
export RUSTFLAGS="${RUSTFLAGS:--C target-cpu=x86-64-v3}"
# The route finds cudarc with a bare `cargo metadata`, which omits optional dependencies; here
# cudarc comes only with the `cuda` feature, so `cargo metadata` is given that feature through a
# thin wrapper ahead of cargo on PATH (every other cargo call passes through unchanged).
SHIM="$CARGO_TARGET_DIR/cargo-shim"; mkdir -p "$SHIM"
REAL_CARGO="$(command -v cargo)"
cat > "$SHIM/cargo" <<SH
#!/usr/bin/env bash
if [ "\${1:-}" = metadata ]; then shift; exec "$REAL_CARGO" metadata --features cuda "\$@"; fi
exec "$REAL_CARGO" "\$@"
SH
chmod +x "$SHIM/cargo"
PATH="$SHIM:$PATH" "$BUILD" "$ROOT" build --release --features cuda --bin humanlm

BIN="$CARGO_TARGET_DIR/release/humanlm"
OUTDIR="$ROOT/gpu-bundle"
rm -rf "$OUTDIR"; mkdir -p "$OUTDIR/a" "$OUTDIR/b"
strip -o "$OUTDIR/humanlm" "$BIN"
# The binary is mostly PTX and kernel images, which compress well; xz keeps part a small
# enough to carry a slice of the checkpoint alongside.
xz -T0 -9 -c "$OUTDIR/humanlm" > "$OUTDIR/a/humanlm.xz"
rm "$OUTDIR/humanlm"

GGUF="$ROOT/checkpoints/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ "$WITH_MODEL" = 1 ]; then
  [ -f "$GGUF" ] || { echo "build.sh: $GGUF: missing (run scripts/fetch-checkpoints.sh, or pass --no-model)" >&2; exit 2; }
  # Part a: the tree (~6 MB) + the binary + the first slice must stay under 64 MiB.
  BIN_BYTES=$(stat -c %s "$OUTDIR/a/humanlm.xz")
  TREE_BYTES=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  BUDGET=$(( 62 * 1024 * 1024 - TREE_BYTES - BIN_BYTES ))
  SIZE=$(stat -c %s "$GGUF")
  [ "$BUDGET" -gt 0 ] || { echo "build.sh: the binary ($BIN_BYTES bytes) leaves no room for the checkpoint in part a" >&2; exit 2; }
  REST=$(( SIZE - BUDGET ))
  [ "$REST" -lt $(( 62 * 1024 * 1024 - TREE_BYTES )) ] || { echo "build.sh: $GGUF does not fit in two parts" >&2; exit 2; }
  head -c "$BUDGET" "$GGUF" > "$OUTDIR/a/model.gguf.part1"
  tail -c +"$(( BUDGET + 1 ))" "$GGUF" > "$OUTDIR/b/model.gguf.part2"
  sha256sum "$GGUF" | awk '{print $1 "  model.gguf"}' > "$OUTDIR/b/model.sha256"
fi
( cd "$OUTDIR/a" && sha256sum humanlm.xz $( [ "$WITH_MODEL" = 1 ] && echo model.gguf.part1 ) > manifest.sha256 )
[ "$WITH_MODEL" = 1 ] && ( cd "$OUTDIR/b" && sha256sum model.gguf.part2 > manifest.sha256 )
du -b "$OUTDIR"/*/* | sed "s|$ROOT/||"
for p in a b; do
  [ -d "$OUTDIR/$p" ] && echo "part $p: $(du -sb "$OUTDIR/$p" | cut -f1) bytes (+ the tree, $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes)"
done
