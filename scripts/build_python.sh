#!/usr/bin/env bash
# Build CPython 3.13 into $FEM_CROSSDIFF_CACHE/python from the upstream tarball that Debian ships
# as the orig tarball of its trixie python3.13 source package (only the Debian archive is reachable).
# About 2 minutes on 2 cores. Leaves the clone untouched.
set -eu
cache="${FEM_CROSSDIFF_CACHE:-$HOME/.cache/fem-crossdiff}"
prefix="$cache/python"
work="$cache/python-build"
fail() { echo "fem-crossdiff set-up: $*" >&2; exit 3; }
command -v apt-get >/dev/null || fail "no Python >= 3.12 found and no apt-get to fetch CPython source; install Python 3.12 or 3.13 and set PYTHON=/path/to/python3"
command -v cc >/dev/null || fail "no Python >= 3.12 found and no C compiler to build one; install Python 3.12+ (or gcc) first"
mkdir -p "$work/lists/partial" "$work/src"
echo "deb-src http://deb.debian.org/debian trixie main" > "$work/sources.list"
aptopts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$work/lists")
# As root, apt downloads as its _apt user, which cannot write into this private folder: it warns,
# then downloads as root anyway; say so up front instead of the warning.
if [ "$(id -u)" = 0 ]; then aptopts+=(-o APT::Sandbox::User=root); fi
echo "fem-crossdiff set-up: building CPython 3.13 into $prefix (about 2 minutes)" >&2
apt-get "${aptopts[@]}" update >/dev/null || fail "cannot reach Debian's archive for the CPython source"
( cd "$work/src" && apt-get "${aptopts[@]}" source --download-only python3.13 >/dev/null ) \
  || fail "cannot download the python3.13 source package"
tarball=$(ls "$work"/src/python3.13_*.orig.tar.xz | head -n 1)
rm -rf "$work/tree" && mkdir -p "$work/tree"
tar -xJf "$tarball" -C "$work/tree" --strip-components=1
( cd "$work/tree" && ./configure --prefix="$prefix" --with-ensurepip=install >/dev/null \
  && make -j"$(nproc)" >/dev/null 2>&1 && make install >/dev/null 2>&1 ) || fail "building CPython failed (see $work/tree)"
rm -rf "$work/tree"
"$prefix/bin/python3" --version >&2
