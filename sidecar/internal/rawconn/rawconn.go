// Package rawconn holds the sidecar's low-level socket I/O, cheaper for a
// relay than the standard library's: raw system calls for TCP reads and
// writes (Conn: the server's client connections, the TCP under each
// upstream TLS connection) and for UDP datagrams several per call (Batch:
// the server's listeners), and the yield that lets writes queue into one
// system call (YieldToBatch).
//
// Raw system calls. Every call goes through syscall.RawConn, whose readiness
// waiting and deadlines are the netpoller's as for any net.Conn, but the
// system calls themselves are made with RawSyscall. The sockets are
// non-blocking, so none of them waits. A regular system call tells the Go
// scheduler that the goroutine may block: its monitor thread then wakes
// every 20 us while calls are frequent, hands the P to another thread when
// a call outlasts a tick, and is woken from its deep sleep by the first call
// after idleness. On a relay that makes several calls per query that
// bookkeeping cost about a fifth of the CPU (a runtime patched to leave it
// out measured 13.6-14.4 us per query against 17.3-22.1 us). A raw call is
// plain code to the scheduler.
package rawconn

import (
	"net/netip"
	"runtime"
)

// YieldToBatch lets the goroutines made runnable together with the caller
// run before it goes on, so that what they are about to write queues behind
// what the caller writes, and one system call carries it all: the TLS writer
// of an upstream connection yields before draining its queue, and the first
// UDP answer of a burst before writing the answers ready with it.
//
// This is tuned for one P, the sidecar's default (sidecar/procs.go): a batch
// of datagrams read together, or of answers read from one TLS record, makes
// its goroutines runnable together, and with one P they run back to back,
// each queueing its write, before the yielding goroutine resumes. With more
// Ps they may run elsewhere meanwhile, and the yield costs a little for
// nothing.
func YieldToBatch() { runtime.Gosched() }

// Msg is one datagram of a Batch.
type Msg struct {
	Buf  []byte         // read: room for a datagram; write: the datagram
	N    int            // read: the datagram's length
	OOB  []byte         // read: room for control messages; write: the one to send, if any
	OOBN int            // read: the control messages' length
	Addr netip.AddrPort // read: the sender; write: the destination
}
