#!/usr/bin/env bash
# Inside meshemu's test VM (started by tools/vm.sh, as root, offline): the working tree
# arrives at /mnt/job/tree, Python wheels at /mnt/wheels; results go to /mnt/job/out.
#
#   provision  copy the tree to /vagrant and run the Vagrant box's provisioner line
#   test       provision, then the netem tests and the emulation tests with netem forced
#   run        provision, then the quickstart with shaping: {backend: netem}
#   shell      provision, then the command in /mnt/job/args
set -uo pipefail
action=${1:-test}
say() { printf 'meshemu vm guest: %s\n' "$*"; }
export PIP_NO_INDEX=1 PIP_FIND_LINKS=/mnt/wheels PIP_DISABLE_PIP_VERSION_CHECK=1
# npm reads its cache from a writable copy of the host's, and never the network
cp -a /mnt/npm /tmp/npm-cache
export npm_config_cache=/tmp/npm-cache npm_config_offline=true
export TERM=dumb NO_COLOR=1 COLUMNS=120  # plain progress lines on the serial console

say "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MB"
rm -rf /vagrant && cp -a /mnt/job/tree /vagrant && cd /vagrant || exit 1
# The Vagrantfile's provisioner, word for word.
provision() {
  local t0=$SECONDS
  MESHEMU_VENV=/opt/meshemu-venv bash /vagrant/tools/setup.sh || { say "provisioning failed"; return 1; }
  say "provisioned in $((SECONDS - t0)) s"
}
provision || exit 1
py=/opt/meshemu-venv/bin/python

case "$action" in
  provision) exit 0 ;;
  test)
    # netem must be there: a test that would skip for want of it fails instead
    export MESHEMU_EXPECT_NETEM=1 MESHEMU_TEST_SHAPER=netem
    "$py" -m pytest -p no:cacheprovider -q -ra -m root \
      tests/emulation/test_netem.py tests/emulation/test_shaping.py tests/emulation/test_mesh.py \
      tests/emulation/test_player.py tests/emulation/test_interrupt.py
    ;;
  run)
    sed 's/backend: auto/backend: netem/' experiments/quickstart.yaml > /tmp/quickstart-netem.yaml
    grep -q 'backend: netem' /tmp/quickstart-netem.yaml || { say "the quickstart has no 'backend: auto' to switch"; exit 1; }
    if [ "$(cat /mnt/job/accel 2>/dev/null)" = tcg ]; then
      # Under software emulation numpy runs the model tens of times slower than on the host (the
      # first token of a 37-token prompt took over 10 s, against 0.4 s here), past the client's
      # deadlines: the shards then model an Orin's compute time instead, with the real layer
      # shapes and activation sizes, so what is measured is the mesh and netem, as intended.
      sed -i 's/^model: .*/model: {source: preset:smollm2-135m, compute: "device:orin"}/' /tmp/quickstart-netem.yaml
      say "TCG: the quickstart's compute is modelled (device:orin); its network path, netem and shards are real"
    fi
    mkdir -p /mnt/job/out
    meshemu run /tmp/quickstart-netem.yaml --out /mnt/job/out/quickstart
    ;;
  shell)
    mapfile -d '' -t args < /mnt/job/args
    "${args[@]}"
    ;;
  *) say "unknown action $action"; exit 2 ;;
esac
