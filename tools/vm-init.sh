#!/bin/sh
# PID 1 of meshemu's test VM (baked into the image by tools/vm.sh): mount what a
# shell needs, run the job the host shares over 9p, record its exit status, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mountpoint -q /run || mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
hostname meshemu-vm
ip link set lo up
modprobe -q 9pnet_virtio
modprobe -q 9p
mkdir -p /mnt/job /mnt/wheels
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 job /mnt/job &&
   mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro wheels /mnt/wheels &&
   mkdir -p /mnt/npm && mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro npm /mnt/npm; then
  bash /mnt/job/tree/tools/vm-guest.sh "$(cat /mnt/job/action)"
  echo $? > /mnt/job/rc
else
  echo "meshemu vm: the host's folders could not be mounted over 9p"
fi
sync
# reboot(2) at once; the sysrq path is asynchronous, the fallback if poweroff is missing
poweroff -f 2>/dev/null || echo o > /proc/sysrq-trigger
while :; do sleep 1; done
