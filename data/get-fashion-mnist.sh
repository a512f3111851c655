#!/usr/bin/env bash
# get-fashion-mnist.sh: Fashion-MNIST (Zalando, MIT licence) from Debian's
# dataset-fashion-mnist package, installed if missing. The package ships the four gzip IDX
# files in /usr/share/datasets/fashion-mnist/:
#   train-images-idx3-ubyte.gz  60000 images 28x28   (open with STX_DATA_IDX)
#   t10k-images-idx3-ubyte.gz   10000 images 28x28   (open with STX_DATA_IDX)
#   train-labels-idx1-ubyte.gz, t10k-labels-idx1-ubyte.gz: labels (IDX magic 0x801; not
#   images, so STX_DATA_IDX refuses them; the unconditional image models do not need them)
# sparsetx reads the .gz files directly (decompressed once in memory); nothing is copied.
# Idempotent.   usage: data/get-fashion-mnist.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir=/usr/share/datasets/fashion-mnist

# shellcheck source=SCRIPTDIR/common.sh
. "$here/common.sh"

if dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && [ -d "$dir" ]; then
    echo "get-fashion-mnist.sh: dataset-fashion-mnist is installed"
else
    echo "get-fashion-mnist.sh: installing Debian's dataset-fashion-mnist with apt-get"
    apt_install dataset-fashion-mnist
fi

echo "get-fashion-mnist.sh: the gzip IDX files are in $dir:"
found=0
for f in "$dir"/*-idx?-ubyte.gz; do
    [ -e "$f" ] || continue
    found=1
    printf '  %s (%s bytes)\n' "$f" "$(wc -c <"$f")"
done
if [ "$found" -eq 0 ]; then
    echo "get-fashion-mnist.sh: no IDX files found in $dir" >&2
    exit 1
fi
echo "get-fashion-mnist.sh: images for training: $dir/train-images-idx3-ubyte.gz," \
    "for testing: $dir/t10k-images-idx3-ubyte.gz"
