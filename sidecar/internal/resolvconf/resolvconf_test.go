package resolvconf

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		ignored []string
		search  []string
		options []string
		ndots   int
	}{
		{
			name: "kubernetes pod",
			in: "search default.svc.cluster.local svc.cluster.local cluster.local\n" +
				"nameserver 10.96.0.10\noptions ndots:5\n",
			want:    []string{"10.96.0.10"},
			search:  []string{"default.svc.cluster.local", "svc.cluster.local", "cluster.local"},
			options: []string{"ndots:5"},
			ndots:   5,
		},
		{
			name:  "comments and blank lines",
			in:    "# nameserver 192.0.2.1\n; nameserver 192.0.2.2\n\n   \nnameserver 192.0.2.3 # trailing words ignored\n# search a.example\n",
			want:  []string{"192.0.2.3"},
			ndots: 1,
		},
		{
			name:  "dual stack with tabs",
			in:    "nameserver\t192.0.2.53\nnameserver\t2001:db8::53\n",
			want:  []string{"192.0.2.53", "2001:db8::53"},
			ndots: 1,
		},
		{
			name:  "IPv6 link-local with zone",
			in:    "nameserver fe80::1%eth0\n",
			want:  []string{"fe80::1%eth0"},
			ndots: 1,
		},
		{
			name:  "IPv4-mapped IPv6 is the IPv4 path",
			in:    "nameserver ::ffff:192.0.2.9\n",
			want:  []string{"192.0.2.9"},
			ndots: 1,
		},
		{
			name:  "more than three kept",
			in:    "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3\nnameserver 192.0.2.4\n",
			want:  []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"},
			ndots: 1,
		},
		{
			name:    "not an address",
			in:      "nameserver kube-dns.kube-system\nnameserver\nnameserver 192.0.2.1\n",
			want:    []string{"192.0.2.1"},
			ignored: []string{"kube-dns.kube-system", "nameserver"},
			ndots:   1,
		},
		{
			name:  "keyword must be whole",
			in:    "nameservers 192.0.2.1\nNAMESERVER 192.0.2.2\nsearches a.example\n",
			ndots: 1,
		},
		{
			name:    "no nameserver",
			in:      "search example.org\noptions edns0 trust-ad\n",
			search:  []string{"example.org"},
			options: []string{"edns0", "trust-ad"},
			ndots:   1,
		},
		{
			name:  "no final newline, CRLF",
			in:    "nameserver 192.0.2.1\r\nnameserver 192.0.2.2",
			want:  []string{"192.0.2.1", "192.0.2.2"},
			ndots: 1,
		},
		{
			name:   "the last search or domain line wins, as in glibc",
			in:     "search a.example b.example\ndomain c.example d.example\n",
			search: []string{"c.example"},
			ndots:  1,
		},
		{
			name:   "search after domain",
			in:     "domain c.example\nsearch A.Example. b.example .\n",
			search: []string{"a.example", "b.example"},
			ndots:  1,
		},
		{
			name:   "the root however spelt is left out; other empty labels are Detect's to judge",
			in:     "search .. a.example ... b..example C.example..\n",
			search: []string{"a.example", "b..example", "c.example."},
			ndots:  1,
		},
		{
			name:    "several options lines, last ndots wins, capped at 15",
			in:      "options ndots:2 timeout:1\noptions ndots:30\n",
			options: []string{"ndots:2", "timeout:1", "ndots:30"},
			ndots:   15,
		},
		{
			name:    "bad ndots ignored",
			in:      "options ndots:x ndots:-1\n",
			options: []string{"ndots:x", "ndots:-1"},
			ndots:   1,
		},
		{name: "empty", ndots: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Parse([]byte(tt.in))
			var got []string
			for _, a := range c.Nameservers {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("nameservers = %q, want %q", got, tt.want)
			}
			if !slices.Equal(c.Ignored, tt.ignored) {
				t.Errorf("ignored = %q, want %q", c.Ignored, tt.ignored)
			}
			if !slices.Equal(c.Search, tt.search) {
				t.Errorf("search = %q, want %q", c.Search, tt.search)
			}
			if !slices.Equal(c.Options, tt.options) {
				t.Errorf("options = %q, want %q", c.Options, tt.options)
			}
			if got := c.Ndots(); got != tt.ndots {
				t.Errorf("ndots = %d, want %d", got, tt.ndots)
			}
		})
	}
}

func TestRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte("nameserver 192.0.2.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Read(p)
	if err != nil || len(c.Nameservers) != 1 {
		t.Fatalf("Read = %+v, %v", c, err)
	}
	if _, err := Read(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("Read of a missing file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("nameserver 192.0.2.1\nnameserver fe80::1%eth0\n# c\noptions ndots:5\n"))
	f.Add([]byte("nameserver\n\x00nameserver ::1"))
	f.Add([]byte("search ns.svc.cluster.local svc.cluster.local cluster.local ec2.internal\ndomain x\noptions ndots:5 edns0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Parse(b)
		for _, a := range c.Nameservers {
			if !a.IsValid() || a.Is4In6() {
				t.Fatalf("invalid nameserver %v from %q", a, b)
			}
			if _, err := netip.ParseAddr(a.String()); err != nil {
				t.Fatalf("nameserver %v does not round-trip: %v", a, err)
			}
		}
		for _, s := range c.Search {
			// The root is left out however it is spelt; a word with an
			// empty label elsewhere stays, for Detect to judge (below).
			if strings.Trim(s, ".") == "" || s != strings.ToLower(s) || strings.ContainsAny(s, " \t\n") {
				t.Fatalf("search domain %q not normalised, from %q", s, b)
			}
		}
		if n := c.Ndots(); n < 0 || n > 15 {
			t.Fatalf("ndots %d", n)
		}
		// Whatever the file, Detect neither panics nor routes a name that
		// is not a domain of at least two labels besides the cluster's.
		cl, err := Detect(c, DetectOptions{})
		if err != nil {
			return
		}
		if len(cl.Nameservers) == 0 || len(cl.Zones) == 0 || cl.Zones[0] != cl.Domain {
			t.Fatalf("Detect = %+v without error, from %q", cl, b)
		}
		for _, z := range cl.Zones[1:] {
			if !validZone(z) || !strings.Contains(z, ".") {
				t.Fatalf("zone %q routed, from %q", z, b)
			}
		}
	})
}
