#!/usr/bin/env bash
# Your settings for webui.sh (it reads this file at every start). Each line keeps a value already set in the
# environment; change the text after ":-" to set your own.

# Flags for launch.py, e.g. "--listen --api --xformers" (python launch.py --help lists them).
# Empty on a Mac: A1111's Mac defaults are used (--skip-torch-cuda-test --upcast-sampling --no-half-vae ...).
export COMMANDLINE_ARGS="${COMMANDLINE_ARGS:-}"

# The Python that makes the venv (3.10 to 3.13; 3.11 recommended).
export PYTHON="${PYTHON:-python3}"

# Where the venv goes; "-" runs with PYTHON as it is, without a venv.
export VENV_DIR="${VENV_DIR:-}"

# The pip command that installs torch, instead of the build chosen for this machine, e.g.
# "pip install torch==2.9.1 torchvision --extra-index-url https://download.pytorch.org/whl/cu128".
export TORCH_COMMAND="${TORCH_COMMAND:-}"
