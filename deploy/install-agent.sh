#!/usr/bin/env bash
# Installs the Flotilla agent on a Dokku host: binary, systemd unit, example
# environment file; joins the coordinator as the `dokku` user; enables and
# starts flotilla-agent.service. Run as root. See --help.
set -euo pipefail

readonly BIN=/usr/local/bin/flotilla-agent
readonly UNIT=/etc/systemd/system/flotilla-agent.service
readonly CONF_DIR=/etc/flotilla
readonly DATA_DIR=/var/lib/flotilla-agent # must match the unit's --data-dir
readonly SERVICE_USER=dokku                # must match the unit's User=

script_dir=$(cd "$(dirname "$0")" && pwd)
server=""
host_id=""
env_name=""
labels=()
binary=""
unit_src="$script_dir/systemd/flotilla-agent.service"
env_src="$script_dir/examples/agent.env"
toml_src="$script_dir/examples/agent.toml"
start=1

usage() {
	cat <<EOF
Usage: $0 --server URL --host-id ID --env ENV --binary PATH [--label KEY=VALUE]... [options]

Installs the Flotilla agent on this Dokku host and joins it to the coordinator:
  1. copies --binary to $BIN
  2. installs the unit to $UNIT and, if absent, $CONF_DIR/agent.env and
     $CONF_DIR/agent.toml (telemetry settings, all commented out)
  3. runs \`flotilla-agent join\` as $SERVICE_USER with --data-dir $DATA_DIR
  4. systemctl enable --now flotilla-agent (restart if the binary or unit changed)

The one-time join token (\`flotilla join-token create\` on the coordinator) is read
from FLOTILLA_JOIN_TOKEN, or else from standard input (a prompt that does not echo
on a terminal). It is never taken as an argument and never printed.

Re-running is safe: an unchanged binary or unit is left alone, agent.env and
agent.toml are never overwritten, and a data dir that already joined as the same host id is kept (no
token needed). A data dir joined as another host id is refused.

Required:
  --server URL        coordinator URL, e.g. https://flotilla.example.com:7443
  --host-id ID        this host's id: one DNS label, unique in the fleet (e.g. web-eu-1)
  --env ENV           the environment this host belongs to (e.g. production)
  --binary PATH       the flotilla-agent executable to install

Options:
  --label KEY=VALUE   a host label (repeatable), e.g. --label region=eu
  --unit PATH         unit file to install (default: $unit_src)
  --env-example PATH  example environment file (default: $env_src)
  --no-start          install and join, but do not enable or start the service
  -h, --help          this text

Example:
  FLOTILLA_JOIN_TOKEN=\$(cat token) $0 --server https://flotilla.example.com:7443 \\
      --host-id web-eu-1 --env production --label region=eu --binary ./flotilla-agent
EOF
}

die() {
	echo "install-agent: $*" >&2
	exit 1
}
say() { echo "install-agent: $*"; }

need_value() {
	[[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
	case $1 in
	--server) need_value "$@"; server=$2; shift 2 ;;
	--host-id) need_value "$@"; host_id=$2; shift 2 ;;
	--env) need_value "$@"; env_name=$2; shift 2 ;;
	--label) need_value "$@"; labels+=("$2"); shift 2 ;;
	--binary) need_value "$@"; binary=$2; shift 2 ;;
	--unit) need_value "$@"; unit_src=$2; shift 2 ;;
	--env-example) need_value "$@"; env_src=$2; shift 2 ;;
	--no-start) start=0; shift ;;
	-h | --help) usage; exit 0 ;;
	--token | --token=*) die "the join token is not accepted as an argument; set FLOTILLA_JOIN_TOKEN or pipe it on stdin" ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done

# 1. Check everything before changing anything.
[[ -n $server ]] || die "--server is required"
[[ -n $host_id ]] || die "--host-id is required"
[[ -n $env_name ]] || die "--env is required"
[[ -n $binary ]] || die "--binary is required"
[[ $server == https://* ]] || die "--server must start with https:// (got $server)"
for label in "${labels[@]+"${labels[@]}"}"; do
	[[ $label == ?*=?* ]] || die "--label must be KEY=VALUE (got $label)"
done
[[ $(id -u) -eq 0 ]] || die "run as root (it installs to $BIN and $UNIT)"
[[ -f $binary && -x $binary ]] || die "--binary $binary is not an executable file"
"$binary" --version >/dev/null 2>&1 || die "--binary $binary does not run (wrong architecture?)"
[[ -f $unit_src ]] || die "unit file $unit_src not found (pass --unit)"
command -v systemctl >/dev/null || die "systemctl not found; this script needs systemd"
command -v runuser >/dev/null || die "runuser not found (util-linux)"
id "$SERVICE_USER" >/dev/null 2>&1 || die "user $SERVICE_USER does not exist; install Dokku first"
command -v dokku >/dev/null || say "warning: dokku is not in PATH; the agent runs \`dokku\` (FLOTILLA_DOKKU_BIN in $CONF_DIR/agent.env)"

# Already joined? Keep it if it is the same host, refuse otherwise.
join=1
if [[ -e $DATA_DIR/agent.json ]]; then
	joined_as=$(sed -n 's/^ *"host_id": *"\([^"]*\)".*/\1/p' "$DATA_DIR/agent.json")
	if [[ $joined_as == "$host_id" ]]; then
		say "$DATA_DIR already joined as $host_id; not joining again"
		join=0
	else
		die "$DATA_DIR already holds a joined agent (host id ${joined_as:-unknown}), not $host_id; refusing to re-join. To replace it: systemctl stop flotilla-agent, move $DATA_DIR away, and join with a new host id (a host id cannot be joined twice, even after \`flotilla revoke\`)"
	fi
fi

# The token: only when a join is needed; never echoed, never on a command line.
token=""
if [[ $join -eq 1 ]]; then
	if [[ -n ${FLOTILLA_JOIN_TOKEN:-} ]]; then
		token=$FLOTILLA_JOIN_TOKEN
	elif [[ -t 0 ]]; then
		read -r -s -p "Join token (from \`flotilla join-token create\`): " token || true
		echo >&2
	else
		IFS= read -r token || true
	fi
	token=${token//[[:space:]]/}
	[[ -n $token ]] || die "no join token: set FLOTILLA_JOIN_TOKEN or pipe it on stdin"
	# Checked here because flotilla-agent's own error message would print the value.
	[[ $token =~ ^fltjoin1\.[A-Za-z0-9_-]{43}\.[0-9a-fA-F]{64}$ ]] ||
		die "that is not a Flotilla join token (expected fltjoin1.<secret>.<CA sha256>, from \`flotilla join-token create\`)"
fi
unset FLOTILLA_JOIN_TOKEN

# 2. Binary, unit and example environment.
changed=0
install_file() { # SRC DEST MODE
	if [[ -f $2 ]] && cmp -s "$1" "$2"; then
		say "$2 is up to date"
	else
		install -D -o root -g root -m "$3" "$1" "$2"
		say "installed $2"
		changed=1
	fi
}
install_file "$binary" "$BIN" 0755
install_file "$unit_src" "$UNIT" 0644
if [[ -e $CONF_DIR/agent.env ]]; then
	say "$CONF_DIR/agent.env exists; left as it is"
elif [[ -f $env_src ]]; then
	# 0600: it may hold telemetry passwords (systemd reads it as root).
	install -D -o root -g root -m 0600 "$env_src" "$CONF_DIR/agent.env"
	say "installed $CONF_DIR/agent.env (all settings commented out)"
fi
if [[ -e $CONF_DIR/agent.toml ]]; then
	say "$CONF_DIR/agent.toml exists; left as it is"
elif [[ -f $toml_src ]]; then
	# Readable by the service user, which runs the agent.
	install -D -o root -g "$SERVICE_USER" -m 0640 "$toml_src" "$CONF_DIR/agent.toml"
	say "installed $CONF_DIR/agent.toml (all settings commented out)"
fi
systemctl daemon-reload

# 3. Join, as the service user, into the unit's state directory.
if [[ $join -eq 1 ]]; then
	install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0700 "$DATA_DIR"
	join_args=(join --server "$server" --host-id "$host_id" --env "$env_name" --data-dir "$DATA_DIR")
	for label in "${labels[@]+"${labels[@]}"}"; do
		join_args+=(--label "$label")
	done
	# The token reaches the agent through its environment only (not in argv).
	if ! (cd / && FLOTILLA_JOIN_TOKEN=$token runuser -u "$SERVICE_USER" -- "$BIN" "${join_args[@]}"); then
		die "flotilla-agent join failed (see the error above); nothing was started"
	fi
fi
token=""

# 4. Start (or restart after an upgrade).
if [[ $start -eq 0 ]]; then
	say "not starting (--no-start); later: systemctl enable --now flotilla-agent"
	exit 0
fi
if systemctl is-active --quiet flotilla-agent && [[ $changed -eq 1 ]]; then
	systemctl enable flotilla-agent
	systemctl restart flotilla-agent
	say "flotilla-agent restarted with the new binary/unit"
else
	systemctl reset-failed flotilla-agent >/dev/null 2>&1 || true
	systemctl enable --now flotilla-agent
fi
say "done. Check: systemctl status flotilla-agent; journalctl -u flotilla-agent -f; on the coordinator: flotilla hosts"
