#!/usr/bin/env bash
# Start the web UI on Linux or macOS: the first run makes a venv and installs torch for this machine (NVIDIA: CUDA,
# AMD: ROCm, Apple silicon: MPS, else CPU) and the requirements; later runs start at once.
# Settings go in webui-user.sh (COMMANDLINE_ARGS, PYTHON, VENV_DIR, TORCH_COMMAND), as in AUTOMATIC1111's web UI;
# flags given here are added to COMMANDLINE_ARGS. modules/install_plan.py holds the decisions.
set -u

cd "$(dirname "$0")" || exit 1
script_dir="$(pwd)"

if [[ -f "$script_dir/webui-user.sh" ]]; then
    # shellcheck source=webui-user.sh
    source "$script_dir/webui-user.sh"
fi

python_cmd="${PYTHON:-python3}"
venv_dir="${VENV_DIR:-$script_dir/venv}"

if [[ $(id -u) -eq 0 && " $* ${COMMANDLINE_ARGS:-} " != *" -f "* ]]; then
    echo "webui.sh: running as root is not recommended; add -f to the arguments to do it anyway." >&2
    exit 1
fi

if ! command -v "$python_cmd" >/dev/null 2>&1; then
    echo "webui.sh: '$python_cmd' not found. Install Python 3.11 (3.10 to 3.13 work) and, if it is not" \
         "python3 on PATH, set PYTHON in webui-user.sh." >&2
    exit 1
fi

skip_python=""
[[ " $* ${COMMANDLINE_ARGS:-} " == *" --skip-python-version-check "* ]] && skip_python="--skip-python-version-check"
"$python_cmd" "$script_dir/modules/install_plan.py" python $skip_python
case $? in
    0) ;;
    3) exit 1 ;;
    *) echo "webui.sh: $("$python_cmd" --version 2>&1) cannot run the installer: this program needs Python" \
            "3.10 to 3.13 (3.11 recommended). Set PYTHON in webui-user.sh." >&2
       exit 1 ;;
esac

if [[ "$venv_dir" != "-" ]]; then
    if [[ ! -x "$venv_dir/bin/python" ]]; then
        echo "Creating the Python environment in $venv_dir (first run)"
        # shellcheck disable=SC2086
        if ! "$python_cmd" -m venv ${VENV_OPTIONS:-} "$venv_dir"; then
            rm -rf "$venv_dir"
            echo "webui.sh: could not create a venv with $python_cmd. On Debian/Ubuntu install python3-venv" \
                 "(apt install python3.11-venv), or set VENV_DIR=- in webui-user.sh to use $python_cmd as it is." >&2
            exit 1
        fi
    fi
    python_cmd="$venv_dir/bin/python"
fi

export COMMANDLINE_ARGS="${COMMANDLINE_ARGS:-}"
exec "$python_cmd" "$script_dir/launch.py" "$@"
