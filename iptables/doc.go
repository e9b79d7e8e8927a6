// Package iptables holds the tests of dns-redirect.sh, the init step that
// redirects a pod's DNS to the sidecar (and, with its node-* commands, the
// node-level mode's forwarding of a node-local address's port 53 to the
// node's sidecar). The script is the product; this package has no Go API.
// The files that carry it into the image (Dockerfile, entrypoint.sh) are
// tested in sidecar/e2e/image. Golden files under testdata/ are the script's dry-run output and are
// refreshed with REFRESH_GOLDEN=1 go test ./iptables/.
package iptables
