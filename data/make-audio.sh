#!/usr/bin/env bash
# make-audio.sh: a short speech recording for the audio models, made on this machine:
# espeak-ng speaks a fixed public-domain English text (Genesis 1:1-10, King James Version) to
# a WAV file (22050 Hz, mono, 16-bit), and sox converts it to 12 kHz mono 16-bit PCM (the
# paper's audio rate; sox's resampler is band-limited, unlike the linear interpolation of
# stx_dataset_open's resample_hz). Installs espeak-ng and sox with apt-get when missing.
# Writes data/speech.wav (or $1). Idempotent: an existing non-empty output file is kept.
# Open it with stx_dataset_open(path, STX_DATA_WAV, 0, &ds): one stream of mu-law bytes.
#   usage: data/make-audio.sh [OUTPUT.wav]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/speech.wav}"
rate=12000

# shellcheck source=SCRIPTDIR/common.sh
. "$here/common.sh"

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "make-audio.sh: installing ${missing[*]} with apt-get"
    apt_install "${missing[@]}"
else
    echo "make-audio.sh: espeak-ng and sox are installed"
fi

if [ -s "$out" ]; then
    echo "make-audio.sh: $out already exists: kept as it is"
else
    mkdir -p "$(dirname "$out")"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    cat >"$work/text.txt" <<'TEXT'
In the beginning God created the heaven and the earth. And the earth was without form, and
void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of
the waters. And God said, Let there be light: and there was light. And God saw the light, that
it was good: and God divided the light from the darkness. And God called the light Day, and
the darkness he called Night. And the evening and the morning were the first day.

And God said, Let there be a firmament in the midst of the waters, and let it divide the
waters from the waters. And God made the firmament, and divided the waters which were under
the firmament from the waters which were above the firmament: and it was so. And God called
the firmament Heaven. And the evening and the morning were the second day.

And God said, Let the waters under the heaven be gathered together unto one place, and let
the dry land appear: and it was so. And God called the dry land Earth; and the gathering
together of the waters called he Seas: and God saw that it was good.
TEXT
    echo "make-audio.sh: speaking Genesis 1:1-10 (KJV) with espeak-ng (voice en-us)"
    espeak-ng -v en-us -s 160 -f "$work/text.txt" -w "$work/speech.wav"
    echo "make-audio.sh: converting to $rate Hz mono 16-bit PCM with sox"
    sox "$work/speech.wav" -r "$rate" -c 1 -b 16 -e signed-integer "$work/out.wav"
    mv "$work/out.wav" "$out"
fi

size=$(wc -c <"$out")
echo "make-audio.sh: done: $out ($size bytes; $(soxi -r "$out") Hz, $(soxi -c "$out")" \
    "channel(s), $(soxi -b "$out")-bit, $(soxi -d "$out"))"
