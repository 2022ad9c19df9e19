#!/usr/bin/env bash
# Boots a private systemd as PID 1 of new pid, mount, net, uts, ipc and cgroup namespaces
# (bin/tests/systemd_real.rs), leaving the host untouched:
#
#   boot-systemd.sh SCRATCH CGROUP
#
# SCRATCH holds root/ (the unpacked .deb plus the test's files), units/ (the whole of the
# instance's /etc/systemd/system) and console.log; CGROUP is a fresh cgroup2 directory that
# becomes the root of the instance's cgroup namespace. Everything systemd writes (/run, /etc,
# /var, /tmp, /dev, its cgroups) lands on private tmpfs or overlay mounts or under CGROUP,
# and the namespaces die with their PID 1.
set -euo pipefail
scratch="$1"
cgroup="$2"

if [ "${3:-}" != inside ]; then
    # systemd manages the cgroup it starts in as its root: a fresh leaf of the host's
    # cgroup2 tree, not the host's own root.
    echo $$ >"$cgroup/cgroup.procs"
    exec unshare --pid --fork --mount --mount-proc --net --uts --ipc --cgroup \
        "$0" "$scratch" "$cgroup" inside
fi

mount --make-rprivate /
# Overlays: the package's files over the host's /usr and /etc (as `apt install` would put
# them), every write into a tmpfs that vanishes with the mount namespace.
mkdir -p "$scratch/overlay"
mount -t tmpfs tmpfs "$scratch/overlay"
for dir in usr etc var; do mkdir -p "$scratch/overlay/$dir/upper" "$scratch/overlay/$dir/work"; done
lower() { if [ -d "$scratch/root/$1" ]; then echo "$scratch/root/$1:/$1"; else echo "/$1"; fi; }
for dir in usr etc var; do
    mount -t overlay overlay \
        -o "lowerdir=$(lower $dir),upperdir=$scratch/overlay/$dir/upper,workdir=$scratch/overlay/$dir/work" "/$dir"
done
# Only the test's own units: the host's enablement links would pull its whole boot.
mount -t tmpfs tmpfs /etc/systemd/system
cp -r "$scratch/units/." /etc/systemd/system/
mount -t tmpfs tmpfs /run
# Nothing of the host's boot runs: the units of sysinit.target (which every service with
# default dependencies waits for) that would set kernel-wide state are masked.
for unit in systemd-sysctl.service systemd-modules-load.service systemd-remount-fs.service \
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
    systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
    systemd-random-seed.service systemd-hwdb-update.service systemd-firstboot.service \
    systemd-machine-id-commit.service systemd-pstore.service systemd-boot-update.service \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
    sys-fs-fuse-connections.mount dev-hugepages.mount; do
    ln -s /dev/null "/etc/systemd/system/$unit"
done
# As systemd-nspawn does: /sys and /proc/sys read-only (kernel-wide knobs), but for this
# network namespace's own /proc/sys/net; sysfs and cgroup2 as seen from the new namespaces
# (pure cgroup2: systemd's unified mode).
mount -t sysfs -o ro sysfs /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount --bind /proc/sys /proc/sys
mount --bind /proc/sys/net /proc/sys/net
mount -o remount,bind,ro /proc/sys
# A /dev of its own: the basic nodes, a private devpts, and the console as a log file.
mount -t tmpfs -o mode=755 tmpfs /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8
mknod -m 666 /dev/urandom c 1 9
mknod -m 666 /dev/tty c 5 0
mkdir /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs tmpfs /dev/shm
touch /dev/console "$scratch/console.log"
mount --bind "$scratch/console.log" /dev/console
mount -t tmpfs tmpfs /tmp

# The host side of the test network: a veth pair whose far end holds the endpoint's address
# and a default route, as on a real host (a VIP is routed before portald's DNAT applies).
ip link set lo up
ip link add sd-host type veth peer name sd-pod
ip addr add 10.99.0.1/24 dev sd-host
ip addr add 10.99.0.2/24 dev sd-pod
ip link set sd-host up
ip link set sd-pod up
ip route add default dev sd-host

# `container=` tells systemd it is a container's init (no udev, no hardware, no
# switch-root); debug logging puts every sd_notify message it receives in the journal.
export container=portald-test
# No module loading from inside (CAP_SYS_MODULE out of the bounding set); the kernel still
# loads the netfilter modules nft and iptables ask for.
exec setpriv --bounding-set -sys_module -- /lib/systemd/systemd --unit=portald-test.target --log-level=debug
