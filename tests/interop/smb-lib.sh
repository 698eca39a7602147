# shellcheck shell=bash
# Shared by smbtorture.sh and smb-semantics.sh (sourced, not run): a gateway on a
# temporary file:// bucket whose share "data" is served over SMB by the smbd the
# gateway runs itself on a free loopback port, for one SMB user.
# Sets: work, port (smbd's), admin_port, user, password, gw_pid. Needs root, /dev/fuse and Samba.

smb_fail() { echo "$smb_name: $*"; [ -f "$work/gw.log" ] && tail -20 "$work/gw.log"; exit 1; }

# smb_free_port FROM TO: a loopback port in FROM..TO nothing listens on.
smb_free_port() {
  local p
  for p in $(seq "$1" "$2"); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "$smb_name: no free port in $1-$2" >&2
  exit 1
}

# smb_setup NAME BIN: the config, the bucket and the SMB user; NAME prefixes messages.
smb_setup() {
  smb_name=$1 smb_bin=$2
  command -v smbd >/dev/null || { echo "$smb_name: smbd not found (apt-get install samba samba-vfs-modules)"; exit 1; }
  # Free loopback ports for smbd (SMB clients would use 445; tests stay off it) and
  # for the admin API, which `bucketgate flush` reaches through the config.
  port=$(smb_free_port 14450 14499)
  admin_port=$(smb_free_port 14500 14549)
  [ -n "$port" ] && [ -n "$admin_port" ] || exit 1
  work=$(mktemp -d)
  chmod 0755 "$work"
  gw_pid=
  trap smb_cleanup EXIT
  user=bgsmbtest
  password="smb-$RANDOM-$RANDOM"
  cat > "$work/gw.toml" <<TOML
[nfs]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:$admin_port"
[cache]
dir = "$work/cache"
capacity = "1GiB"
[smb]
listen = "127.0.0.1:$port"
run_smbd = true
state_dir = "$work/smb"
[[share]]
name = "data"
url = "file://$work/bucket"
fuse_mount = "$work/mnt"
smb = true
smb_users = ["$user"]
TOML
  mkdir -p "$work/bucket"
  printf '%s\n' "$password" > "$work/password"
  "$smb_bin" smb-user --config "$work/gw.toml" add "$user" --password-file "$work/password" >/dev/null
}

# smb_serve: starts the gateway (again, after a kill) and waits for its smbd.
smb_serve() {
  # Counted before the gateway starts: its shell makes the log file only once it
  # runs, so counting after could find no file (an empty count) on a first start.
  touch "$work/gw.log"
  local started
  started=$(grep -c "smbd serving" "$work/gw.log" || true)
  "$smb_bin" serve --config "$work/gw.toml" >>"$work/gw.log" 2>&1 &
  gw_pid=$!
  for _ in $(seq 1 150); do
    [ "$(grep -c "smbd serving" "$work/gw.log")" -gt "$started" ] && break
    kill -0 "$gw_pid" 2>/dev/null || smb_fail "the gateway exited"
    sleep 0.1
  done
  [ "$(grep -c "smbd serving" "$work/gw.log")" -gt "$started" ] || smb_fail "smbd did not start"
  # The share's root belongs to the share's default owner; the SMB user makes its
  # files there.
  chmod 0777 "$work/mnt"
}

# smb_stop: SIGTERM, as systemd stops the gateway (smbd stops, the mount goes).
smb_stop() {
  kill -TERM "$gw_pid"
  wait "$gw_pid" || true
  gw_pid=
}

smb_cleanup() {
  if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; fi
  umount -l "$work/mnt" 2>/dev/null || true
  rm -rf "$work"
}
