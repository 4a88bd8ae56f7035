#!/usr/bin/env bash
# A throw-away qemu VM with a real verbs device (Soft-RoCE, `rxe0`), for the RDMA
# carrier's tests.
#
# Why: our build machines' kernels have no RDMA (no /dev/infiniband, no verbs
# device), but Debian's stock kernel ships Soft-RoCE (`rdma_rxe`). So we boot that
# kernel under qemu and run the test binary inside it.
#
# How: no guest root file system is built. The VM gets Debian's kernel (the
# package linux-image-amd64 depends on, unpacked into the cache, never installed)
# and a tiny initramfs (static busybox plus the 9p, overlay and RDMA modules). The
# initramfs mounts the HOST's own / read-only over 9p as the lower layer of an
# overlay with a tmpfs upper, so the guest runs the host's userland (bash, iproute2,
# libibverbs and its rxe provider) and sees a binary built here at the same path,
# but can never write to the host's root. It loads the modules, makes `rxe0` on a
# dummy netdev `rxe_nd0` (10.77.0.1/24, MTU 9000), runs the command, hands its exit
# status back through a shared job dir and powers off.
#
#   scripts/rdma-vm.sh build      # once, as root: host packages (apt), kernel, initramfs
#   scripts/rdma-vm.sh run [--share DIR] [--env NAME]... [--console] -- CMD ARGS...
#   scripts/rdma-vm.sh check      # ibv_devinfo -d rxe0 inside the VM
#   scripts/rdma-vm.sh clean      # drop the cache
#
# run: CMD runs as root in the host's current dir, with only PATH, HOME, TERM and
# the --env variables set, `ulimit -l unlimited`, /tmp a fresh tmpfs. Its output
# (stdout and stderr together) streams live. --share DIR (not / or a system dir)
# is mounted read-write at the same path; everything else the guest writes is
# lost at power-off. --console also prints the guest's kernel console.
# Exit status: CMD's; 124 on timeout; 125 if the VM failed before CMD reported
# (the guest console is printed then).
#
# Knobs: STRATA_RDMA_VM_CACHE (default ~/.cache/strata-rdma-vm),
# STRATA_RDMA_VM_TIMEOUT (seconds, default 900), STRATA_RDMA_VM_MEM (default 2G),
# STRATA_RDMA_VM_SMP (default 2), STRATA_RDMA_VM_ACCEL (default tcg, software
# emulation: our hosts' /dev/kvm cannot run a stock kernel; slow, about 0.04 GB/s
# RDMA, fine for correctness; `kvm` where it can).
set -euo pipefail

CACHE=${STRATA_RDMA_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/strata-rdma-vm}
TIMEOUT=${STRATA_RDMA_VM_TIMEOUT:-900}
MEM=${STRATA_RDMA_VM_MEM:-2G}
SMP=${STRATA_RDMA_VM_SMP:-2}
ACCEL=${STRATA_RDMA_VM_ACCEL:-tcg}
# Modules the initramfs loads, dependencies resolved at build time. rxe needs the
# "crc32" hash, which no module dependency names: crc32_generic.
MODULES="virtio_pci 9pnet_virtio 9p overlay crc32_generic dummy rdma_rxe ib_uverbs rdma_ucm"

log() { echo "[rdma-vm $(date +%T)] $*" >&2; }
die() { echo "rdma-vm: $*" >&2; exit 125; }

# ------------------------------------------------------------------ build ----
build() {
  [ "$(id -u)" = 0 ] || die "build needs root (apt-get)"
  local t0=$SECONDS
  mkdir -p "$CACHE"

  # Host packages: qemu, a static busybox for the initramfs, modprobe/depmod,
  # cpio, `ip` and `rdma`; the guest uses the host's verbs provider (rxe) and
  # ibv_devinfo (for `check`).
  local need=() p
  for p in qemu-system-x86 busybox-static kmod cpio iproute2 ibverbs-providers ibverbs-utils; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi

  # Debian's kernel package, downloaded once and kept as a .deb.
  if [ ! -f "$CACHE/kernel.deb" ]; then
    local kpkg
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [ -z "$kpkg" ]; then
      apt-get update -qq
      kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64"
    log "downloading $kpkg"
    local dl; dl=$(mktemp -d "$CACHE/dl.XXXXXX")
    (cd "$dl" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg")
    mv "$dl"/*.deb "$CACHE/kernel.deb.tmp" && mv "$CACHE/kernel.deb.tmp" "$CACHE/kernel.deb"
    rm -rf "$dl"
  fi

  # Unpack it (not install), take vmlinuz and the modules we need, drop the rest.
  local kx="$CACHE/unpacked" ird="$CACHE/initrd.d" kver
  rm -rf "$kx" "$ird"
  dpkg -x "$CACHE/kernel.deb" "$kx"
  kver=$(ls "$kx/lib/modules")
  depmod -b "$kx" "$kver"
  mkdir -p "$ird"/{bin,dev,proc,sys,lower,upper,newroot,modules}
  # insmod lines in dependency order, each module once (`dummy` comes with
  # numdummies=0 from modprobe.d: no stray dummy0).
  local m f opts n=0
  for m in $MODULES; do
    modprobe -d "$kx" -S "$kver" --show-depends "$m"
  done | awk '$1 == "insmod" && !seen[$2]++ {$1 = ""; sub(/^ /, ""); print}' |
    while read -r f opts; do
      n=$((n + 1))
      local dst; dst="modules/$(printf %02d "$n")-$(basename "${f%%.ko*}").ko"
      case $f in
        *.ko.xz) xz -dc "$f" > "$ird/$dst" ;;
        *.ko.zst) zstd -qdc "$f" > "$ird/$dst" ;;
        *) cp "$f" "$ird/$dst" ;;
      esac
      echo "/$dst $opts" >> "$ird/modules.order"
    done
  # The kernel qemu boots: the ELF inside vmlinuz, unpacked here once (qemu boots
  # it directly, PVH), which saves the guest ~5 s of xz under tcg per run; the
  # bzImage itself if it does not unpack.
  local xzat
  xzat=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$kx/boot/vmlinuz-$kver" | head -n1 | cut -d: -f1 || true)
  if [ -z "$xzat" ] || ! xz -dcq --single-stream < <(tail -c +$((xzat + 1)) "$kx/boot/vmlinuz-$kver") > "$CACHE/kernel.tmp" 2>/dev/null ||
    [ "$(head -c4 "$CACHE/kernel.tmp")" != $'\x7fELF' ]; then
    cp "$kx/boot/vmlinuz-$kver" "$CACHE/kernel.tmp"
  fi
  rm -rf "$kx"

  cp /bin/busybox "$ird/bin/busybox"
  for p in sh mount umount insmod mkdir cat cp echo sleep switch_root; do ln -s busybox "$ird/bin/$p"; done
  write_init > "$ird/init"
  write_guest > "$ird/guest.sh"
  chmod +x "$ird/init" "$ird/guest.sh"
  (cd "$ird" && find . | cpio -o -H newc --quiet) > "$CACHE/initrd.img.tmp"
  rm -rf "$ird"
  mv "$CACHE/kernel.tmp" "$CACHE/kernel"
  mv "$CACHE/initrd.img.tmp" "$CACHE/initrd.img"
  echo "$kver" > "$CACHE/kver"
  log "built in $((SECONDS - t0)) s: kernel $kver, cache $CACHE ($(du -sh "$CACHE" | cut -f1))"
}

# Stage 1, /init in the initramfs (busybox): modules, the overlay root, fresh
# kernel file systems, the job dir and the share; then switch_root to stage 2.
write_init() {
  cat <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
die() { echo "rdma-vm stage 1: $*"; echo o > /proc/sysrq-trigger; sleep 60; }
while read -r m opts; do
  insmod "$m" $opts || die "insmod $m failed"
done < /modules.order
P=trans=virtio,version=9p2000.L,msize=512000
# The host's / (read-only, as qemu exports it) under a tmpfs upper layer.
mount -t 9p -o $P,ro,cache=loose host /lower || die "cannot mount the host's / (9p)"
mount -t tmpfs -o mode=755 tmpfs /upper
mkdir /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot ||
  die "cannot mount the overlay root"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount --move /dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t tmpfs -o mode=755 tmpfs $R/run
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mkdir -p $R/run/rdma-vm/job
mount -t 9p -o $P job $R/run/rdma-vm/job || die "cannot mount the job dir (9p)"
S=$(cat $R/run/rdma-vm/job/share)
if [ -n "$S" ]; then
  mkdir -p "$R$S" && mount -t 9p -o $P share "$R$S" || die "cannot mount the share $S (9p)"
fi
cp /guest.sh $R/run/rdma-vm/guest.sh
umount /proc /sys
exec switch_root $R /bin/bash /run/rdma-vm/guest.sh
EOF
}

# Stage 2, PID 1 in the overlay root (the host's bash and tools): rxe0 on a
# dummy netdev, then the command; its status goes to the job dir.
write_guest() {
  cat <<'EOF'
#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
J=/run/rdma-vm/job
off() { sync; echo o > /proc/sysrq-trigger; sleep 60; }
fail() { echo "rdma-vm: guest setup failed: $*" | tee -a $J/output > /dev/console; echo 125 > $J/rc; off; }
exec 2>> $J/output
cat /etc/hostname > /proc/sys/kernel/hostname 2>/dev/null || echo rdma-vm > /proc/sys/kernel/hostname
ip link set lo up || fail "lo"
{ ip link add rxe_nd0 type dummy && ip link set rxe_nd0 mtu 9000 &&
  ip addr add 10.77.0.1/24 dev rxe_nd0 && ip link set rxe_nd0 up; } || fail "netdev rxe_nd0"
rdma link add rxe0 type rxe netdev rxe_nd0 || fail "rdma link add rxe0"
for _ in $(seq 100); do [ -e /dev/infiniband/uverbs0 ] && break; sleep 0.1; done
[ -e /dev/infiniband/uverbs0 ] || fail "no /dev/infiniband/uverbs0"
ulimit -l unlimited
cut -d' ' -f1 /proc/uptime > $J/ready
exec 2> /dev/console
bash $J/cmd.sh >> $J/output 2>&1 < /dev/null
echo $? > $J/rc.tmp && mv $J/rc.tmp $J/rc
off
EOF
}

# -------------------------------------------------------------------- run ----
# Directories the share must not be (nor be under): it is mounted over the
# guest's root, so it would shadow the guest's own system.
refuse_share() {
  local s=$1 d
  [ "$s" = / ] && return 0
  for d in /bin /boot /dev /etc /lib /lib32 /lib64 /libx32 /proc /run /sbin /sys /usr /var; do
    case $s in "$d" | "$d"/*) return 0 ;; esac
  done
  return 1
}

run() {
  local share="" console=0 envs=() e
  while [ $# -gt 0 ]; do
    case $1 in
      --share) [ $# -ge 2 ] || die "--share needs a directory"; share=$(realpath -e "$2") || die "no such dir: $2"; shift 2 ;;
      --env) [[ ${2:-} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env needs a variable name"; envs+=("$2"); shift 2 ;;
      --console) console=1; shift ;;
      --) shift; break ;;
      *) die "unknown option $1 (usage: rdma-vm.sh run [--share DIR] [--env NAME]... -- CMD ARGS...)" ;;
    esac
  done
  [ $# -gt 0 ] || die "no command (usage: rdma-vm.sh run [--share DIR] [--env NAME]... -- CMD ARGS...)"
  [ -f "$CACHE/kernel" ] && [ -f "$CACHE/initrd.img" ] && command -v qemu-system-x86_64 >/dev/null ||
    die "no VM in $CACHE: run 'scripts/rdma-vm.sh build' (as root) first"
  if [ -n "$share" ]; then
    [ -d "$share" ] || die "--share $share: not a directory"
    refuse_share "$share" && die "refusing to share $share (/ or a system dir)"
    case $share in *,*) die "--share $share: qemu cannot take a comma in the path" ;; esac
  fi

  local job; job=$(mktemp -d "${TMPDIR:-/tmp}/strata-rdma-vm.XXXXXX")
  QPID="" JOB=$job
  trap 'if [ -n "$QPID" ]; then kill "$QPID" 2>/dev/null || true; fi; rm -rf "$JOB"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  echo "$share" > "$job/share"
  : > "$job/output"
  : > "$job/console.log"
  # The command, argv kept exactly (bash's printf %q, read back by bash).
  {
    printf 'cd %q || { echo "rdma-vm: %q is not visible in the guest (share it)" >&2; exit 126; }\n' "$PWD" "$PWD"
    for e in "${envs[@]}"; do
      [ -n "${!e+x}" ] && printf 'export %s=%q\n' "$e" "${!e}"
    done
    printf 'exec'; printf ' %q' "$@"; echo
  } > "$job/cmd.sh"

  local accel=(-accel tcg,thread=multi -cpu max)
  [ "$ACCEL" = kvm ] && accel=(-accel kvm -cpu host)
  local fs=security_model=none,multidevs=remap
  local virtfs=(-virtfs "local,path=/,mount_tag=host,$fs,readonly=on" -virtfs "local,path=$job,mount_tag=job,$fs")
  [ -n "$share" ] && virtfs+=(-virtfs "local,path=$share,mount_tag=share,$fs")
  local t0=$SECONDS
  timeout -k 5 "$TIMEOUT" qemu-system-x86_64 "${accel[@]}" -m "$MEM" -smp "$SMP" \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial "file:$job/console.log" \
    -kernel "$CACHE/kernel" -initrd "$CACHE/initrd.img" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off" \
    "${virtfs[@]}" > "$job/qemu.log" 2>&1 &
  QPID=$!
  tail -n +1 -f --pid=$QPID "$job/output" &
  [ $console = 1 ] && tail -n +1 -f --pid=$QPID "$job/console.log" >&2 &
  local qrc=0
  wait $QPID || qrc=$?
  QPID=""
  wait 2>/dev/null || true
  local ready="-"
  [ -f "$job/ready" ] && ready="$(cat "$job/ready") s"
  log "VM done after $((SECONDS - t0)) s (command started at guest uptime $ready)"
  if [ -f "$job/rc" ]; then
    return "$(cat "$job/rc")"
  fi
  if [ $qrc = 124 ] || [ $qrc = 137 ]; then
    log "timed out after $TIMEOUT s (STRATA_RDMA_VM_TIMEOUT)"
    return 124
  fi
  { echo "----- guest console -----"; cat "$job/console.log"; echo "----- qemu (rc $qrc) -----"; cat "$job/qemu.log"; } >&2
  return 125
}

case ${1:-} in
  build) shift; build "$@" ;;
  run) shift; run "$@" ;;
  check)
    command -v ibv_devinfo >/dev/null || die "no ibv_devinfo here (apt-get install ibverbs-utils)"
    cd /; run -- ibv_devinfo -d rxe0 ;;
  clean) rm -rf "$CACHE" ;;
  *) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 2 ;;
esac
