// Package testkit is the project's test kit: what a test does when the
// machine lacks something it needs, and the helpers every kind of test shares.
//
// On a developer's machine with only Go, tests that need a tool, root or a
// file skip and say what is missing; under CI (CI=true) the same lack is a
// failure, never a skip, because .ci/run installs everything the suite needs.
// A package whose TestMain is testkit.Main ends with one line naming what it
// skipped and why, so that a plain `go test ./...` shows the gaps.
//
// The kit, one package per kind of helper:
//
//	testkit              skip-or-fail rules (RequireTools, RequireRoot, Missing),
//	                     Main (skip summary, AtExit, checks after the tests),
//	                     WaitFor (wait on a condition, never sleep),
//	                     StartProcess (a program the test starts and ends),
//	                     RepoRoot, PeakRSS, ProcSize and OpenFDs (a process
//	                     seen from /proc)
//	testkit/dnstest      scriptable in-process DNS-over-TLS server (loopback)
//	testkit/unboundtest  a real Unbound serving DoT from local data, one per
//	                     test or one a package shares (Shared), with its
//	                     query log (Queries)
//	testkit/corednstest  a real CoreDNS as a cluster's DNS (Services, PTRs,
//	                     SOA) over plain DNS and DoT, built once per machine
//	                     from the Go module proxy with only the plugins the
//	                     tests use, with its query log
//	testkit/testpki      certificate authorities and certificates made at run time
//	testkit/netnstest    network namespaces: make them, join them with veth
//	                     pairs, run commands, processes and Go functions inside
//	testkit/bintest      the dot-sidecar binary: the release build (the
//	                     Dockerfile's), built once per test package, and started
//	                     as an operator would
//	testkit/imagetest    the files that make the image, read as the builder
//	                     reads them (Dockerfile stages, where files land)
//	testkit/podmantest   the image itself: podman with a configuration and
//	                     store of its own, base images made with debootstrap,
//	                     the Dockerfile built, containers run as a pod's
//
// Production code never imports the kit; the load harness (sidecar/bench), a
// program of its own, may.
package testkit
