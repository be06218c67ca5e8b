@echo off
rem Your settings for webui.bat: start the web UI by running this file.

rem Flags for launch.py, e.g. --listen --api --xformers (python launch.py --help lists them).
set COMMANDLINE_ARGS=
rem The Python that makes the venv (3.10 to 3.13; 3.11 recommended); empty: python on PATH.
set PYTHON=
rem Where the venv goes; "-" runs with PYTHON as it is, without a venv. Empty: venv beside this file.
set VENV_DIR=
rem The pip command that installs torch instead of the build chosen for this machine; empty: chosen for you.
set TORCH_COMMAND=

call webui.bat %*
