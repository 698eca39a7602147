#!/bin/bash
# Last step of an image build: remove everything that must not be baked into the AMI
# (build-time SSH keys, instance identity, any gateway config or state), so every
# instance launched from it starts as a first boot. Safe to run more than once.
set -euo pipefail
((EUID == 0)) || { echo "cleanup-image.sh: must run as root" >&2; exit 2; }

# The config comes from each instance's user data; the image carries none.
rm -f /etc/bucketgate/bucketgate.toml /etc/bucketgate/bucketgate.toml.new \
    /etc/bucketgate/bucketgate.toml.rejected
rm -rf /var/lib/bucketgate-firstboot

# Packer's temporary key pair was added to the build user's authorized_keys; cloud-init
# adds the launch key pair (if any) at first boot. No keys stay in the image.
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys

# Every instance gets its own machine id (systemd makes one when the file is empty).
if [[ -f /etc/machine-id ]]; then
    : >/etc/machine-id
fi
rm -f /var/lib/dbus/machine-id

# Let cloud-init treat the next boot as the instance's first: it makes new SSH host
# keys per instance (so only delete them where cloud-init is there to do that).
if command -v cloud-init >/dev/null; then
    rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
    cloud-init clean --logs
fi

apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/bucketgate-ami /root/.bash_history /home/*/.bash_history
echo "cleanup-image: done"
