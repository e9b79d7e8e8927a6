package manifests

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// meshKeys names, per mesh, the pod annotations that exclude outbound and
// inbound ports from the mesh's capture.
var meshKeys = map[string]struct{ outbound, inbound string }{
	"istio":   {"traffic.sidecar.istio.io/excludeOutboundPorts", "traffic.sidecar.istio.io/excludeInboundPorts"},
	"linkerd": {"config.linkerd.io/skip-outbound-ports", "config.linkerd.io/skip-inbound-ports"},
}

// TestMeshOverlays checks the mesh companions against the sidecar's own
// settings: every upstream port the sidecar dials (853 for DoT) bypasses the
// mesh's outbound capture, as does port 53 (TCP DNS must reach our redirect
// whichever nat OUTPUT jump comes first); the admin port bypasses inbound
// capture (probes and scrapes); Istio's own DNS capture is off.
func TestMeshOverlays(t *testing.T) {
	t.Parallel()
	for _, dir := range overlayNames() {
		want := overlays[dir]
		if want.mesh == "" {
			continue
		}
		keys, ok := meshKeys[want.mesh]
		if !ok {
			t.Fatalf("%s: unknown mesh %q", dir, want.mesh)
		}
		t.Run(dir, func(t *testing.T) {
			for _, p := range dotSidecarPods(t) {
				if !strings.HasPrefix(p.where, dir+": ") {
					continue
				}
				side := p.container(t, sidecarName)
				cfg := loadSettings(t, p.env(t, side))
				a := p.meta.Annotations

				outbound := portList(t, p.where, keys.outbound, a[keys.outbound])
				wantOut := map[int]string{53: "TCP DNS"}
				for _, u := range cfg.Upstreams() {
					wantOut[int(u.Addr.Port())] = "upstream " + u.Name()
				}
				for port, why := range wantOut {
					if !outbound[port] {
						t.Errorf("%s: %s %q lacks %d (%s)", p.where, keys.outbound, a[keys.outbound], port, why)
					}
				}
				inbound := portList(t, p.where, keys.inbound, a[keys.inbound])
				if admin := int(portOf(t, cfg.AdminAddress)); !inbound[admin] {
					t.Errorf("%s: %s %q lacks the admin port %d", p.where, keys.inbound, a[keys.inbound], admin)
				}
				if want.mesh == "istio" {
					var pc struct {
						ProxyMetadata map[string]string `json:"proxyMetadata"`
					}
					if err := json.Unmarshal([]byte(a["proxy.istio.io/config"]), &pc); err != nil {
						t.Errorf("%s: proxy.istio.io/config %q: %v", p.where, a["proxy.istio.io/config"], err)
					} else if pc.ProxyMetadata["ISTIO_META_DNS_CAPTURE"] != "false" {
						t.Errorf("%s: proxy.istio.io/config %q must turn ISTIO_META_DNS_CAPTURE off", p.where, a["proxy.istio.io/config"])
					}
				}
			}
		})
	}
}

// portList parses a mesh's comma-separated port annotation.
func portList(t *testing.T, where, key, v string) map[int]bool {
	t.Helper()
	ports := make(map[int]bool)
	if v == "" {
		t.Errorf("%s: annotation %s missing", where, key)
		return ports
	}
	for _, s := range strings.Split(v, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || p < 1 || p > 65535 {
			t.Errorf("%s: %s=%q: %q is not a port", where, key, v, s)
			continue
		}
		ports[p] = true
	}
	return ports
}
