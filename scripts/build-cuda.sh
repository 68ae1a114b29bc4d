#!/usr/bin/env bash
# Builds the CUDA binaries (`lorasweep`, `lorasweep-worker` with `--features cuda`) on a machine
# with no CUDA install: the CUDA 13.0 toolkit comes from PyPI wheels into a virtualenv, and the
# link step gets a stub `libcuda.so` (the real one comes with the NVIDIA driver on the GPU host).
#
#   scripts/build-cuda.sh [OUT_DIR]        # default OUT_DIR: target/cuda-dist
#
# Takes ~25 min cold on 2 cores (the MoE/GGUF kernels of candle-kernels dominate) and ~1.3 GB of
# wheels; kept out of CI for that reason. Needs python3 with venv, gcc and a Rust toolchain.
# Kernels are built for sm_90a (H100/H200): set CUDA_COMPUTE_CAP for other GPUs (e.g. 80 for A100).
# The GPU host needs a driver that supports CUDA 13.0 (≥ 580) and the wheel libraries, which this
# script copies next to the binaries (run them with LD_LIBRARY_PATH=OUT_DIR/lib).
# Why this recipe: the CUDA 12 wheels on PyPI ship no nvcc, the CUDA 13 ones do (and nvcc runs from the wheel);
# cudarc 0.19 supports CUDA ≤ 13.4, so the toolkit is pinned to 13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-$root/target/cuda-dist}
work=${LORASWEEP_CUDA_WORK:-$root/target/cuda-toolkit}
venv=$work/venv
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "cuda-toolkit[nvcc,crt,cudart,cccl,cublas,curand,nvrtc]==13.0.2" "nvidia-nvvm==13.0.88"
fi
c13=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$c13/bin/nvcc" ] || { echo "no nvcc in $c13/bin: the wheel layout changed" >&2; exit 1; }

# A CUDA_HOME that cudarc and cudaforge understand: bin/include/nvvm from the wheels, unversioned
# .so names for the linker, and a link-time-only libcuda stub (every function returns 34 =
# CUDA_ERROR_STUB_LIBRARY; it must never be on the library path of the GPU host).
home=$work/cuda-home
rm -rf "$home" && mkdir -p "$home/lib/stubs"
ln -s "$c13/bin" "$home/bin"; ln -s "$c13/include" "$home/include"; ln -s "$c13/nvvm" "$home/nvvm"
for f in "$c13"/lib/*.so*; do ln -s "$f" "$home/lib/"; done
for lib in cudart:13 cublas:13 cublasLt:13 curand:10 nvrtc:13; do
  name=${lib%%:*}; ver=${lib##*:}
  ln -sf "lib$name.so.$ver" "$home/lib/lib$name.so"
done
cudarc_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | head -1 || true)
if [ -z "$cudarc_src" ]; then
  cargo fetch --locked >/dev/null
  cudarc_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | head -1)
fi
grep -ohE "^pub unsafe fn cu[A-Za-z0-9_]+\(" "$cudarc_src"/src/driver/sys/*.rs \
  | sed -E 's/pub unsafe fn (.*)\(/\1/' | sort -u | sed 's/.*/int &(void){return 34;}/' > "$work/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib/stubs/libcuda.so" "$work/libcuda_stub.c"

export CUDA_HOME=$home PATH=$home/bin:$PATH NVCC_CCBIN=${NVCC_CCBIN:-/usr/bin/gcc}
nvcc --version | tail -2
time cargo build --release --locked --features lorasweep-cli/cuda --bin lorasweep --bin lorasweep-worker

mkdir -p "$out/lib"
cp target/release/lorasweep target/release/lorasweep-worker "$out/"
# Only what the binaries load at start (readelf NEEDED), not the 1.2 GB toolkit.
for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do cp -L "$c13/lib/$so" "$out/lib/"; done
echo "built: $out (run with LD_LIBRARY_PATH=$out/lib on a CUDA 13 driver)"
