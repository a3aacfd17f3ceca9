#!/bin/sh
# Installs what homepool needs, where it is missing: Debian/Ubuntu packages (as root, or with
# sudo), then a virtualenv in .venv with homepool and its development tools.
set -eu
PYTHON=${PYTHON:-python3}

# python3-venv: the venv module; e2fsprogs/util-linux/mount: the loop drives of the demo and
# tests; fuse3: fusermount3, to unmount (and mount when not root); ca-certificates: pip over HTTPS.
PACKAGES="python3 python3-venv python3-dev gcc ca-certificates e2fsprogs util-linux mount fuse3"

if command -v dpkg-query >/dev/null 2>&1; then
    missing=""
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "setup: installing Debian packages:$missing"
        if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "setup: error: need root (or sudo) to install:$missing" >&2; exit 1
        fi
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
else
    echo "setup: not a Debian/Ubuntu system; make sure these are installed: $PACKAGES" >&2
fi

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=/usr/bin/python3
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "homepool needs Python >= 3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
echo "setup: ready (.venv/bin/homepool)"
