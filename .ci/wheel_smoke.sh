#!/usr/bin/env bash
# The package as a user installs it: build the sdist and the wheel from this checkout, install the wheel with its
# cpu extra into a fresh virtual environment outside the checkout, and from a folder outside it too run
# `mammut caption`, `mammut index build` + `mammut search`, and `mammut demo` (answered over HTTP, then stopped).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
step() { echo "wheel smoke: $*"; }
fail() { echo "wheel smoke FAILED: $*" >&2; exit 1; }
quietly() {  # run a command, its output kept in a log shown only when it fails
  local log="$work/$1.log"; shift
  "$@" >"$log" 2>&1 || { cat "$log"; fail "$*"; }
}

step "building the sdist and the wheel"
quietly build "$repo/.venv/bin/python" -m build --outdir "$work/dist" "$repo"
wheel="$(ls "$work"/dist/mammut_search-*.whl)"
ls -l "$work"/dist

step "installing $(basename "$wheel")[cpu] into a fresh virtual environment"
"$python" -m venv "$work/venv"
# the CPU build of torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
quietly pip-torch "$work/venv/bin/pip" install torch==2.13.0
quietly pip "$work/venv/bin/pip" install "$wheel[cpu]"
mammut="$work/venv/bin/mammut"
[ -x "$mammut" ] || fail "the wheel installed no mammut command"

mkdir "$work/elsewhere" && cd "$work/elsewhere"
export XDG_CACHE_HOME="$work/cache" CUDA_VISIBLE_DEVICES=""
demo="$("$work/venv/bin/python" -c 'from mammut_search.bundled import demo_dir; print(demo_dir())')"
case "$demo" in "$work/venv/"*) ;; *) fail "the demo resolves to $demo, not inside the installed package" ;; esac
"$mammut" --version

step "mammut caption"
caption="$(timeout 300 "$mammut" caption "$demo/images/1f42c.png")"
echo "$caption"
[ -n "$caption" ] || fail "no caption"

step "mammut index build + mammut search"
images=("$demo"/images/*.png)
mkdir pictures && cp "${images[@]:0:12}" pictures/
timeout 300 "$mammut" index build pictures --out pictures.index --quiet
results="$(timeout 300 "$mammut" search "a dolphin" --index pictures.index -k 3)"
echo "$results"
echo "$results" | grep -q "pictures/" || fail "the search listed no indexed image"

step "mammut demo"
port="$("$work/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$mammut" demo --port "$port" >"$work/demo.log" 2>&1 &
server=$!
page="$work/page.html"
for _ in $(seq 300); do  # the first run indexes the 300 demo images: allow up to 5 minutes
  if curl -fsS --max-time 20 -o "$page" "http://127.0.0.1:$port/" 2>/dev/null && grep -qi gradio "$page"; then break; fi
  kill -0 "$server" 2>/dev/null || { cat "$work/demo.log"; fail "mammut demo exited"; }
  sleep 1
done
grep -qi gradio "$page" 2>/dev/null || { cat "$work/demo.log"; fail "mammut demo did not answer"; }
[ -f "$XDG_CACHE_HOME/mammut-search/demo.index/manifest.json" ] || fail "no demo index in \$XDG_CACHE_HOME"
tail -n 2 "$work/demo.log"  # the index it serves and the address
kill "$server" && wait "$server" 2>/dev/null || true
server=""
step "passed ($(du -h "$wheel" | cut -f1) wheel)"
