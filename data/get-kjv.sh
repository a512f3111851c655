#!/usr/bin/env bash
# get-kjv.sh: the King James Bible as one plain-text byte file, for the text models.
# Installs Debian's bible-kjv (the `bible` program and its text) if `bible` is missing, then
# writes the whole text, Genesis 1:1 to Revelation 22:21, to data/kjv.txt (or to $1).
# Idempotent: a second run keeps an existing non-empty output file.
#   usage: data/get-kjv.sh [OUTPUT]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/kjv.txt}"

# shellcheck source=SCRIPTDIR/common.sh
. "$here/common.sh"

if command -v bible >/dev/null 2>&1; then
    echo "get-kjv.sh: 'bible' is installed ($(command -v bible))"
else
    echo "get-kjv.sh: 'bible' not found: installing Debian's bible-kjv with apt-get"
    apt_install bible-kjv
fi

if [ -s "$out" ]; then
    echo "get-kjv.sh: $out already exists: kept as it is"
else
    mkdir -p "$(dirname "$out")"
    echo "get-kjv.sh: writing the whole text (bible -f \"Gen1:1-Rev22:21\") to $out"
    tmp="$out.tmp.$$"
    trap 'rm -f "$tmp"' EXIT
    bible -f "Gen1:1-Rev22:21" >"$tmp"
    if [ ! -s "$tmp" ]; then
        echo "get-kjv.sh: bible wrote nothing" >&2
        exit 1
    fi
    mv "$tmp" "$out"
    trap - EXIT
fi

size=$(wc -c <"$out")
echo "get-kjv.sh: done: $out ($size bytes)"
