#!/bin/sh
# dns-redirect.sh: redirect a pod's outgoing DNS to the dot-sidecar on loopback.
#
# Usage: dns-redirect.sh [apply|cleanup|dry-run|help]      (default: apply)
#
#   apply    Run as root with CAP_NET_ADMIN (and CAP_NET_RAW for the legacy
#            backend) inside the pod's network namespace. Redirects UDP and TCP
#            destination port 53 to BIND_PORT on loopback, for IPv4 and IPv6.
#            Idempotent; all-or-nothing across the two families.
#   cleanup  Removes exactly what apply added (the jump and the chain, both
#            families, in every backend that holds them with IPTABLES_MODE=auto).
#   dry-run  Prints, on stdout, the iptables-restore --noflush input apply would
#            feed each family in a namespace that holds none of our rules yet.
#            Needs neither root nor the iptables tools.
#
# What apply creates, per family (iptables and ip6tables), in the nat table:
#   - chain DOT_SIDECAR_OUTPUT, declared in the payload (":DOT_SIDECAR_OUTPUT - [0:0]"),
#     which creates it or, with --noflush, flushes just that chain on a re-run;
#   - one jump "-I OUTPUT 1 ... -j DOT_SIDECAR_OUTPUT", added only when absent.
# Every rule carries -m comment --comment "dot-sidecar/<reason>". Nothing else
# is touched: a mesh's chains and rules in the same namespace survive apply and
# cleanup. Stable names other tools and tests may rely on:
#   chain    DOT_SIDECAR_OUTPUT (nat, both families)
#   comments dot-sidecar/capture-dns (the OUTPUT jump), dot-sidecar/skip-sidecar-uid,
#            dot-sidecar/skip-sidecar-gid, dot-sidecar/redirect-udp-dns,
#            dot-sidecar/redirect-tcp-dns (REDIRECT_MODE=all),
#            dot-sidecar/redirect-udp-resolvconf, dot-sidecar/redirect-tcp-resolvconf
#   stderr   "dns-redirect: backend: <nft|legacy> (IPTABLES_MODE=...)" on apply;
#            "dns-redirect: IPv6: skipped: <reason>" when IPv6 is skipped;
#            "dns-redirect: error: <message>" before any non-zero exit.
#
# Settings (environment):
#   BIND_PORT      sidecar DNS port on loopback (default 5053). REDIRECT sends
#                  IPv4 to 127.0.0.1:BIND_PORT and IPv6 to [::1]:BIND_PORT.
#   SIDECAR_UID    numeric UID whose traffic is never redirected (default 10053,
#                  the image's USER). 0 is refused: it would exempt every root
#                  process from capture.
#   SIDECAR_GID    numeric GID also exempted (default: unset, not exempted). Set
#                  it when the platform assigns arbitrary UIDs but a fixed group.
#   REDIRECT_MODE  all (default): every port-53 destination, loopback included
#                  (fail closed). resolvconf: only the nameservers listed in
#                  RESOLV_CONF at apply time.
#   RESOLV_CONF    file read in resolvconf mode (default /etc/resolv.conf).
#   IPTABLES_MODE  auto (default) | nft | legacy. auto takes the backend that
#                  already holds more rules in this namespace (both families
#                  counted), nft on a tie or when legacy is unusable.
#   IPV6_MODE      auto (default): IPv6 rules unless the namespace has no IPv6
#                  (DOT_SIDECAR_IF_INET6 missing or empty); when IPv6 exists but
#                  ip6tables fails, apply fails (fail closed) rather than skip.
#                  on: IPv6 rules required. off: IPv4 only (says so).
#   DOT_SIDECAR_IF_INET6  file that tells whether IPv6 exists
#                  (default /proc/net/if_inet6; tests point it elsewhere).
#   DOT_SIDECAR_TEST_FAIL  test hook only: ipv4-apply or ipv6-apply makes that
#                  family's real iptables-restore commit fail (after both
#                  families passed --test), to exercise the rollback.
#
# Exit codes:
#   0 done (cleanup with nothing to remove is success)
#   1 iptables-restore or -save failed; apply rolled back both families
#   2 usage or invalid setting (unknown command, bad BIND_PORT, bad resolv.conf, ...)
#   3 missing privilege (not root / no CAP_NET_ADMIN, or no CAP_NET_RAW for legacy)
#   4 missing tool or no usable iptables backend
# Diagnostics go to stderr prefixed "dns-redirect:"; only dry-run writes stdout.
# After apply, the resulting rules of ours are logged (stderr), one per line.
set -eu

# Debian keeps the iptables tools in sbin, which a non-login PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"

CHAIN=DOT_SIDECAR_OUTPUT
JUMP_COMMENT=dot-sidecar/capture-dns
RESTORE_WAIT=10 # seconds to wait for the xtables lock (legacy; nft ignores it)

EX_FAIL=1
EX_USAGE=2
EX_PRIV=3
EX_TOOL=4

log() { printf 'dns-redirect: %s\n' "$*" >&2; }
die() {
	code=$1
	shift
	log "error: $*"
	exit "$code"
}

usage() {
	cat <<'EOF'
usage: dns-redirect.sh [apply|cleanup|dry-run|help]
  apply    redirect outgoing DNS (UDP/TCP port 53) to the sidecar (default)
  cleanup  remove exactly what apply added
  dry-run  print the iptables-restore input apply would use (no root needed)
settings (env): BIND_PORT SIDECAR_UID SIDECAR_GID REDIRECT_MODE RESOLV_CONF
                IPTABLES_MODE IPV6_MODE; see the header of this script
EOF
}

# --- settings ---------------------------------------------------------------

BIND_PORT=${BIND_PORT:-5053}
SIDECAR_UID=${SIDECAR_UID:-10053}
SIDECAR_GID=${SIDECAR_GID:-}
REDIRECT_MODE=${REDIRECT_MODE:-all}
RESOLV_CONF=${RESOLV_CONF:-/etc/resolv.conf}
IPTABLES_MODE=${IPTABLES_MODE:-auto}
IPV6_MODE=${IPV6_MODE:-auto}
IF_INET6=${DOT_SIDECAR_IF_INET6:-/proc/net/if_inet6}
TEST_FAIL=${DOT_SIDECAR_TEST_FAIL:-}

# is_uint: a decimal without sign or leading zeros (the shell would read 010 as
# octal), at most 10 digits.
is_uint() {
	case $1 in
	'' | *[!0-9]*) return 1 ;;
	0) return 0 ;;
	0*) return 1 ;;
	esac
	[ "${#1}" -le 10 ]
}

validate_id() { # name value
	is_uint "$2" || die $EX_USAGE "$1=$2 is not a numeric id (iptables matches owners by number)"
	[ "$2" -le 4294967294 ] || die $EX_USAGE "$1=$2 is out of range"
	[ "$2" -ne 0 ] || die $EX_USAGE "$1=0 would exempt every root process from capture; run the sidecar as its own id"
}

validate_settings() {
	if ! is_uint "$BIND_PORT" || [ "$BIND_PORT" -lt 1 ] || [ "$BIND_PORT" -gt 65535 ]; then
		die $EX_USAGE "BIND_PORT=$BIND_PORT is not a port number (1-65535)"
	fi
	validate_id SIDECAR_UID "$SIDECAR_UID"
	[ -z "$SIDECAR_GID" ] || validate_id SIDECAR_GID "$SIDECAR_GID"
	case $REDIRECT_MODE in
	all | resolvconf) ;;
	*) die $EX_USAGE "REDIRECT_MODE=$REDIRECT_MODE: want all or resolvconf" ;;
	esac
	case $IPTABLES_MODE in
	auto | nft | legacy) ;;
	*) die $EX_USAGE "IPTABLES_MODE=$IPTABLES_MODE: want auto, nft or legacy" ;;
	esac
	case $IPV6_MODE in
	auto | on | off) ;;
	*) die $EX_USAGE "IPV6_MODE=$IPV6_MODE: want auto, on or off" ;;
	esac
	case $TEST_FAIL in
	'' | ipv4-apply | ipv6-apply) ;;
	*) die $EX_USAGE "DOT_SIDECAR_TEST_FAIL=$TEST_FAIL: want ipv4-apply or ipv6-apply" ;;
	esac
}

# read_nameservers fills NS4 and NS6 (space-separated, de-duplicated, in file
# order) from RESOLV_CONF. An address we cannot parse is an error, not a skip:
# glibc might still use it, and a nameserver we do not capture leaks.
NS4=
NS6=
read_nameservers() {
	[ -r "$RESOLV_CONF" ] || die $EX_USAGE "REDIRECT_MODE=resolvconf: cannot read RESOLV_CONF=$RESOLV_CONF"
	while IFS= read -r line || [ -n "$line" ]; do
		# shellcheck disable=SC2086 # word splitting is the point; globbing is off
		set -f && set -- $line && set +f
		[ "${1-}" = nameserver ] || continue
		addr=${2-}
		case $addr in
		*:*)
			addr=${addr%%\%*} # ip6tables takes no zone index (fe80::1%eth0)
			case $addr in
			*[!0-9A-Fa-f:.]* | *:::* | '') die $EX_USAGE "$RESOLV_CONF: cannot parse IPv6 nameserver '$2'" ;;
			esac
			case " $NS6 " in *" $addr "*) ;; *) NS6="${NS6:+$NS6 }$addr" ;; esac
			;;
		*.*.*.*)
			case $addr in
			*[!0-9.]* | *.*.*.*.* | *..* | .* | *.) die $EX_USAGE "$RESOLV_CONF: cannot parse IPv4 nameserver '$addr'" ;;
			esac
			case " $NS4 " in *" $addr "*) ;; *) NS4="${NS4:+$NS4 }$addr" ;; esac
			;;
		*) die $EX_USAGE "$RESOLV_CONF: cannot parse nameserver '$addr'" ;;
		esac
	done <"$RESOLV_CONF"
	[ -n "$NS4$NS6" ] || die $EX_USAGE "REDIRECT_MODE=resolvconf: no nameserver lines in $RESOLV_CONF"
}

# decide_ipv6 sets DO_V6 (yes/no) and V6_REASON.
decide_ipv6() {
	case $IPV6_MODE in
	off) DO_V6=no V6_REASON="IPV6_MODE=off" ;;
	on) DO_V6=yes V6_REASON="IPV6_MODE=on" ;;
	auto)
		if [ ! -e "$IF_INET6" ]; then
			DO_V6=no V6_REASON="kernel has no IPv6 ($IF_INET6 missing)"
		elif ! read -r _ <"$IF_INET6"; then # /proc files report size 0: read a line
			DO_V6=no V6_REASON="no IPv6 address in this network namespace ($IF_INET6 empty)"
		else
			DO_V6=yes V6_REASON="IPv6 present ($IF_INET6)"
		fi
		;;
	esac
}

# --- payloads ---------------------------------------------------------------

# rule chain reason matches target: one "-A" line, the comment placed before
# the target as iptables-save prints it, so save output reads like our payload.
rule() {
	printf -- '-A %s %s -m comment --comment "dot-sidecar/%s" %s\n' "$1" "$3" "$2" "$4"
}

# chain_body family: the rules of our chain (without declaration or COMMIT).
chain_body() {
	fam=$1
	rule "$CHAIN" skip-sidecar-uid "-m owner --uid-owner $SIDECAR_UID" "-j RETURN"
	if [ -n "$SIDECAR_GID" ]; then
		rule "$CHAIN" skip-sidecar-gid "-m owner --gid-owner $SIDECAR_GID" "-j RETURN"
	fi
	if [ "$REDIRECT_MODE" = all ]; then
		for p in udp tcp; do
			rule "$CHAIN" "redirect-$p-dns" "-p $p -m $p --dport 53" "-j REDIRECT --to-ports $BIND_PORT"
		done
		return 0
	fi
	if [ "$fam" = 4 ]; then list=$NS4 mask=32; else list=$NS6 mask=128; fi
	for ns in $list; do
		for p in udp tcp; do
			rule "$CHAIN" "redirect-$p-resolvconf" "-d $ns/$mask -p $p -m $p --dport 53" "-j REDIRECT --to-ports $BIND_PORT"
		done
	done
}

# payload family jump-lines: the full restore input. jump-lines is what to do
# with OUTPUT: either our "-I" line (jump missing) or "-D" lines for duplicates.
payload() {
	printf '*nat\n:%s - [0:0]\n' "$CHAIN"
	chain_body "$1"
	[ -z "$2" ] || printf '%s\n' "$2"
	printf 'COMMIT\n'
}

jump_insert() {
	printf -- '-I OUTPUT 1 -m comment --comment "%s" -j %s' "$JUMP_COMMENT" "$CHAIN"
}

# --- backends ---------------------------------------------------------------

# tool family backend verb: e.g. "ip6tables-nft-restore".
tool() {
	if [ "$1" = 4 ]; then printf 'iptables-%s-%s' "$2" "$3"; else printf 'ip6tables-%s-%s' "$2" "$3"; fi
}

has_backend() {
	command -v "$(tool 4 "$1" save)" >/dev/null 2>&1 &&
		command -v "$(tool 4 "$1" restore)" >/dev/null 2>&1
}

# count_rules backend: rules ("-A" lines) across both families, or -1 when the
# backend is unusable here.
count_rules() {
	has_backend "$1" || {
		echo -1
		return 0
	}
	if ! v4=$("$(tool 4 "$1" save)" 2>/dev/null); then
		echo -1
		return 0
	fi
	v6=$("$(tool 6 "$1" save)" 2>/dev/null) || v6=
	printf '%s\n%s\n' "$v4" "$v6" | grep -c '^-A ' || true
}

# choose_backend sets BACKEND.
choose_backend() {
	case $IPTABLES_MODE in
	nft | legacy)
		has_backend "$IPTABLES_MODE" ||
			die $EX_TOOL "IPTABLES_MODE=$IPTABLES_MODE needs $(tool 4 "$IPTABLES_MODE" save) and $(tool 4 "$IPTABLES_MODE" restore) (Debian package iptables)"
		BACKEND=$IPTABLES_MODE
		log "backend: $BACKEND (IPTABLES_MODE=$IPTABLES_MODE)"
		;;
	auto)
		n_nft=$(count_rules nft)
		n_legacy=$(count_rules legacy)
		if [ "$n_nft" -lt 0 ] && [ "$n_legacy" -lt 0 ]; then
			die $EX_TOOL "no usable iptables backend: need iptables-nft-save/-restore or iptables-legacy-save/-restore (Debian package iptables), runnable here"
		fi
		if [ "$n_legacy" -gt "$n_nft" ]; then BACKEND=legacy; else BACKEND=nft; fi
		log "backend: $BACKEND (IPTABLES_MODE=auto: nft holds $n_nft rules, legacy $n_legacy; -1 = unusable; nft unless legacy holds more)"
		;;
	esac
}

# require_cap bit name why: capabilities are read from CapEff so that root
# without them (a container that dropped NET_ADMIN) is caught before iptables
# fails with a vaguer message. Without /proc/self/status, fall back to uid 0.
require_cap() {
	capeff=
	if [ -r /proc/self/status ]; then
		while IFS=' 	' read -r key val; do
			[ "$key" = CapEff: ] && capeff=$val
		done </proc/self/status
	fi
	if [ -z "$capeff" ]; then
		[ "$(id -u)" = 0 ] || die $EX_PRIV "must run as root with CAP_$2 in the pod's network namespace"
		return 0
	fi
	[ $((0x$capeff >> $1 & 1)) = 1 ] || die $EX_PRIV "missing CAP_$2 (uid $(id -u)): $3"
}

# NET_ADMIN for any change to netfilter; NET_RAW for the legacy backend, whose
# tools talk to the kernel through a raw socket (nft uses netlink only).
require_net_admin() {
	require_cap 12 NET_ADMIN "run as root with capabilities NET_ADMIN and NET_RAW in the pod's network namespace"
}
require_net_raw_for() {
	[ "$1" != legacy ] || require_cap 13 NET_RAW "the legacy iptables backend needs it (add NET_RAW to the init container)"
}

require_base_tools() {
	for t in sed grep id; do
		command -v "$t" >/dev/null 2>&1 || die $EX_TOOL "missing tool: $t"
	done
}

# nat_state family backend: the nat section of -save (empty if no nat table).
# Reading all tables instead of "-t nat" avoids creating a legacy nat table.
nat_state() {
	out=$("$(tool "$1" "$2" save)" 2>&1) || {
		log "$(tool "$1" "$2" save) failed: $out"
		return 1
	}
	printf '%s\n' "$out" | sed -n '/^\*nat$/,/^COMMIT$/p'
}

# jumps: every rule, in any chain, that jumps to ours (from nat_state on stdin).
jumps() {
	grep -E -- "^-A [^ ]+ (.* )?-j $CHAIN( |\$)" || true
}

ours() {
	grep -E -- "(^:$CHAIN )|(^-A $CHAIN )|(-j $CHAIN( |\$))" || true
}

# restore family backend [--test]: feeds stdin to iptables-restore --noflush.
restore() {
	r=$(tool "$1" "$2" restore)
	shift 2
	"$r" --noflush -w "$RESTORE_WAIT" "$@" 2>&1
}

# remove family backend: cleanup of one family; prints what it removed.
remove() {
	st=$(nat_state "$1" "$2") || return 1
	j=$(printf '%s\n' "$st" | jumps | sed 's/^-A /-D /')
	has_chain=no
	printf '%s\n' "$st" | grep -q "^:$CHAIN " && has_chain=yes
	if [ -z "$j" ] && [ "$has_chain" = no ]; then
		return 0
	fi
	p=$(
		printf '*nat\n'
		[ -z "$j" ] || printf '%s\n' "$j"
		[ "$has_chain" = no ] || printf -- '-F %s\n-X %s\n' "$CHAIN" "$CHAIN"
		printf 'COMMIT\n'
	)
	if ! out=$(printf '%s\n' "$p" | restore "$1" "$2"); then
		log "IPv$1 ($2): removing our rules failed: $out"
		return 1
	fi
	log "IPv$1 ($2): removed chain $CHAIN and $(printf '%s\n' "$j" | grep -c '^-D' || true) jump(s)"
}

# --- commands ---------------------------------------------------------------

cmd_dry_run() {
	[ "$REDIRECT_MODE" = all ] || read_nameservers
	decide_ipv6
	echo "# dot-sidecar dns-redirect dry-run: iptables-restore --noflush input of 'apply'"
	echo "# in a network namespace that holds none of our rules yet. A re-run declares"
	echo "# (and so flushes) only $CHAIN and adds the OUTPUT jump only when missing."
	echo "# REDIRECT_MODE=$REDIRECT_MODE BIND_PORT=$BIND_PORT SIDECAR_UID=$SIDECAR_UID SIDECAR_GID=${SIDECAR_GID:-(unset)} IPTABLES_MODE=$IPTABLES_MODE IPV6_MODE=$IPV6_MODE"
	if [ "$REDIRECT_MODE" = resolvconf ]; then
		echo "# nameservers in $RESOLV_CONF: IPv4 ${NS4:-(none)}; IPv6 ${NS6:-(none)}"
	fi
	echo "# ==== IPv4: iptables-restore --noflush ===="
	payload 4 "$(jump_insert)"
	if [ "$DO_V6" = yes ]; then
		echo "# ==== IPv6: ip6tables-restore --noflush ===="
		payload 6 "$(jump_insert)"
	else
		echo "# ==== IPv6: skipped: $V6_REASON ===="
	fi
}

# family_payload family backend: reads state, prints the restore input with the
# jump inserted when missing and duplicate jumps deleted.
family_payload() {
	st=$(nat_state "$1" "$2") || return 1
	j=$(printf '%s\n' "$st" | jumps)
	if [ -z "$j" ]; then
		extra=$(jump_insert)
	else
		# Keep the first jump where it is (someone may have ordered it); drop copies.
		extra=$(printf '%s\n' "$j" | sed '1d; s/^-A /-D /')
	fi
	payload "$1" "$extra"
}

cmd_apply() {
	require_base_tools
	[ "$REDIRECT_MODE" = all ] || read_nameservers
	decide_ipv6
	require_net_admin
	choose_backend
	require_net_raw_for "$BACKEND"
	if [ "$DO_V6" = yes ]; then
		fams="4 6"
		log "IPv6: capturing ($V6_REASON)"
	else
		fams=4
		log "IPv6: skipped: $V6_REASON"
		[ -z "$NS6" ] || log "IPv6: note: resolv.conf lists IPv6 nameservers ($NS6) that stay uncaptured"
	fi
	# Build and --test every family before committing any, so that a payload the
	# kernel rejects (no ip6tables nat, no owner match) changes nothing.
	for f in $fams; do
		p=$(family_payload "$f" "$BACKEND") || die $EX_FAIL "IPv$f: cannot read current rules with $(tool "$f" "$BACKEND" save)"
		if ! out=$(printf '%s\n' "$p" | restore "$f" "$BACKEND" --test); then
			hint=
			[ "$f" != 6 ] || [ "$IPV6_MODE" != auto ] || hint=" (IPv6 is present but unusable for ip6tables; IPV6_MODE=off skips it deliberately)"
			die $EX_FAIL "IPv$f ($BACKEND): iptables-restore --test rejected our rules, nothing applied$hint: $out"
		fi
	done
	for f in $fams; do
		p=$(family_payload "$f" "$BACKEND") || rollback "$f" "cannot read current rules"
		if [ "$TEST_FAIL" = "ipv$f-apply" ]; then
			p=$(printf '%s\n' "$p" | sed "s/^COMMIT\$/-A DOT_SIDECAR_NO_CHAIN -j RETURN\nCOMMIT/")
		fi
		if ! out=$(printf '%s\n' "$p" | restore "$f" "$BACKEND"); then
			rollback "$f" "$out"
		fi
	done
	for f in $fams; do
		st=$(nat_state "$f" "$BACKEND") || die $EX_FAIL "IPv$f: cannot read back rules"
		printf '%s\n' "$st" | ours | while IFS= read -r l; do log "IPv$f ($BACKEND): $l"; done
	done
	log "applied: DNS (UDP+TCP port 53) now goes to port $BIND_PORT on loopback, except uid $SIDECAR_UID${SIDECAR_GID:+ and gid $SIDECAR_GID}"
}

# rollback family message: all-or-nothing; remove ours from every family.
rollback() {
	log "IPv$1 ($BACKEND): applying failed: $2"
	ok=yes
	for rf in $fams; do
		remove "$rf" "$BACKEND" || ok=no
	done
	[ "$ok" = yes ] || die $EX_FAIL "rollback incomplete: inspect with iptables-save -t nat and run cleanup"
	die $EX_FAIL "rolled back: no dot-sidecar rules remain in any family"
}

cmd_cleanup() {
	require_base_tools
	decide_ipv6
	case $IPTABLES_MODE in
	auto) backends= && for b in nft legacy; do has_backend "$b" && backends="$backends $b"; done ;;
	*)
		has_backend "$IPTABLES_MODE" ||
			die $EX_TOOL "IPTABLES_MODE=$IPTABLES_MODE needs $(tool 4 "$IPTABLES_MODE" save) and $(tool 4 "$IPTABLES_MODE" restore)"
		backends=$IPTABLES_MODE
		;;
	esac
	[ -n "$backends" ] || die $EX_TOOL "no iptables backend installed (Debian package iptables)"
	require_net_admin
	for b in $backends; do
		require_net_raw_for "$b"
	done
	status=0
	for b in $backends; do
		for f in 4 6; do
			if [ "$f" = 6 ] && [ "$DO_V6" = no ]; then
				continue
			fi
			if [ "$IPTABLES_MODE" = auto ] && ! "$(tool "$f" "$b" save)" >/dev/null 2>&1; then
				continue # backend unusable here (e.g. no nf_tables): nothing of ours in it
			fi
			remove "$f" "$b" || status=$EX_FAIL
		done
	done
	[ "$status" = 0 ] || die $EX_FAIL "cleanup incomplete"
	log "cleanup done (backends:$backends)"
}

# --- main -------------------------------------------------------------------

cmd=${1:-apply}
[ $# -le 1 ] || {
	usage >&2
	die $EX_USAGE "unexpected arguments after '$cmd': $*"
}
case $cmd in
apply | cleanup | dry-run) ;;
help | -h | --help)
	usage
	exit 0
	;;
*)
	usage >&2
	die $EX_USAGE "unknown command '$cmd'"
	;;
esac
validate_settings
case $cmd in
apply) cmd_apply ;;
cleanup) cmd_cleanup ;;
dry-run) cmd_dry_run ;;
esac
