package check

import (
	"net/netip"
	"slices"
	"testing"
)

func TestParseResolvConf(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		ignored []string
	}{
		{
			name: "kubernetes pod",
			in: "search default.svc.cluster.local svc.cluster.local cluster.local\n" +
				"nameserver 10.96.0.10\noptions ndots:5\n",
			want: []string{"10.96.0.10"},
		},
		{
			name: "comments and blank lines",
			in:   "# nameserver 192.0.2.1\n; nameserver 192.0.2.2\n\n   \nnameserver 192.0.2.3 # trailing words ignored\n",
			want: []string{"192.0.2.3"},
		},
		{
			name: "dual stack with tabs",
			in:   "nameserver\t192.0.2.53\nnameserver\t2001:db8::53\n",
			want: []string{"192.0.2.53", "2001:db8::53"},
		},
		{
			name: "IPv6 link-local with zone",
			in:   "nameserver fe80::1%eth0\n",
			want: []string{"fe80::1%eth0"},
		},
		{
			name: "IPv4-mapped IPv6 is the IPv4 path",
			in:   "nameserver ::ffff:192.0.2.9\n",
			want: []string{"192.0.2.9"},
		},
		{
			name: "more than three kept",
			in:   "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3\nnameserver 192.0.2.4\n",
			want: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"},
		},
		{
			name:    "not an address",
			in:      "nameserver kube-dns.kube-system\nnameserver\nnameserver 192.0.2.1\n",
			want:    []string{"192.0.2.1"},
			ignored: []string{"kube-dns.kube-system", "nameserver"},
		},
		{
			name: "keyword must be whole",
			in:   "nameservers 192.0.2.1\nNAMESERVER 192.0.2.2\n",
		},
		{
			name: "no nameserver",
			in:   "search example.org\noptions edns0 trust-ad\n",
		},
		{
			name: "no final newline, CRLF",
			in:   "nameserver 192.0.2.1\r\nnameserver 192.0.2.2",
			want: []string{"192.0.2.1", "192.0.2.2"},
		},
		{name: "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := ParseResolvConf([]byte(tt.in))
			var got []string
			for _, a := range rc.Nameservers {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("nameservers = %q, want %q", got, tt.want)
			}
			if !slices.Equal(rc.Ignored, tt.ignored) {
				t.Errorf("ignored = %q, want %q", rc.Ignored, tt.ignored)
			}
		})
	}
}

func FuzzParseResolvConf(f *testing.F) {
	f.Add([]byte("nameserver 192.0.2.1\nnameserver fe80::1%eth0\n# c\noptions ndots:5\n"))
	f.Add([]byte("nameserver\n\x00nameserver ::1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rc := ParseResolvConf(b)
		for _, a := range rc.Nameservers {
			if !a.IsValid() || a.Is4In6() {
				t.Fatalf("invalid nameserver %v from %q", a, b)
			}
			if _, err := netip.ParseAddr(a.String()); err != nil {
				t.Fatalf("nameserver %v does not round-trip: %v", a, err)
			}
		}
	})
}
