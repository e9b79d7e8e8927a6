#!/bin/sh
# dns-redirect.sh: redirect a pod's outgoing DNS to the dot-sidecar on loopback,
# or (node-* commands) a node's node-local DNS address to the node's dot-sidecar.
#
# Usage: dns-redirect.sh {apply|cleanup|dry-run|node-apply|node-cleanup|node-dry-run|help}
#
# The command is required: run without one, or with one it does not know, the
# script prints its usage on stderr, exits 2 and changes nothing, so that a
# stray invocation never rewrites the rules of the namespace it happens to
# run in.
#
#   apply    Run as root with CAP_NET_ADMIN (and CAP_NET_RAW for the legacy
#            backend) inside the pod's network namespace. Redirects UDP and TCP
#            destination port 53 to BIND_PORT on loopback, for IPv4 and IPv6,
#            and keeps the sidecar's own port-53 flows in a conntrack zone of
#            their own. Idempotent; all-or-nothing across the two families.
#   cleanup  Removes exactly what apply added (the jumps and the chains, both
#            tables, both families, in every backend that holds them with
#            IPTABLES_MODE=auto).
#   dry-run  Prints, on stdout, the iptables-restore --noflush input apply would
#            feed each family in a namespace that holds none of our rules yet.
#            Needs neither root nor the iptables tools.
#
# Node-level mode (manifests/node: one dot-sidecar per node on the host network;
# docs/kubernetes.md, node-level mode). The sidecar cannot bind port 53 there: it runs as a
# non-root UID with no capabilities, and Kubernetes grants no ambient ones. So it
# listens on NODE_LOCAL_ADDRESS:BIND_PORT and these commands forward port 53:
#   node-apply    Run as root with CAP_NET_ADMIN (and CAP_NET_RAW for the legacy
#                 backend) in the node's network namespace. Puts NODE_LOCAL_ADDRESS/32
#                 on lo (label lo:dot-sidecar) and DNATs UDP and TCP
#                 NODE_LOCAL_ADDRESS:53 to NODE_LOCAL_ADDRESS:BIND_PORT, from pods
#                 (nat PREROUTING) and from the node's own processes (nat OUTPUT).
#                 IPv4 only. Idempotent; an address of ours that is no longer
#                 NODE_LOCAL_ADDRESS is removed; when committing the rules fails,
#                 an address this run added is removed again.
#   node-cleanup  Removes exactly what node-apply added: the jumps and the chain in
#                 every backend that holds them (IPTABLES_MODE=auto), and every
#                 address labelled lo:dot-sidecar.
#   node-dry-run  Prints, on stdout, the ip command and the iptables-restore
#                 --noflush input node-apply would use on a node holding none of it.
# What node-apply creates, in the IPv4 nat table:
#   - chain DOT_SIDECAR_NODE (declared in the payload, so a re-run flushes and
#     refills just that chain), with one DNAT rule per protocol;
#   - jumps "-I PREROUTING 1 -d ADDR/32 ..." and "-I OUTPUT 1 -d ADDR/32 ...",
#     first, so that no hostPort or container-engine DNAT for local port 53 sees
#     the query before us; a jump already in place is kept, any other jump to our
#     chain (a stale address, a copy) is deleted.
#
# What apply creates, per family (iptables and ip6tables), in the nat table
# (the redirect) and in the raw table (the conntrack zone):
#   - chain DOT_SIDECAR_OUTPUT in each, declared in the payload
#     (":DOT_SIDECAR_OUTPUT - [0:0]"), which creates it or, with --noflush,
#     flushes just that chain on a re-run;
#   - one jump "-I OUTPUT 1 ... -j DOT_SIDECAR_OUTPUT" in each, added only
#     when absent.
# The zone: NAT is decided on a flow's first packet, and conntrack knows a
# flow by its addresses and ports only. The sidecar's own queries leave on
# port 53 (to the cluster's resolver), so one of them and an application's
# query from the same source port to the same address, one soon after the
# other, would share a conntrack entry, and the second would take the first
# one's NAT decision: an application's query sent on to the resolver in
# plaintext, or the sidecar's own query redirected back to itself. The raw
# rules put the original direction of the sidecar's flows to every address
# the redirect captures into conntrack zone CT_ZONE (--zone-orig), where no
# application's flow is; their replies are looked up in the default zone,
# where they arrive, so no rule is needed for them.
# Every rule carries -m comment --comment "dot-sidecar/<reason>". Nothing else
# is touched: a mesh's chains and rules in the same namespace survive apply and
# cleanup. Stable names other tools and tests may rely on:
#   chain    DOT_SIDECAR_OUTPUT (nat and raw, both families)
#   comments nat: dot-sidecar/capture-dns (the OUTPUT jump), dot-sidecar/skip-sidecar-uid,
#            dot-sidecar/skip-sidecar-gid, dot-sidecar/redirect-udp-dns,
#            dot-sidecar/redirect-tcp-dns (REDIRECT_MODE=all),
#            dot-sidecar/redirect-udp-resolvconf, dot-sidecar/redirect-tcp-resolvconf;
#            raw: dot-sidecar/zone-dns (the OUTPUT jump), dot-sidecar/zone-not-sidecar,
#            dot-sidecar/zone-udp-dns, dot-sidecar/zone-tcp-dns (REDIRECT_MODE=all),
#            dot-sidecar/zone-udp-resolvconf, dot-sidecar/zone-tcp-resolvconf
#   zone     conntrack zone 53 (CT --zone-orig 53)
#   node     chain DOT_SIDECAR_NODE (nat, IPv4); comments dot-sidecar/node-dns-from-pods
#            (PREROUTING jump), dot-sidecar/node-dns-from-node (OUTPUT jump),
#            dot-sidecar/node-dnat-udp, dot-sidecar/node-dnat-tcp; address label
#            lo:dot-sidecar
#   stderr   "dns-redirect: backend: <nft|legacy> (IPTABLES_MODE=...)" on apply;
#            "dns-redirect: IPv6: skipped: <reason>" when IPv6 is skipped;
#            "dns-redirect: error: <message>" before any non-zero exit.
#
# Settings (environment):
#   BIND_PORT      sidecar DNS port on loopback (default 5053). REDIRECT sends
#                  IPv4 to 127.0.0.1:BIND_PORT and IPv6 to [::1]:BIND_PORT. In
#                  node mode, the port the DNAT sends to (53 is refused: the
#                  sidecar could not bind it).
#   NODE_LOCAL_ADDRESS  node mode: the IPv4 address pods send their queries to
#                  (default 169.254.20.53; link-local, so never routed off a node).
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
#                  family's real iptables-restore commit fail in its last table
#                  (after both families passed --test), to exercise the
#                  rollback; node-apply
#                  does the same to node-apply's commit.
#
# Exit codes:
#   0 done (cleanup with nothing to remove is success)
#   1 iptables-restore, -save or ip failed; apply rolled back both families; or
#     (node-apply) NODE_LOCAL_ADDRESS is already on the node but not ours
#   2 usage or invalid setting (no command, unknown command, bad BIND_PORT,
#     bad resolv.conf, ...); nothing was changed
#   3 missing privilege (not root / no CAP_NET_ADMIN, or no CAP_NET_RAW for legacy)
#   4 missing tool or no usable iptables backend
# Diagnostics go to stderr prefixed "dns-redirect:"; only dry-run writes stdout.
# After apply, the resulting rules of ours are logged (stderr), one per line.
set -eu

# Debian keeps the iptables tools in sbin, which a non-login PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"

CHAIN=DOT_SIDECAR_OUTPUT
TABLES="nat raw" # the tables holding CHAIN; the node-* commands use nat only
CT_ZONE=53       # the conntrack zone of the sidecar's own port-53 flows
NODE_CHAIN=DOT_SIDECAR_NODE
NODE_LABEL=lo:dot-sidecar # an address label must start with its device's name
WHERE="the pod's network namespace" # for messages; the node-* commands change it
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
usage: dns-redirect.sh {apply|cleanup|dry-run|node-apply|node-cleanup|node-dry-run|help}
  apply         redirect outgoing DNS (UDP/TCP port 53) to the sidecar, and
                keep the sidecar's own port-53 flows in a conntrack zone
  cleanup       remove exactly what apply added
  dry-run       print the iptables-restore input apply would use (no root needed)
  node-apply    node-level mode: NODE_LOCAL_ADDRESS on lo, and DNAT of its port 53
                to its BIND_PORT for pods and the node itself
  node-cleanup  remove exactly what node-apply added
  node-dry-run  print what node-apply would do (no root needed)
settings (env): BIND_PORT SIDECAR_UID SIDECAR_GID REDIRECT_MODE RESOLV_CONF
                IPTABLES_MODE IPV6_MODE NODE_LOCAL_ADDRESS; see the header of
                this script
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
NODE_LOCAL_ADDRESS=${NODE_LOCAL_ADDRESS:-169.254.20.53}
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
	'' | ipv4-apply | ipv6-apply | node-apply) ;;
	*) die $EX_USAGE "DOT_SIDECAR_TEST_FAIL=$TEST_FAIL: want ipv4-apply, ipv6-apply or node-apply" ;;
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

# captured family fn: calls "fn protocol kind match" for each destination the
# redirect captures (kind dns: port 53 anywhere; resolvconf: port 53 of each
# nameserver), so that the nat redirects and the raw zone rules never differ.
captured() {
	if [ "$REDIRECT_MODE" = all ]; then
		for p in udp tcp; do
			"$2" "$p" dns "-p $p -m $p --dport 53"
		done
		return 0
	fi
	if [ "$1" = 4 ]; then list=$NS4 mask=32; else list=$NS6 mask=128; fi
	for ns in $list; do
		for p in udp tcp; do
			"$2" "$p" resolvconf "-d $ns/$mask -p $p -m $p --dport 53"
		done
	done
}

redirect_rule() {
	rule "$CHAIN" "redirect-$1-$2" "$3" "-j REDIRECT --to-ports $BIND_PORT"
}

# zone_rule: --zone-orig, not --zone: the replies come back in the default
# zone, and an ICMP error about the flow finds it there too.
zone_rule() {
	rule "$CHAIN" "zone-$1-$2" "$3" "-j CT --zone-orig $CT_ZONE"
}

# chain_body family table: the rules of our chain in table (without
# declaration or COMMIT). nat: the sidecar's UID (and GID) exempt, the rest
# of the captured traffic redirected. raw: the captured traffic of the
# sidecar's UID (or GID), and only its, put in our zone.
chain_body() {
	if [ "$2" = raw ]; then
		rule "$CHAIN" zone-not-sidecar "-m owner ! --uid-owner $SIDECAR_UID${SIDECAR_GID:+ ! --gid-owner $SIDECAR_GID}" "-j RETURN"
		captured "$1" zone_rule
		return 0
	fi
	rule "$CHAIN" skip-sidecar-uid "-m owner --uid-owner $SIDECAR_UID" "-j RETURN"
	if [ -n "$SIDECAR_GID" ]; then
		rule "$CHAIN" skip-sidecar-gid "-m owner --gid-owner $SIDECAR_GID" "-j RETURN"
	fi
	captured "$1" redirect_rule
}

# payload family table jump-lines: one table's restore input. jump-lines is
# what to do with OUTPUT: either our "-I" line (jump missing) or "-D" lines
# for duplicates.
payload() {
	printf '*%s\n:%s - [0:0]\n' "$2" "$CHAIN"
	chain_body "$1" "$2"
	[ -z "$3" ] || printf '%s\n' "$3"
	printf 'COMMIT\n'
}

# jump_insert table: the OUTPUT jump to our chain in table.
jump_insert() {
	c=dot-sidecar/capture-dns
	[ "$1" != raw ] || c=dot-sidecar/zone-dns
	printf -- '-I OUTPUT 1 -m comment --comment "%s" -j %s' "$c" "$CHAIN"
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
		[ "$(id -u)" = 0 ] || die $EX_PRIV "must run as root with CAP_$2 in $WHERE"
		return 0
	fi
	[ $((0x$capeff >> $1 & 1)) = 1 ] || die $EX_PRIV "missing CAP_$2 (uid $(id -u)): $3"
}

# NET_ADMIN for any change to netfilter; NET_RAW for the legacy backend, whose
# tools talk to the kernel through a raw socket (nft uses netlink only).
require_net_admin() {
	require_cap 12 NET_ADMIN "run as root with capabilities NET_ADMIN and NET_RAW in $WHERE"
}
require_net_raw_for() {
	[ "$1" != legacy ] || require_cap 13 NET_RAW "the legacy iptables backend needs it (add NET_RAW to the init container)"
}

require_base_tools() {
	for t in sed grep id; do
		command -v "$t" >/dev/null 2>&1 || die $EX_TOOL "missing tool: $t"
	done
}

# save_state family backend: the output of -save, every table. Reading all
# tables instead of "-t nat" avoids creating a legacy table.
save_state() {
	out=$("$(tool "$1" "$2" save)" 2>&1) || {
		log "$(tool "$1" "$2" save) failed: $out"
		return 1
	}
	printf '%s\n' "$out"
}

# section save-state table: that table's part of save_state (empty if the
# table does not exist).
section() {
	printf '%s\n' "$1" | sed -n "/^\\*$2\$/,/^COMMIT\$/p"
}

# nat_state family backend: the nat section of -save.
nat_state() {
	st=$(save_state "$1" "$2") || return 1
	section "$st" nat
}

# jumps: every rule, in any chain, that jumps to ours (from a section on stdin).
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

# remove family backend: cleanup of one family, every table of TABLES in
# one restore; logs what it removed.
remove() {
	all=$(save_state "$1" "$2") || return 1
	p='' removed=''
	for tb in $TABLES; do
		st=$(section "$all" "$tb")
		j=$(printf '%s\n' "$st" | jumps | sed 's/^-A /-D /')
		has_chain=no
		printf '%s\n' "$st" | grep -q "^:$CHAIN " && has_chain=yes
		if [ -z "$j" ] && [ "$has_chain" = no ]; then
			continue
		fi
		p=$(
			[ -z "$p" ] || printf '%s\n' "$p"
			printf '*%s\n' "$tb"
			[ -z "$j" ] || printf '%s\n' "$j"
			[ "$has_chain" = no ] || printf -- '-F %s\n-X %s\n' "$CHAIN" "$CHAIN"
			printf 'COMMIT\n'
		)
		removed="$removed${removed:+, }$tb: chain $CHAIN and $(printf '%s\n' "$j" | grep -c '^-D' || true) jump(s)"
	done
	[ -n "$p" ] || return 0
	if ! out=$(printf '%s\n' "$p" | restore "$1" "$2"); then
		log "IPv$1 ($2): removing our rules failed: $out"
		return 1
	fi
	log "IPv$1 ($2): removed $removed"
}

# --- commands ---------------------------------------------------------------

cmd_dry_run() {
	[ "$REDIRECT_MODE" = all ] || read_nameservers
	decide_ipv6
	echo "# dot-sidecar dns-redirect dry-run: iptables-restore --noflush input of 'apply'"
	echo "# in a network namespace that holds none of our rules yet. In each table, a"
	echo "# re-run declares (and so flushes) only $CHAIN and adds the OUTPUT jump"
	echo "# only when missing. nat: the redirect; raw: the sidecar's own flows to what"
	echo "# the redirect captures go to conntrack zone $CT_ZONE."
	echo "# REDIRECT_MODE=$REDIRECT_MODE BIND_PORT=$BIND_PORT SIDECAR_UID=$SIDECAR_UID SIDECAR_GID=${SIDECAR_GID:-(unset)} IPTABLES_MODE=$IPTABLES_MODE IPV6_MODE=$IPV6_MODE"
	if [ "$REDIRECT_MODE" = resolvconf ]; then
		echo "# nameservers in $RESOLV_CONF: IPv4 ${NS4:-(none)}; IPv6 ${NS6:-(none)}"
	fi
	echo "# ==== IPv4: iptables-restore --noflush ===="
	for tb in $TABLES; do payload 4 "$tb" "$(jump_insert "$tb")"; done
	if [ "$DO_V6" = yes ]; then
		echo "# ==== IPv6: ip6tables-restore --noflush ===="
		for tb in $TABLES; do payload 6 "$tb" "$(jump_insert "$tb")"; done
	else
		echo "# ==== IPv6: skipped: $V6_REASON ===="
	fi
}

# family_payload family backend: reads state, prints the restore input of
# every table with each jump inserted when missing and duplicate jumps deleted.
family_payload() {
	all=$(save_state "$1" "$2") || return 1
	for tb in $TABLES; do
		j=$(section "$all" "$tb" | jumps)
		if [ -z "$j" ]; then
			extra=$(jump_insert "$tb")
		else
			# Keep the first jump where it is (someone may have ordered it); drop copies.
			extra=$(printf '%s\n' "$j" | sed '1d; s/^-A /-D /')
		fi
		payload "$1" "$tb" "$extra"
	done
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
			# In the last table (raw): the legacy backend has committed nat by then.
			p=$(printf '%s\n' "$p" | sed "\$ s/^COMMIT\$/-A DOT_SIDECAR_NO_CHAIN -j RETURN\nCOMMIT/")
		fi
		if ! out=$(printf '%s\n' "$p" | restore "$f" "$BACKEND"); then
			rollback "$f" "$out"
		fi
	done
	for f in $fams; do
		all=$(save_state "$f" "$BACKEND") || die $EX_FAIL "IPv$f: cannot read back rules"
		for tb in $TABLES; do
			section "$all" "$tb" | ours | while IFS= read -r l; do log "IPv$f ($BACKEND) $tb: $l"; done
		done
	done
	log "applied: DNS (UDP+TCP port 53) now goes to port $BIND_PORT on loopback, except uid $SIDECAR_UID${SIDECAR_GID:+ and gid $SIDECAR_GID}, whose port-53 flows conntrack keeps in zone $CT_ZONE"
}

# rollback family message: all-or-nothing; remove ours from every family.
rollback() {
	log "IPv$1 ($BACKEND): applying failed: $2"
	ok=yes
	for rf in $fams; do
		remove "$rf" "$BACKEND" || ok=no
	done
	[ "$ok" = yes ] || die $EX_FAIL "rollback incomplete: inspect with iptables-save -t nat and -t raw, and run cleanup"
	die $EX_FAIL "rolled back: no dot-sidecar rules remain in any family"
}

# cleanup_backends sets backends, those cleanup looks in (every installed one
# with IPTABLES_MODE=auto), and checks the privileges they need.
cleanup_backends() {
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
}

# cleanup_in family backend: remove, unless auto finds the backend unusable.
cleanup_in() {
	if [ "$IPTABLES_MODE" = auto ] && ! "$(tool "$1" "$2" save)" >/dev/null 2>&1; then
		return 0 # backend unusable here (e.g. no nf_tables): nothing of ours in it
	fi
	remove "$1" "$2"
}

cmd_cleanup() {
	require_base_tools
	decide_ipv6
	cleanup_backends
	status=0
	for b in $backends; do
		for f in 4 6; do
			if [ "$f" = 6 ] && [ "$DO_V6" = no ]; then
				continue
			fi
			cleanup_in "$f" "$b" || status=$EX_FAIL
		done
	done
	[ "$status" = 0 ] || die $EX_FAIL "cleanup incomplete"
	log "cleanup done (backends:$backends)"
}

# --- node-level mode --------------------------------------------------------

# validate_node_settings: NODE_LOCAL_ADDRESS is a unicast IPv4 address that a
# DNAT in PREROUTING can target (not 127/8: the kernel drops packets from
# outside to it as martians), and BIND_PORT one the sidecar binds unprivileged.
validate_node_settings() {
	a=$NODE_LOCAL_ADDRESS
	case $a in
	*:*) die $EX_USAGE "NODE_LOCAL_ADDRESS=$a: node mode is IPv4 only (docs/kubernetes.md: node-level mode)" ;;
	*[!0-9.]* | *..* | .* | *. | '') die $EX_USAGE "NODE_LOCAL_ADDRESS=$a is not an IPv4 address" ;;
	esac
	# shellcheck disable=SC2086 # splitting on dots is the point; globbing is off
	set -f && oldifs=$IFS && IFS=. && set -- $a && IFS=$oldifs && set +f
	[ $# = 4 ] || die $EX_USAGE "NODE_LOCAL_ADDRESS=$a is not an IPv4 address (want four decimal octets)"
	for o in "$@"; do
		{ is_uint "$o" && [ "$o" -le 255 ]; } ||
			die $EX_USAGE "NODE_LOCAL_ADDRESS=$a: octet '$o' is not 0-255 without leading zeros"
	done
	if [ "$1" = 0 ] || [ "$1" = 127 ] || [ "$1" -ge 224 ]; then
		die $EX_USAGE "NODE_LOCAL_ADDRESS=$a: want a unicast address outside 0/8 and 127/8 (default 169.254.20.53)"
	fi
	[ "$BIND_PORT" != 53 ] ||
		die $EX_USAGE "BIND_PORT=53: node mode forwards port 53 to BIND_PORT, a port the non-root sidecar can bind (default 5053)"
}

require_ip() {
	command -v ip >/dev/null 2>&1 || die $EX_TOOL "missing tool: ip (Debian package iproute2)"
}

# node_jump built-in-chain reason: a jump to our chain, as iptables-save prints it.
node_jump() {
	rule "$1" "$2" "-d $NODE_LOCAL_ADDRESS/32" "-j $NODE_CHAIN"
}

node_chain_body() {
	for p in udp tcp; do
		rule "$NODE_CHAIN" "node-dnat-$p" "-d $NODE_LOCAL_ADDRESS/32 -p $p -m $p --dport 53" \
			"-j DNAT --to-destination $NODE_LOCAL_ADDRESS:$BIND_PORT"
	done
}

# node_jump_lines nat-state: keeps, in each built-in chain, the first jump that
# is exactly the wanted one; prints "-D" for every other jump to our chain
# (copies, a former NODE_LOCAL_ADDRESS) and "-I ... 1" for a wanted one missing.
node_jump_lines() {
	want_pre=$(node_jump PREROUTING node-dns-from-pods)
	want_out=$(node_jump OUTPUT node-dns-from-node)
	have_pre=no have_out=no
	while IFS= read -r l; do
		if [ -z "$l" ]; then
			continue
		elif [ "$l" = "$want_pre" ] && [ $have_pre = no ]; then
			have_pre=yes
		elif [ "$l" = "$want_out" ] && [ $have_out = no ]; then
			have_out=yes
		else
			printf -- '-D %s\n' "${l#-A }"
		fi
	done <<JUMPS
$(printf '%s\n' "$1" | jumps)
JUMPS
	[ $have_pre = yes ] || printf -- '-I PREROUTING 1 %s\n' "${want_pre#-A PREROUTING }"
	[ $have_out = yes ] || printf -- '-I OUTPUT 1 %s\n' "${want_out#-A OUTPUT }"
}

# node_payload nat-state: the restore input of node-apply.
node_payload() {
	printf '*nat\n:%s - [0:0]\n' "$NODE_CHAIN"
	node_chain_body
	node_jump_lines "$1"
	printf 'COMMIT\n'
}

# node_addr_add_args: the ip arguments that put the address on lo, labelled.
node_addr_add_args() {
	printf -- '-4 addr add %s/32 dev lo label %s' "$NODE_LOCAL_ADDRESS" "$NODE_LABEL"
}

# our_addresses: every address/len of lo labelled ours, one a line.
our_addresses() {
	ip -4 -o addr show dev lo label "$NODE_LABEL" | sed -n 's|.* inet \([0-9.]*/[0-9]*\) .*|\1|p'
}

# node_address sets ADDED (yes when this run put the address on lo). It refuses
# an address the node has that we did not add: node-cleanup would never remove
# it, and whoever added it may.
node_address() {
	ADDED=no
	mine=$(our_addresses) || die $EX_FAIL "ip cannot list the addresses of lo"
	have=no
	case " $(printf '%s ' "$mine")" in *" $NODE_LOCAL_ADDRESS/32 "*) have=yes ;; esac
	if [ $have = no ]; then
		held=$(ip -4 -o addr show to "$NODE_LOCAL_ADDRESS/32") || die $EX_FAIL "ip cannot list this node's addresses"
		if [ -n "$held" ]; then
			die $EX_FAIL "NODE_LOCAL_ADDRESS=$NODE_LOCAL_ADDRESS is already on this node without our label $NODE_LABEL, so it is not ours (choose another address, or remove it): $(printf '%s\n' "$held" | sed 's/ *valid_lft.*//; s/\\$//')"
		fi
	fi
	for old in $mine; do
		[ "$old" != "$NODE_LOCAL_ADDRESS/32" ] || continue
		out=$(ip -4 addr del "$old" dev lo 2>&1) || die $EX_FAIL "removing our former address $old from lo: $out"
		log "address: removed our former $old from lo"
	done
	if [ $have = yes ]; then
		log "address: $NODE_LOCAL_ADDRESS/32 already on lo ($NODE_LABEL)"
		return 0
	fi
	# shellcheck disable=SC2046 # the arguments are words without spaces
	out=$(ip $(node_addr_add_args) 2>&1) || die $EX_FAIL "ip $(node_addr_add_args): $out"
	ADDED=yes
	log "address: added $NODE_LOCAL_ADDRESS/32 on lo ($NODE_LABEL)"
}

cmd_node_dry_run() {
	echo "# dot-sidecar dns-redirect node-dry-run: what 'node-apply' does on a node that"
	echo "# holds none of it yet. A re-run adds the address and each jump only when"
	echo "# missing, and declares (and so flushes) only $NODE_CHAIN."
	echo "# NODE_LOCAL_ADDRESS=$NODE_LOCAL_ADDRESS BIND_PORT=$BIND_PORT IPTABLES_MODE=$IPTABLES_MODE"
	echo "# ==== address: ip ===="
	echo "ip $(node_addr_add_args)"
	echo "# ==== IPv4: iptables-restore --noflush ===="
	node_payload ""
	echo "# ==== IPv6: not touched: node mode is IPv4 only ===="
}

cmd_node_apply() {
	require_base_tools
	require_ip
	require_net_admin
	choose_backend
	require_net_raw_for "$BACKEND"
	# --test first: rules the kernel rejects leave the node untouched.
	st=$(nat_state 4 "$BACKEND") || die $EX_FAIL "cannot read current rules with $(tool 4 "$BACKEND" save)"
	if ! out=$(node_payload "$st" | restore 4 "$BACKEND" --test); then
		die $EX_FAIL "IPv4 ($BACKEND): iptables-restore --test rejected our rules, nothing applied: $out"
	fi
	node_address
	st=$(nat_state 4 "$BACKEND") || node_undo "cannot read current rules"
	p=$(node_payload "$st")
	if [ "$TEST_FAIL" = node-apply ]; then
		p=$(printf '%s\n' "$p" | sed "s/^COMMIT\$/-A DOT_SIDECAR_NO_CHAIN -j RETURN\nCOMMIT/")
	fi
	if ! out=$(printf '%s\n' "$p" | restore 4 "$BACKEND"); then
		node_undo "$out"
	fi
	st=$(nat_state 4 "$BACKEND") || die $EX_FAIL "IPv4: cannot read back rules"
	printf '%s\n' "$st" | ours | while IFS= read -r l; do log "IPv4 ($BACKEND): $l"; done
	log "applied: DNS to $NODE_LOCAL_ADDRESS:53 (UDP+TCP, from pods and from the node) now goes to $NODE_LOCAL_ADDRESS:$BIND_PORT; IPv6 not touched"
}

# node_undo message: the rules did not commit (iptables-restore then changes
# nothing); take the address back if this run added it.
node_undo() {
	log "IPv4 ($BACKEND): applying failed: $1"
	if [ "$ADDED" = yes ]; then
		out=$(ip -4 addr del "$NODE_LOCAL_ADDRESS/32" dev lo 2>&1) ||
			die $EX_FAIL "rollback incomplete: $NODE_LOCAL_ADDRESS/32 stays on lo ($out); run node-cleanup"
	fi
	die $EX_FAIL "rolled back: no rule changed, and an address this run added is gone again"
}

cmd_node_cleanup() {
	require_base_tools
	require_ip
	cleanup_backends
	status=0
	for b in $backends; do
		cleanup_in 4 "$b" || status=$EX_FAIL
	done
	mine=$(our_addresses) || die $EX_FAIL "ip cannot list the addresses of lo"
	for a in $mine; do
		if out=$(ip -4 addr del "$a" dev lo 2>&1); then
			log "address: removed $a from lo"
		else
			log "address: removing $a from lo failed: $out"
			status=$EX_FAIL
		fi
	done
	[ "$status" = 0 ] || die $EX_FAIL "node-cleanup incomplete"
	log "node-cleanup done (backends:$backends)"
}

# --- main -------------------------------------------------------------------

if [ $# -eq 0 ]; then
	usage >&2
	die $EX_USAGE "no command given; nothing changed (the init step runs 'apply')"
fi
cmd=$1
[ $# -le 1 ] || {
	usage >&2
	die $EX_USAGE "unexpected arguments after '$cmd': $*"
}
case $cmd in
apply | cleanup | dry-run) ;;
node-apply | node-cleanup | node-dry-run)
	CHAIN=$NODE_CHAIN # jumps, ours and remove work on the node chain
	TABLES=nat
	WHERE="the node's network namespace"
	;;
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
node-*)
	validate_node_settings
	case $cmd in
	node-apply) cmd_node_apply ;;
	node-cleanup) cmd_node_cleanup ;;
	node-dry-run) cmd_node_dry_run ;;
	esac
	;;
esac
