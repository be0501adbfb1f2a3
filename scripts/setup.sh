#!/usr/bin/env bash
# Installs everything the app and the tests need: Debian packages, then a virtualenv at .venv with the
# pinned requirements. Safe to run again: it skips what is already in place.
# --serve: also the optional Ray Serve extra (requirements-serve.txt, for `python app.py --serve ray`).
set -euo pipefail
cd "$(dirname "$0")/.."
SERVE=0
if [ "${1:-}" = "--serve" ]; then SERVE=1; fi

APT_PACKAGES=(espeak-ng sox ffmpeg chromium chromium-driver libsndfile1 python3-venv)
# the presenter mode (--ui local): PortAudio to build pyaudio against; PulseAudio, its ALSA plugin and tmux for
# its tests (virtual microphone and speaker, the terminal view driven in tmux)
APT_PACKAGES+=(portaudio19-dev python3-dev gcc pulseaudio pulseaudio-utils libasound2-plugins tmux)
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "[setup] please install: ${missing[*]} (no apt-get here)" >&2
  fi
fi

PY=${PYTHON:-python3}
stamp=".venv/.requirements.sha256"
want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
STARLETTE_FOR_GRADIO=0.52.1  # what gradio==5.50.0 resolves to in requirements.txt (it needs starlette<1.0)
install_serve() {  # the optional extra, with a stamp of its own: the default install is unchanged
  local serve_stamp=".venv/.requirements-serve.sha256" serve_want
  serve_want=$(sha256sum requirements-serve.txt | cut -d' ' -f1)
  if [ -f "$serve_stamp" ] && [ "$(cat "$serve_stamp")" = "$serve_want" ]; then return; fi
  echo "[setup] installing the Ray Serve extra (requirements-serve.txt, about 500 MB)"
  .venv/bin/python -m pip install -q -r requirements-serve.txt
  # ray[serve] lifts starlette past what gradio accepts (see requirements-serve.txt): gradio's comes back, and pip's
  # resolver would refuse both pins in one install
  echo "[setup] putting back starlette $STARLETTE_FOR_GRADIO for gradio (pip's note that ray wants starlette>=1.0.1 is expected)"
  .venv/bin/python -m pip install -q "starlette==$STARLETTE_FOR_GRADIO"
  echo "$serve_want" > "$serve_stamp"
}
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] .venv is up to date"
  if [ "$SERVE" = 1 ]; then install_serve; fi
  exit 0
fi
echo "[setup] creating .venv and installing the pinned requirements (a few minutes the first time)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r requirements.txt
# openai-whisper without its triton dependency (1 GB, GPU-only); its real dependencies are in requirements.txt
.venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
echo "$want" > "$stamp"
if [ "$SERVE" = 1 ]; then install_serve; fi
echo "[setup] done"
