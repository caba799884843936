#!/usr/bin/env bash
# Installs a CUDA toolkit good enough to BUILD smelt with `--features cuda,nccl` on a
# machine without a GPU or a system CUDA install, from NVIDIA's PyPI wheels, then
# prints the `export` lines candle's and cudarc's build scripts need.
#
#   eval "$(scripts/cuda-toolchain.sh)"
#   cargo build --release -p smelt-cli --features cuda,nccl
#
# Environment:
#   SMELT_CUDA_HOME     where to install (default: $HOME/.cache/smelt/cuda)
#   SMELT_CUDA_VERSION  CUDA release of the wheels: 13.0 (default) or 13.2. Only the CUDA 13 wheels
#                       ship a complete nvcc (the cu12 ones have ptxas alone), so the build is CUDA 13:
#                       it needs a GPU driver >= 580 at run time (candle-kernels are shipped as PTX).
#   SMELT_NCCL_VERSION  nvidia-nccl-cu13 release (default 2.30.7; cudarc 0.19 binds NCCL 2.30)
#   CUDA_COMPUTE_CAP    GPU compute capability the kernels are built for (default 90: H100)
#
# Layout produced (a CUDA_ROOT-like tree of symlinks into the unpacked wheels):
#   $SMELT_CUDA_HOME/root/{bin/nvcc, nvvm/, include/, lib64/*.so, lib64/stubs/libcuda.so}
# libcuda.so (the driver) ships with the GPU driver, not in any wheel: a link-time stub is
# compiled from the symbol list of cudarc's driver bindings so the binary links here; at run
# time the real driver's libcuda.so.1 is used.
set -euo pipefail

home="${SMELT_CUDA_HOME:-$HOME/.cache/smelt/cuda}"
ver="${SMELT_CUDA_VERSION:-13.0}"
nccl="${SMELT_NCCL_VERSION:-2.30.7}"
cap="${CUDA_COMPUTE_CAP:-90}"

case "$ver" in
  13.0) nvcc_v=13.0.88; rt_v=13.0.96; nvrtc_v=13.0.88; cccl_v=13.0.85; cublas_v=13.0.2.14; curand_v=10.4.0.35 ;;
  13.2) nvcc_v=13.2.86; rt_v=13.2.86; nvrtc_v=13.2.86; cccl_v=13.2.86; cublas_v=13.3.0.5; curand_v=10.4.2.66 ;;
  *) echo "cuda-toolchain.sh: SMELT_CUDA_VERSION=$ver is not one of 13.0, 13.2" >&2; exit 2 ;;
esac

wheels="$home/wheels-$ver"
root="$home/root"
log="$home/install.log"
mkdir -p "$home"
stamp="$wheels/.complete-$nvcc_v-$nccl"

if [ ! -e "$stamp" ]; then
  echo "cuda-toolchain.sh: installing CUDA $ver wheels into $wheels (log: $log)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$wheels" \
    "nvidia-cuda-nvcc==$nvcc_v" "nvidia-cuda-crt==$nvcc_v" "nvidia-nvvm==$nvcc_v" \
    "nvidia-cuda-runtime==$rt_v" "nvidia-cuda-nvrtc==$nvrtc_v" "nvidia-cuda-cccl==$cccl_v" \
    "nvidia-cublas==$cublas_v" "nvidia-curand==$curand_v" "nvidia-nccl-cu13==$nccl" \
    >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  touch "$stamp"
fi

# The CUDA 13 wheels all unpack into one tree (nvidia/cu13/{bin,include,lib,nvvm}); NCCL into
# nvidia/nccl. Assemble a CUDA_ROOT-like tree of symlinks (rebuilt every time: cheap).
cu="$wheels/nvidia/cu13"
[ -x "$cu/bin/nvcc" ] || { echo "cuda-toolchain.sh: $cu/bin/nvcc missing after install" >&2; exit 1; }
rm -rf "$root"
mkdir -p "$root/include" "$root/lib64/stubs"
ln -s "$cu/bin" "$root/bin"
ln -s "$cu/nvvm" "$root/nvvm"
for dir in "$cu/include" "$wheels/nvidia/nccl/include"; do
  [ -d "$dir" ] || continue
  for f in "$dir"/*; do
    [ -e "$root/include/$(basename "$f")" ] || ln -s "$f" "$root/include/"
  done
done
for dir in "$cu/lib" "$wheels/nvidia/nccl/lib"; do
  [ -d "$dir" ] || continue
  for f in "$dir"/*.so*; do
    base="$(basename "$f")"
    [ -e "$root/lib64/$base" ] || ln -s "$f" "$root/lib64/$base"
    # the wheels ship only versioned names (libcublas.so.13): add the unversioned link names
    case "$base" in
      *.so.*) plain="${base%%.so.*}.so"; [ -e "$root/lib64/$plain" ] || ln -s "$f" "$root/lib64/$plain" ;;
    esac
  done
done

# Link-time stub of the driver library: every cu* symbol cudarc's driver bindings name.
stub="$root/lib64/stubs/libcuda.so"
sys_rs="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys 2>/dev/null | tail -n1 || true)"
syms="$home/libcuda-symbols.txt"
if [ -n "$sys_rs" ]; then
  grep -rhoE '\bfn cu[A-Za-z0-9_]+' "$sys_rs" | sed 's/fn //' | sort -u >"$syms"
fi
if [ ! -s "$syms" ]; then
  # before cargo has fetched cudarc: the headers list the driver API
  grep -hoE '\bcu[A-Z][A-Za-z0-9_]+\s*\(' "$root/include/cuda.h" | sed 's/\s*(//' | sort -u >"$syms"
fi
{
  echo "/* link-time stub of libcuda.so; never loaded at run time */"
  while read -r s; do echo "void $s(void) {}"; done <"$syms"
} >"$home/libcuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$home/libcuda-stub.c"

nvcc_ver="$("$root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
echo "cuda-toolchain.sh: nvcc $nvcc_ver, NCCL $nccl, compute capability $cap, root $root" >&2

cat <<EOF
export CUDA_ROOT="$root"
export CUDA_PATH="$root"
export CUDA_HOME="$root"
export PATH="$root/bin:\$PATH"
export LD_LIBRARY_PATH="$root/lib64\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LIBRARY_PATH="$root/lib64:$root/lib64/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=$cap
export NVCC_CCBIN="\${NVCC_CCBIN:-$(command -v g++ || command -v c++)}"
EOF
