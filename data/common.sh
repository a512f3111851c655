# common.sh: helpers the data/*.sh scripts source (not a script to run on its own).
#   here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
#   . "$here/common.sh"
# Messages name the script that sourced this file.
# shellcheck shell=bash

# Runs a command as root: directly when we are root, else through sudo when there is one.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "${0##*/}: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

# Installs Debian packages with apt-get, as root, without questions.
apt_install() {
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}
