#!/usr/bin/env bash
# Fetch Intel MKL (and the Intel OpenMP runtime it threads with) from PyPI into a
# per-user cache, for smelt's run-time-loaded GEMM backend (cargo feature `mkl`).
#
#   SMELT_MKL_DIR="$(scripts/fetch-mkl.sh)"; export SMELT_MKL_DIR
#
# Prints the directory holding the shared libraries (default
# $HOME/.cache/smelt/mkl/lib, which smelt also searches by itself). Idempotent: nothing
# is downloaded when the libraries are already there. Never fails its caller: when
# pip, python or the network is missing it prints a warning to stderr and exits 0
# with empty output, and smelt then runs on its portable GEMM.
set -uo pipefail

MKL_VERSION="${SMELT_MKL_VERSION:-2026.2.0}"
OMP_VERSION="${SMELT_OMP_VERSION:-2026.2.0}"
ROOT="${SMELT_MKL_CACHE:-${HOME}/.cache/smelt/mkl}"
LIB="$ROOT/lib"
STAMP="$LIB/.smelt-mkl-$MKL_VERSION-omp-$OMP_VERSION"
# What smelt's loader requires (a partial set would make MKL exit the process).
NEEDED="rt core intel_lp64 intel_thread def mc3 avx2 avx512 avx10"

complete() {
    [ -f "$STAMP" ] && [ -e "$LIB/libiomp5.so" ] || return 1
    for n in $NEEDED; do
        compgen -G "$LIB/libmkl_$n.so.*" >/dev/null || return 1
    done
}

warn() { echo "fetch-mkl: $*; smelt will use its portable GEMM" >&2; exit 0; }

if complete; then
    echo "$LIB"
    exit 0
fi

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) warn "MKL wheels are x86_64 Linux only (this is $(uname -s)-$(uname -m))" ;;
esac

PY=""
for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -m pip --version >/dev/null 2>&1; then
        PY="$cand"
        break
    fi
done
[ -n "$PY" ] || warn "no python with pip found"

WHEELS="$ROOT/wheels"
mkdir -p "$WHEELS" "$LIB" || warn "cannot create $ROOT"
if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 \
        "mkl==$MKL_VERSION" "intel-openmp==$OMP_VERSION" -d "$WHEELS" >&2; then
    warn "pip download of mkl==$MKL_VERSION / intel-openmp==$OMP_VERSION failed (offline?)"
fi

# Unpack only what cblas GEMMs need: the single dynamic runtime (mkl_rt), the LP64
# interface layer it loads, the core,
# both threading layers, the per-ISA kernel libraries mkl_core dispatches to, and
# libiomp5. Wheels are zip files with the libraries under `*.data/data/lib/`.
"$PY" - "$WHEELS" "$LIB" <<'PYEOF' || warn "unpacking the wheels failed"
import glob, os, re, sys, zipfile
wheels, lib = sys.argv[1], sys.argv[2]
keep = re.compile(
    r"lib(mkl_(rt|core|intel_lp64|intel_thread|sequential|def|mc3|avx2|avx512|avx10)\.so\.\d+|iomp5\.so)$"
)
found = 0
for whl in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = os.path.basename(info.filename)
            if "/data/lib/" in info.filename and keep.search(name):
                tmp = os.path.join(lib, name + ".part")
                with z.open(info) as src, open(tmp, "wb") as dst:
                    while True:
                        buf = src.read(1 << 20)
                        if not buf:
                            break
                        dst.write(buf)
                os.replace(tmp, os.path.join(lib, name))
                found += 1
print(f"fetch-mkl: unpacked {found} libraries into {lib}", file=sys.stderr)
PYEOF
# The wheels are only needed to unpack; keep the cache to the libraries.
rm -rf "$WHEELS"
touch "$STAMP"
complete || warn "the wheels lack some of: libiomp5 libmkl_{${NEEDED// /,}}"
echo "$LIB"
