package resolvconf

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

// TestDetect runs Detect on files shaped like the kubelet's, and on files it
// must not mistake for one.
func TestDetect(t *testing.T) {
	own := func(a netip.Addr) bool { return a == netip.MustParseAddr("169.254.20.10") }
	tests := []struct {
		name   string
		in     string
		domain string // DetectOptions.Domain
		want   Cluster
		err    error
	}{
		{
			name: "ClusterFirst",
			in: "search team-a.svc.cluster.local svc.cluster.local cluster.local\n" +
				"nameserver 10.96.0.10\noptions ndots:5\n",
			want: Cluster{Domain: "cluster.local", Zones: []string{"cluster.local"},
				Nameservers: addrs("10.96.0.10")},
		},
		{
			name: "ClusterFirst with the node's search domains (a cloud's internal domain)",
			in: "search team-a.svc.cluster.local svc.cluster.local cluster.local us-east-2.compute.internal ec2.internal\n" +
				"nameserver 172.20.0.10\noptions ndots:5\n",
			want: Cluster{Domain: "cluster.local",
				Zones:       []string{"cluster.local", "us-east-2.compute.internal", "ec2.internal"},
				Nameservers: addrs("172.20.0.10")},
		},
		{
			name: "ClusterFirstWithHostNet: the node's domains after the cluster's",
			in: "nameserver 10.96.0.10\n" +
				"search kube-system.svc.cluster.local svc.cluster.local cluster.local c.my-project.internal google.internal\n" +
				"options ndots:5\n",
			want: Cluster{Domain: "cluster.local",
				Zones:       []string{"cluster.local", "c.my-project.internal", "google.internal"},
				Nameservers: addrs("10.96.0.10")},
		},
		{
			name: "custom cluster domain, upper case and final dots",
			in:   "search prod.svc.K8S.Example.COM. svc.k8s.example.com. k8s.example.com.\nnameserver 10.0.0.10\n",
			want: Cluster{Domain: "k8s.example.com", Zones: []string{"k8s.example.com"},
				Nameservers: addrs("10.0.0.10")},
		},
		{
			name:   "custom domain given by the operator",
			in:     "search a.svc.corp svc.corp corp svc.k8s.example k8s.example\nnameserver 10.0.0.10\n",
			domain: "k8s.example.",
			want: Cluster{Domain: "k8s.example", Zones: []string{"k8s.example", "svc.corp"},
				Nameservers: addrs("10.0.0.10"),
				Notes:       []string{`search domain "corp" left out: a top-level domain is not routed to the cluster resolver`}},
		},
		{
			name:   "operator's domain absent from the file",
			in:     "search a.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.0.0.10\n",
			domain: "k8s.example",
			err:    ErrNotKubelet,
		},
		{
			name: "IPv6 nameservers, dual stack and link-local with zone",
			in:   "search a.svc.cluster.local svc.cluster.local cluster.local\nnameserver fd00:10:96::a\nnameserver 10.96.0.10\nnameserver fe80::53%eth0\n",
			want: Cluster{Domain: "cluster.local", Zones: []string{"cluster.local"},
				Nameservers: addrs("fd00:10:96::a", "10.96.0.10", "fe80::53%eth0")},
		},
		{
			name: "node-local DNS cache the sidecar replaces is left out",
			in:   "search a.svc.cluster.local svc.cluster.local cluster.local\nnameserver 169.254.20.10\nnameserver 10.96.0.10\n",
			want: Cluster{Domain: "cluster.local", Zones: []string{"cluster.local"},
				Nameservers: addrs("10.96.0.10"),
				Notes:       []string{"nameserver 169.254.20.10 left out: the sidecar itself listens there"}},
		},
		{
			name: "only the sidecar's own address",
			in:   "search a.svc.cluster.local svc.cluster.local cluster.local\nnameserver 169.254.20.10\n",
			err:  ErrNoNameservers,
		},
		{
			name: "no nameserver",
			in:   "search a.svc.cluster.local svc.cluster.local cluster.local\n",
			err:  ErrNoNameservers,
		},
		{
			name: "duplicates and bad search domains",
			in:   "search svc.cluster.local cluster.local ec2.internal EC2.internal bad..example x_y.example\nnameserver 10.96.0.10\nnameserver 10.96.0.10\n",
			want: Cluster{Domain: "cluster.local", Zones: []string{"cluster.local", "ec2.internal", "x_y.example"},
				Nameservers: addrs("10.96.0.10"),
				Notes:       []string{`search domain "bad..example" left out: not a domain name`}},
		},
		{
			name: "dnsPolicy Default: the node's own file",
			in:   "search us-east-2.compute.internal\nnameserver 10.0.0.2\n",
			err:  ErrNotKubelet,
		},
		{
			name: "no search line",
			in:   "nameserver 10.96.0.10\noptions ndots:5\n",
			err:  ErrNotKubelet,
		},
		{
			name: "svc alone is not a pattern",
			in:   "search svc svc.\nnameserver 10.96.0.10\n",
			err:  ErrNotKubelet,
		},
		{name: "empty", err: ErrNotKubelet},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Detect(Parse([]byte(tt.in)), DetectOptions{Domain: tt.domain, Own: own})
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Detect error %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Domain != tt.want.Domain || !slices.Equal(got.Zones, tt.want.Zones) ||
				!slices.Equal(got.Nameservers, tt.want.Nameservers) || !slices.Equal(got.Notes, tt.want.Notes) {
				t.Errorf("Detect =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}
