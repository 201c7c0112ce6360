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
    # TCG: RTTs less their floor stray by ~3 ms (tests/emulation/test_shaping.py says why 5 ms still tells)
    export MESHEMU_EXPECT_NETEM=1 MESHEMU_TEST_SHAPER=netem MESHEMU_RTT_TOLERANCE_MS=5
    "$py" -m pytest -p no:cacheprovider -q -ra -m root \
      tests/emulation/test_netem.py tests/emulation/test_shaping.py tests/emulation/test_mesh.py \
      tests/emulation/test_player.py tests/emulation/test_interrupt.py tests/emulation/test_rate_shaping.py \
      "tests/emulation/test_routes.py::test_destination_routes_are_the_whole_tables_columns_and_reach_adds_one"
    ;;
  run)
    mkdir -p /mnt/job/out
    bash tools/quickstart-variant.sh /mnt/job/out/quickstart "$(cat /mnt/job/accel 2>/dev/null)"
    ;;
  shell)
    mapfile -d '' -t args < /mnt/job/args
    "${args[@]}"
    ;;
  *) say "unknown action $action"; exit 2 ;;
esac
