# The GPU benchmarks, in two calls of under 8 minutes each, for a machine with one CUDA GPU, JAX with its CUDA
# plugin, torch and transformers (no seqio or TensorFlow needed). Each prints the GPU and package versions, then:
#   bash bench/gpu_all.sh mfu                 # bench/gpu_mfu.py, batch 64: attention 'einsum', then 'cudnn'
#   bash bench/gpu_all.sh peers [PACKING_NPZ] # bench/gpu_peers.py: train step, greedy decode, packing vs HF
# PACKING_NPZ from `python bench/packing.py --save_batches F --batch 64` on a machine with seqio. Each run has
# its own time limit, so one failure leaves the others' lines.
#
# SITE (optional): a folder of extra packages (e.g. gin-config, and flax/optax at this project's pins) put first on
# PYTHONPATH; if text2text does not import with it, the run goes on with only SITE_MIN (e.g. gin-config alone).
# XLA's GEMM autotuning made the first H200 compiles slow (54 s for the tiny model, over 150 s for
# T5.1.1-base), so it is off unless the caller sets XLA_FLAGS.
set -u
part=${1:?usage: bash bench/gpu_all.sh mfu|peers [PACKING_NPZ]}
npz=${2:-}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_FLAGS=${XLA_FLAGS:---xla_gpu_autotune_level=0}
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
check() {
  python3 -c 'import jax, flax, optax, torch, transformers, text2text.models, text2text.optim, text2text.train_state
print("# jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__, "torch",
      torch.__version__, "transformers", transformers.__version__)'
}
export PYTHONPATH=${SITE:-}
if ! check; then
  echo "# text2text does not import with PYTHONPATH=$PYTHONPATH; trying ${SITE_MIN:-nothing extra}"
  export PYTHONPATH=${SITE_MIN:-}
  check || exit 1
fi
echo "# XLA_FLAGS=$XLA_FLAGS"
case $part in
  mfu)
    for kernel in einsum cudnn; do
      echo "## gpu_mfu batch 64, attention $kernel"
      timeout 220 python3 bench/gpu_mfu.py --batch 64 --steps 10 --attention_kernel $kernel
    done ;;
  peers)
    echo "## gpu_peers"
    timeout 440 python3 bench/gpu_peers.py --rounds 2 --steps 5 ${npz:+--packing_batches "$npz"} ;;
  *) echo "error: unknown part $part (mfu or peers)"; exit 2 ;;
esac
