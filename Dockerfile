# The web UI in a container. `docker compose --profile gpu up` (NVIDIA, needs the NVIDIA Container Toolkit) or
# `docker compose --profile cpu up`, then http://127.0.0.1:7860. What a user keeps lives in the /data volume
# (models, outputs, settings, extensions); no model is baked in, only the bundled demo model.
#   BASE         the image both stages start from: an NVIDIA CUDA runtime image (default) or, for the CPU variant,
#                any Debian/Ubuntu image with a python3.11 package (debian:bookworm-slim)
#   TORCH_INDEX  torch's wheel index for that base (.../cu128, .../cpu)
#   PIP_ARGS     extra pip arguments; bench/docker_check.sh builds offline with --no-index and a ./wheelhouse
ARG BASE=nvidia/cuda:12.8.1-runtime-ubuntu22.04

FROM ${BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG PIP_ARGS=
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# requirements.txt, and the wheels of ./wheelhouse when there is one
COPY requirements.txt wheel[h]ouse /tmp/install/
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install $PIP_ARGS --find-links /tmp/install torch torchvision --extra-index-url "$TORCH_INDEX" \
 && /opt/venv/bin/pip install $PIP_ARGS --find-links /tmp/install -r /tmp/install/requirements.txt \
 && printf '{"command": "pip install torch torchvision --extra-index-url %s", "kind": "image", "env": {}}' \
      "$TORCH_INDEX" > /opt/venv/sd-webui-torch.json

FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 git ca-certificates libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --shell /usr/sbin/nologin webui \
 && mkdir -p /data && chown webui:webui /data
# the venv belongs to the user so that extensions' install.py can add their packages
COPY --from=build --chown=webui:webui /opt/venv /opt/venv
COPY launch.py requirements.txt /app/
COPY modules /app/modules
COPY webui /app/webui
COPY extensions-builtin /app/extensions-builtin
COPY models/Stable-diffusion/demo-shapes.safetensors /app/models/Stable-diffusion/
COPY models/ControlNet/demo-shapes-canny.safetensors /app/models/ControlNet/
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/data/cache/huggingface COMMANDLINE_ARGS=""
USER webui
WORKDIR /data
VOLUME /data
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/healthz', timeout=4)"]
# --listen: the port is published by Docker (compose binds it to 127.0.0.1 on the host); more flags: CMD or
# COMMANDLINE_ARGS
ENTRYPOINT ["python", "/app/launch.py", "--data-dir", "/data", "--listen", \
            "--ckpt-dir", "/app/models/Stable-diffusion", "--controlnet-dir", "/app/models/ControlNet"]
CMD ["--api"]
