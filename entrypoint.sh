#!/bin/sh
# entrypoint.sh: the image's entrypoint; one image serves the init step, the
# check init container and the sidecar itself.
#
#   init [args]     iptables/dns-redirect.sh apply    (as root, NET_ADMIN+NET_RAW)
#   cleanup         iptables/dns-redirect.sh cleanup
#   dry-run         iptables/dns-redirect.sh dry-run
#   wait [args]     dot-sidecar wait [args]
#   check [args]    dot-sidecar check [args]
#   anything else   dot-sidecar [args] (no arguments, flags like --log-level, ...)
#
# Every branch ends in exec, so the process the container runtime signals is
# dot-sidecar itself (SIGTERM reaches the Go process, which drains and exits),
# not a shell waiting for it. The script is found relative to this file, so
# the repository layout works like the image's /opt/dot-sidecar. The binary is
# DOT_SIDECAR_BIN if set, else dot-sidecar on PATH. Script settings are passed
# through the environment (see the header of iptables/dns-redirect.sh).
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
redirect="$here/iptables/dns-redirect.sh"

run_binary() {
	bin=${DOT_SIDECAR_BIN:-dot-sidecar}
	if ! command -v "$bin" >/dev/null 2>&1; then
		printf 'entrypoint: %s not found (set DOT_SIDECAR_BIN or PATH)\n' "$bin" >&2
		exit 127
	fi
	exec "$bin" "$@"
}

run_redirect() {
	if [ ! -r "$redirect" ]; then
		printf 'entrypoint: %s not found next to %s\n' "$redirect" "$0" >&2
		exit 127
	fi
	exec /bin/sh "$redirect" "$@"
}

case ${1-} in
init)
	shift
	run_redirect apply "$@"
	;;
cleanup | dry-run) run_redirect "$@" ;;
wait | check) run_binary "$@" ;; # dot-sidecar wait|check [args]
*) run_binary "$@" ;;
esac
