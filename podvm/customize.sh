#!/bin/sh
# Runs inside the new root file system (chroot) after mmdebstrap installed the Debian packages:
#   customize.sh PROFILE UNIT...
# The wheels are in /tmp/podvm/wheels, the kernel modules to drop in /tmp/podvm/trim-modules.txt.
set -eu
profile=$1
shift
venv=/opt/cloud-api-adaptor

# The VM side of the adaptor, from the project's wheels only (no index).
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
  --find-links /tmp/podvm/wheels cloud-api-adaptor
"$venv/bin/python" -m pip uninstall --quiet --yes --disable-pip-version-check pip setuptools
for cmd in agent-protocol-forwarder process-user-data; do
  ln -sf "$venv/bin/$cmd" "/usr/local/bin/$cmd"
done
# Bytecode that Python trusts without looking at the sources (no stat, no hash at import: the
# image's files never change, and the build clamps their mtimes afterwards).
python3 -m compileall -q -j 0 -f --invalidation-mode unchecked-hash \
  /usr/lib/python3.11 /usr/lib/python3/dist-packages "$venv/lib" >/dev/null || true
# python3-venv was needed only to make the venv
dpkg --purge python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl >/dev/null

# Units: the adaptor's, DHCP and DNS, and the profile's.
systemctl enable --quiet systemd-networkd.service systemd-resolved.service "$@"
# No login of any kind: no getty on any console, root's password locked, no SSH server installed.
systemctl mask --quiet getty.target console-getty.service serial-getty@ttyS0.service getty@tty1.service
usermod --lock root
# Nothing here needs these at boot.
systemctl mask --quiet systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer e2scrub_reap.service fstrim.timer 2>/dev/null || true
ln -sf ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
# logind manages logins (there are none) and needs D-Bus (not installed)
systemctl mask --quiet systemd-logind.service
mkdir -p /media/cidata
echo podvm >/etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpodvm\n::1\tlocalhost ip6-localhost ip6-loopback\n' >/etc/hosts
# Every VM makes its own machine id at boot.
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id

# Kernel: drop module trees no cloud VM uses, then the (listed-modules-only) initramfs.
for kernel in /lib/modules/*; do
  version=$(basename "$kernel")
  grep -v '^\s*\(#\|$\)' /tmp/podvm/trim-modules.txt | while read -r tree; do
    rm -rf "${kernel:?}/kernel/$tree"
  done
  depmod -a "$version"
  update-initramfs -u -k "$version" >/dev/null
done

# What only the package manager and the build used.
rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
  /var/log/* /tmp/podvm /root/.cache
echo "profile $profile: customized"
