// Package netns holds the end-to-end test of transparent interception: real
// network namespaces, veth pairs, iptables (nft and legacy backends), the
// dot-sidecar binary running as its own UID, Unbound as the DoT upstream, and
// a packet capture on the pod's interface. It has no code of its own besides
// the tests; they run as root (`go test ./...` in CI) and skip elsewhere.
package netns
