# dit-jax as the README installs it: Python 3.12, `pip install -e .`, and jax for the accelerator.
#   docker build -t dit-jax .                          # CPU
#   docker build --build-arg JAX_EXTRA=tpu -t dit-jax .    # TPU VMs, GKE TPU
#   docker build --build-arg JAX_EXTRA=cuda12 -t dit-jax . # NVIDIA GPUs
# On a TPU VM: docker run --privileged --network=host -v ~/.config/gcloud:/root/.config/gcloud dit-jax \
#   dit-jax train --distributed --config configs/dit.py:XL/2 --workdir gs://bucket/run
FROM python:3.12-slim
ARG JAX_EXTRA=""
ENV PIP_NO_CACHE_DIR=1
WORKDIR /dit-jax
COPY . .
RUN python -m venv .venv \
 && .venv/bin/pip install -U pip \
 && if [ -n "$JAX_EXTRA" ]; then .venv/bin/pip install -e . "jax[$JAX_EXTRA]"; else .venv/bin/pip install -e .; fi
ENV PATH=/dit-jax/.venv/bin:$PATH
CMD ["dit-jax", "train", "--help"]
