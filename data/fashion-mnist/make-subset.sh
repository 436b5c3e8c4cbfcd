#!/usr/bin/env bash
# Cuts the bundled Fashion-MNIST subset from the full dataset that Debian ships
# (apt-get install dataset-fashion-mnist). Deterministic: the first N records of each file, gzip -n -9
# (no file name or time stamp in the gzip header), so re-running gives byte-identical files.
#
#   usage: data/fashion-mnist/make-subset.sh [SOURCE_DIR] [TRAIN_N] [TEST_N]
# No pipefail: "head -c" closes the pipe early on purpose, which makes gzip and tail die of SIGPIPE.
set -eu

src=${1:-/usr/share/datasets/fashion-mnist}
train_n=${2:-10000}
test_n=${3:-1000}
out=$(cd "$(dirname "$0")" && pwd)
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -r "$src/$f.gz" ] || { echo "missing $src/$f.gz (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
done

# Big-endian 32-bit integer as raw bytes (IDX headers are big-endian).
be32() {
    printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255)))"
}

# cut_images SRC_GZ DST_GZ N: IDX3 header (magic 0x00000803, N, 28, 28) then the first N 28x28 images.
cut_images() {
    { be32 $((0x00000803)); be32 "$3"; be32 28; be32 28
      gzip -dc "$1" | tail -c +17 | head -c $(($3 * 784)); } | gzip -n -9 > "$2"
}

# cut_labels SRC_GZ DST_GZ N: IDX1 header (magic 0x00000801, N) then the first N labels.
cut_labels() {
    { be32 $((0x00000801)); be32 "$3"
      gzip -dc "$1" | tail -c +9 | head -c "$3"; } | gzip -n -9 > "$2"
}

cut_images "$src/train-images-idx3-ubyte.gz" "$out/train-images-idx3-ubyte.gz" "$train_n"
cut_labels "$src/train-labels-idx1-ubyte.gz" "$out/train-labels-idx1-ubyte.gz" "$train_n"
cut_images "$src/t10k-images-idx3-ubyte.gz" "$out/t10k-images-idx3-ubyte.gz" "$test_n"
cut_labels "$src/t10k-labels-idx1-ubyte.gz" "$out/t10k-labels-idx1-ubyte.gz" "$test_n"

( cd "$out" && sha256sum ./*.gz )
