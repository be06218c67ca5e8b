@echo off
rem Start the web UI on Windows: the first run makes a venv and installs torch for this machine (NVIDIA: CUDA,
rem else CPU) and the requirements; later runs start at once. Run webui-user.bat, which sets COMMANDLINE_ARGS,
rem PYTHON, VENV_DIR and TORCH_COMMAND (as in AUTOMATIC1111's web UI) and calls this file.
rem modules\install_plan.py holds the decisions.
setlocal
cd /d "%~dp0"

if not defined PYTHON (set "PYTHON=python")
if not defined VENV_DIR (set "VENV_DIR=%~dp0venv")

"%PYTHON%" --version >nul 2>&1
if errorlevel 1 goto :no_python

set "SKIP_PYTHON="
echo %* %COMMANDLINE_ARGS% | findstr /c:"--skip-python-version-check" >nul && set "SKIP_PYTHON=--skip-python-version-check"
"%PYTHON%" "%~dp0modules\install_plan.py" python %SKIP_PYTHON%
if errorlevel 4 goto :old_python
if errorlevel 3 goto :end_error
if errorlevel 1 goto :old_python

if "%VENV_DIR%"=="-" goto :launch
if exist "%VENV_DIR%\Scripts\python.exe" goto :activate

echo Creating the Python environment in %VENV_DIR% (first run)
"%PYTHON%" -m venv "%VENV_DIR%"
if errorlevel 1 goto :no_venv

:activate
set "PYTHON=%VENV_DIR%\Scripts\python.exe"

:launch
"%PYTHON%" "%~dp0launch.py" %*
if errorlevel 1 goto :end_error
goto :end

:no_python
echo webui.bat: "%PYTHON%" was not found. Install Python 3.11 from python.org (tick "Add python.exe to PATH"),
echo or set PYTHON in webui-user.bat to its full path.
goto :end_error

:old_python
echo webui.bat: this Python cannot run the installer: the program needs Python 3.10 to 3.13 (3.11 recommended).
echo Set PYTHON in webui-user.bat.
goto :end_error

:no_venv
echo webui.bat: could not create a venv in %VENV_DIR% with %PYTHON%. Set VENV_DIR=- in webui-user.bat to use
echo that Python as it is.
goto :end_error

:end_error
echo.
echo Launch unsuccessful. Exiting.
pause
exit /b 1

:end
endlocal
