package netns

// Filters describing what may leave the pod.
const (
	// Port 53 in any direction, IPv4 or IPv6, UDP or TCP.
	filterDNS = "port 53"
	// DoT to the upstream and its replies.
	filterDoT = "tcp port 853"
	// TLS handshake records (content type 22) over IPv4; BPF cannot index the
	// TCP header behind an IPv6 header, so IPv4 stands for both.
	filterTLSHandshake = "ip and tcp port 853 and tcp[((tcp[12:1] & 0xf0) >> 2):1] = 0x16"
	// Everything that is neither DoT nor link housekeeping: ARP, IPv6
	// neighbour and router discovery (ICMPv6 133-137) and MLD reports (which
	// carry a hop-by-hop header, next header 0).
	filterUnexpected = "not (tcp port 853) and not arp and " +
		"not (icmp6 and ip6[40] >= 133 and ip6[40] <= 137) and not (ip6 and ip6[6] = 0)"
)
