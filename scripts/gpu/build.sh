#!/usr/bin/env bash
# Build `humanlm` with candle's `cuda` feature for the H100 (sm_90, driver 580 / CUDA 13.0) on
# this machine (no GPU, no nvcc) and pack what the device needs into gpu-bundle/ (git-ignored).
#
#   scripts/gpu/build.sh [--no-model] [--pack-only]
#
# The device receives at most 64 MiB a call, and the default checkpoint alone is 98 MB, so the
# bundle is cut into parts that travel in separate calls (see scripts/gpu/run.sh and README,
# "GPU"):
#   gpu-bundle/a/   the first slice of the default GGUF
#   gpu-bundle/b/   the stripped binary (xz) and the rest of the GGUF
# each with a manifest of sha256 sums. Part b alone runs every check but the default-model
# parity, which the summary then marks as skipped. --no-model packs part b with the binary only;
# --pack-only repacks the last build without building.
#
# Uses its own target folder (target/cuda) so the shared target/release is left alone, and
# RUSTFLAGS=-C target-cpu=x86-64-v3 instead of the repository's `native`: the binary runs on
# another host, whose CPU must not be assumed to have this one's AVX-512.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
WITH_MODEL=1
PACK_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --no-model) WITH_MODEL=0 ;;
    --pack-only) PACK_ONLY=1 ;;
    *) echo "build.sh: unknown option '$arg' (expected --no-model, --pack-only)" >&2; exit 2 ;;
  esac
done
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
if [ "$PACK_ONLY" = 0 ]; then
  PATH="$SHIM:$PATH" "$BUILD" "$ROOT" build --release --features cuda --bin humanlm
fi

BIN="$CARGO_TARGET_DIR/release/humanlm"
OUTDIR="$ROOT/gpu-bundle"
rm -rf "$OUTDIR"; mkdir -p "$OUTDIR/a" "$OUTDIR/b"
strip -o "$OUTDIR/humanlm" "$BIN"
# The binary is mostly PTX and kernel images, which compress well; xz leaves room in part b
# for the second slice of the checkpoint.
xz -T0 -9 -c "$OUTDIR/humanlm" > "$OUTDIR/b/humanlm.xz"
rm "$OUTDIR/humanlm"

# What a call may carry besides the tree itself (64 MiB in all, 2 MiB kept spare).
# (Tracked and untracked-but-not-ignored files travel; other work in the tree can add to them
# before the call, hence the spare.)
TREE_BYTES=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
BUDGET=$(( 62 * 1024 * 1024 - TREE_BYTES ))
BIN_BYTES=$(stat -c %s "$OUTDIR/b/humanlm.xz")
GGUF="$ROOT/checkpoints/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ "$WITH_MODEL" = 1 ]; then
  [ -f "$GGUF" ] || { echo "build.sh: $GGUF: missing (run scripts/fetch-checkpoints.sh, or pass --no-model)" >&2; exit 2; }
  SIZE=$(stat -c %s "$GGUF")
  # Part a carries the first slice of the checkpoint, part b the binary and the rest: split so
  # both parts are the same size, which leaves each call the most room to spare.
  FIRST=$(( (SIZE + BIN_BYTES) / 2 ))
  REST=$(( SIZE - FIRST ))
  if [ "$FIRST" -gt "$BUDGET" ] || [ $(( REST + BIN_BYTES )) -gt "$BUDGET" ]; then
    echo "build.sh: the binary ($BIN_BYTES bytes) and the checkpoint ($SIZE bytes) do not fit in two calls; use --no-model" >&2; exit 2
  fi
  head -c "$FIRST" "$GGUF" > "$OUTDIR/a/model.gguf.part1"
  tail -c +"$(( FIRST + 1 ))" "$GGUF" > "$OUTDIR/b/model.gguf.part2"
  sha256sum "$GGUF" | awk '{print $1 "  model.gguf"}' > "$OUTDIR/b/model.sha256"
  ( cd "$OUTDIR/a" && sha256sum model.gguf.part1 > manifest.sha256 )
else
  rmdir "$OUTDIR/a"
fi
( cd "$OUTDIR/b" && sha256sum ./* 2>/dev/null | grep -v manifest > manifest.sha256 )
for p in a b; do
  [ -d "$OUTDIR/$p" ] || continue
  BYTES=$(du -sb "$OUTDIR/$p" | cut -f1)
  echo "gpu-bundle/$p: $BYTES bytes; with the tree ($TREE_BYTES bytes) $(( (BYTES + TREE_BYTES) / 1048576 )) MiB of the 64 MiB a call carries"
  [ $(( BYTES + TREE_BYTES )) -le $(( 64 * 1024 * 1024 )) ] || { echo "build.sh: gpu-bundle/$p is too large to carry" >&2; exit 2; }
done
