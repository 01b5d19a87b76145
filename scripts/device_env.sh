# Sourced at the start of a device-machine run (see docs/benchmarks.md): installs the carried wheels
# (miditok, symusic, partitura, ...) that the GPU image lacks, and puts the repository on the path.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
imf() { python3 -m instruct_museformer "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
