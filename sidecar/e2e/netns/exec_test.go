package netns

import (
	"context"

	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

// Fixed project facts: the UIDs of the sidecar, of the check init container
// and of the example applications.
const (
	sidecarUID = 10053
	checkUID   = 10054
	appUID     = 10100
	rootUID    = 0
)

// as is the argv prefix that runs a command as uid: nothing for root,
// netnstest.AsUser otherwise (that UID, no capabilities).
func as(uid int) []string {
	if uid == rootUID {
		return nil
	}
	return netnstest.AsUser(uid)
}

// run runs argv in ns as uid, with env on top of the namespace's clean
// environment.
func run(ns *netnstest.Netns, uid int, env []string, argv ...string) netnstest.Result {
	return ns.Run(env, append(as(uid), argv...)...)
}

// start launches argv in ns as uid, as a process stopped when the test ends.
func start(t testing.TB, ns *netnstest.Netns, name string, uid int, env []string, argv ...string) *testkit.Process {
	t.Helper()
	cmd := ns.Command(context.Background(), append(as(uid), argv...)...)
	cmd.Env = append(cmd.Env, env...)
	return testkit.StartProcess(t, name, cmd)
}
