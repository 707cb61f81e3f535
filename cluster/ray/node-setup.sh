#!/bin/bash
# Every node of a Ray-launched cluster runs this (the YAMLs' setup_commands), from the copy of the
# repository `ray up` syncs to ~/craftsman-platform: the runtime only (no test extras, no browser)
# into ~/craft-venv, and with --shared-fs the shared file system at /mnt/shared. Any failure stops
# `ray up` with its message: nothing is skipped silently.
#   bash ~/craftsman-platform/cluster/ray/node-setup.sh [--shared-fs] [--torch-index URL]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
fail() { echo "node-setup: $*" >&2; exit 1; }

set -a
# shellcheck source=cluster/versions.env
source "$repo/cluster/versions.env"
# shellcheck source=cluster/ray/cluster.env
source "$here/cluster.env"
set +a
shared_fs=
while (($#)); do
  case $1 in
    --shared-fs) shared_fs=1 ;;
    --torch-index) TORCH_INDEX=$2; shift ;;
    *) fail "unknown option $1" ;;
  esac
  shift
done

sudo apt-get update -qq
sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  python3-venv python3-dev g++ libeigen3-dev libgl1 libgomp1 libusb-1.0-0 nfs-common >/dev/null

if [[ -n $shared_fs ]]; then
  [[ -n ${SHARED_FS_DNS:-} ]] || fail "set SHARED_FS_DNS in cluster/ray/cluster.env (the shared file system)"
  sudo mkdir -p /mnt/shared
  if ! mountpoint -q /mnt/shared; then
    case ${SHARED_FS_KIND:-} in
      efs | nfs) sudo mount -t nfs4 -o nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport \
        "$SHARED_FS_DNS:/" /mnt/shared ;;
      fsx-lustre)
        command -v mount.lustre >/dev/null || fail "no Lustre client on this AMI (AWS: 'Installing the Lustre client')"
        [[ -n ${FSX_MOUNT_NAME:-} ]] || fail "set FSX_MOUNT_NAME in cluster/ray/cluster.env"
        sudo mount -t lustre -o relatime,flock "$SHARED_FS_DNS@tcp:/$FSX_MOUNT_NAME" /mnt/shared ;;
      *) fail "SHARED_FS_KIND must be efs, nfs or fsx-lustre, got '${SHARED_FS_KIND:-}'" ;;
    esac
  fi
  mountpoint -q /mnt/shared || fail "/mnt/shared is not mounted"
  sudo chown "$(id -u):$(id -g)" /mnt/shared
fi

[[ -x ~/craft-venv/bin/python ]] || python3 -m venv ~/craft-venv
~/craft-venv/bin/pip install -q --upgrade pip
~/craft-venv/bin/pip install -q --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"
# boto3 (the cluster extra) is what the autoscaler on the head needs; it lives in the same venv as ray
CPLUS_INCLUDE_PATH=/usr/include/eigen3 ~/craft-venv/bin/pip install -q "${repo}[cloud,cluster]" "ray[default]==$RAY_VERSION"
# shellcheck disable=SC2016  # expanded when ~/.bashrc runs
grep -qs 'craft-venv/bin' ~/.bashrc || echo 'export PATH=$HOME/craft-venv/bin:$PATH' >>~/.bashrc
~/craft-venv/bin/craft --help >/dev/null
echo "node-setup: ray $(~/craft-venv/bin/ray --version | awk '{print $NF}'), torch $TORCH_VERSION ($TORCH_INDEX)${shared_fs:+, /mnt/shared mounted}"
