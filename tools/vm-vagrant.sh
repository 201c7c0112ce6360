#!/usr/bin/env bash
# The Vagrant box, booted here: a libvirt box built locally from the same Debian 12 image as
# tools/vm.sh's (stock kernel, sch_netem), 'vagrant up --provider libvirt' on it with the
# project's own Vagrantfile and provisioner, then the quickstart inside.
#
#   sudo bash tools/vm-vagrant.sh        # build/find the box, up, quickstart, destroy
#
# Users keep ubuntu/jammy64 (the Vagrantfile's default); MESHEMU_BOX=meshemu-local picks this
# box. It boots its kernel directly (libvirt's kernel/initrd options, in the box's own
# Vagrantfile) under libvirt's qemu driver, which is TCG where KVM does not work. Like the
# test VM it is offline for packages: Debian's are in the image, Python's and the view's
# come from a wheelhouse and an npm cache baked in, named by /etc/pip.conf and /etc/npmrc,
# so setup.sh provisions it unchanged. Exit status: the quickstart's; 3 if no box can boot.
set -euo pipefail
{
cd "$(dirname "$0")/.."
repo=$(pwd)
cache=${MESHEMU_VM_CACHE:-/var/cache/meshemu-vm}
say() { printf 'meshemu vagrant: %s\n' "$*" >&2; }
cannot() { say "cannot boot the Vagrant box here: $*"; exit 3; }
[ "$(id -u)" -eq 0 ] || { say "run me as root"; exit 1; }

need=()
for pair in vagrant:vagrant virsh:libvirt-clients libvirtd:libvirt-daemon-system mmdebstrap:mmdebstrap \
            qemu-img:qemu-utils rsync:rsync dnsmasq:dnsmasq-base; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
[ -d /usr/share/vagrant-plugins/plugins.d ] && ls /usr/share/vagrant-plugins/plugins.d | grep -q libvirt || need+=(vagrant-libvirt)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${need[@]}" qemu-system-x86 libvirt-daemon-driver-qemu >/dev/null; } || cannot "could not install ${need[*]}"
fi
# libvirt's daemons, where no init system starts them (this machine has none). Such a machine is a
# container: there libvirt must not give QEMU a private /dev (a mount namespace it fills by moving
# bind mounts), which a container's mounts refuse ("Unable to move /run/libvirt/qemu/1-x.full mount
# to /dev/full: Invalid argument", seen on CI); 'namespaces = []' keeps QEMU in this /dev.
if [ "$(ps -o comm= -p 1)" != systemd ] && ! grep -Eq '^[[:space:]]*namespaces[[:space:]]*=' /etc/libvirt/qemu.conf; then
  say "libvirt: QEMU without a private /dev (namespaces = [] in /etc/libvirt/qemu.conf), as a container needs"
  printf '\n# meshemu (tools/vm-vagrant.sh): no init system, so a container: no private /dev for QEMU\nnamespaces = []\n' \
    >> /etc/libvirt/qemu.conf
  if pgrep -x libvirtd >/dev/null; then  # started before the change: it reads qemu.conf only at start
    pkill -x libvirtd
    for _ in $(seq 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.2; done
  fi
fi
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
virsh -c qemu:///system version >/dev/null 2>&1 || cannot "libvirtd does not answer"

# The wheelhouse and npm cache tools/vm.sh keeps (built there if missing).
bash tools/vm.sh image >&2
wheels=$(ls -d "$cache"/wheels-* | head -1)
npmcache=$(ls -d "$cache"/npm-* | head -1)
image=$(ls -d "$cache"/image-* | head -1)

mapfile -t apt_packages < <(grep -v '^#' tools/apt-packages.txt | grep .)
packages="linux-image-amd64,ca-certificates,nodejs,npm,systemd-sysv,openssh-server,sudo,rsync,$(IFS=,; echo "${apt_packages[*]}")"
insecure_key=$(find /usr/share -name vagrant.pub -path '*keys*' 2>/dev/null | head -1)
[ -n "$insecure_key" ] || cannot "Vagrant's well-known insecure public key was not found"
box_key=$(printf '%s\n' "$packages" "$(basename "$wheels")" "$(basename "$npmcache")" "$(sed -n '/^# -- box/,/^# -- end box/p' "$0")" |
          sha256sum | cut -c1-12)
box=$cache/box-$box_key
# -- box: a root with systemd, sshd, a 'vagrant' user, DHCP, and the offline package sources
if [ ! -f "$box/meshemu-local.box" ]; then
  work=$(mktemp -d "$cache/boxbuild.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  say "building the box (Debian bookworm, stock kernel; a few minutes, once): $box"
  mmdebstrap --quiet --variant=apt --include="$packages" bookworm "$work/root" >"$work/log" 2>&1 ||
    { tail -5 "$work/log" >&2; cannot "mmdebstrap failed"; }
  r=$work/root
  chroot "$r" useradd -m -s /bin/bash vagrant
  echo 'vagrant:vagrant' | chroot "$r" chpasswd
  install -d -m 700 -o 1000 -g 1000 "$r/home/vagrant/.ssh"
  install -m 600 -o 1000 -g 1000 "$insecure_key" "$r/home/vagrant/.ssh/authorized_keys"
  echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$r/etc/sudoers.d/vagrant" && chmod 440 "$r/etc/sudoers.d/vagrant"
  echo meshemu > "$r/etc/hostname"
  echo '/dev/vda / ext4 rw,relatime 0 1' > "$r/etc/fstab"
  printf '[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n' > "$r/etc/systemd/network/50-dhcp.network"
  chroot "$r" systemctl enable systemd-networkd ssh >/dev/null 2>&1
  echo 'UseDNS no' > "$r/etc/ssh/sshd_config.d/vagrant.conf"
  cp -a "$wheels" "$r/opt/meshemu-wheels"
  cp -a "$npmcache" "$r/opt/meshemu-npm-cache"
  printf '[global]\nno-index = true\nfind-links = /opt/meshemu-wheels\n' > "$r/etc/pip.conf"
  printf 'cache=/opt/meshemu-npm-cache\noffline=true\n' > "$r/etc/npmrc"
  mkdir -p "$work/box"
  cp "$r"/boot/vmlinuz-* "$work/box/vmlinuz"
  cp "$r"/boot/initrd.img-* "$work/box/initrd.img"
  mkfs.ext4 -q -F -L meshemu -d "$r" "$work/root.img" 16G
  qemu-img convert -O qcow2 "$work/root.img" "$work/box/box.img"
  rm -f "$work/root.img"
  printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": 16}\n' > "$work/box/metadata.json"
  # -- box: its own Vagrantfile, merged under the project's: boot the kernel directly, and a
  # CPU without AVX under TCG (QEMU 7.2's AVX2 emulation gives numpy wrong answers)
  cat > "$work/box/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |lv|
    here = File.dirname(__FILE__)
    lv.kernel = File.join(here, "vmlinuz")
    lv.initrd = File.join(here, "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
    lv.driver = ENV.fetch("MESHEMU_BOX_DRIVER", "qemu")
    lv.cpu_mode = "custom"
    lv.cpu_model = "Nehalem"
    lv.graphics_type = "none"
  end
end
EOF
  # -- end box
  (cd "$work/box" && tar cf "$work/meshemu-local.box" metadata.json Vagrantfile box.img vmlinuz initrd.img)
  rm -rf "$cache"/box-* && mkdir -p "$box" && mv "$work/meshemu-local.box" "$box/"
  rm -rf "$work"; trap - EXIT
fi
# Vagrant's own folder for this box, outside root's home: libvirt's QEMU runs as its own user
# and must read the box's kernel and initrd ("could not open kernel file: Permission denied").
export VAGRANT_HOME=$cache/vagrant-home
mkdir -p "$VAGRANT_HOME" && chmod 755 "$cache" "$VAGRANT_HOME"
vagrant box add --force --name meshemu-local "$box/meshemu-local.box" >&2

# -- up, quickstart, destroy: in a copy of the working tree, so .vagrant/ never lands in the repo
run=$(mktemp -d "${TMPDIR:-/tmp}/meshemu-vagrant.XXXXXX")
down() {
  (cd "$run/tree" 2>/dev/null && vagrant destroy -f >&2) || true
  rm -rf "$run"
}
trap down EXIT
trap 'say "interrupted"; exit 130' INT TERM
mkdir -p "$run/tree"
git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp -a --parents -t "$run/tree"
cd "$run/tree"
export MESHEMU_BOX=meshemu-local VAGRANT_DEFAULT_PROVIDER=libvirt
t0=$SECONDS
# a failure here is a failure (the box boots here; the provisioner may have broken), not a skip
vagrant up --provider libvirt || { say "vagrant up failed after $((SECONDS - t0)) s (its output is above)"; exit 1; }
say "up and provisioned in $((SECONDS - t0)) s"
rc=0
accel=tcg; [ "${MESHEMU_BOX_DRIVER:-qemu}" = kvm ] && accel=kvm
vagrant ssh -c "cd /vagrant && sudo bash tools/quickstart-variant.sh results/quickstart $accel" || rc=$?
mkdir -p "$run/out"
if vagrant ssh -c 'cd /vagrant && tar cf - results/quickstart' 2>/dev/null | tar xf - -C "$run/out"; then
  mkdir -p "$repo/results" && rm -rf "$repo/results/vagrant-quickstart"
  mv "$run/out/results/quickstart" "$repo/results/vagrant-quickstart"
fi
say "quickstart in the box exited $rc after $((SECONDS - t0)) s in all; results in results/vagrant-quickstart"
exit "$rc"
}
