package server

import (
	"encoding/binary"
	"time"
)

// Answers to a TCP client are queued on its connection and written out by
// whichever goroutine finds no write in progress; the others leave theirs
// in the queue and go. No goroutine waits on another's write, so a client
// that does not read holds no query slot, only the bytes of its unsent
// answers, and those are bounded by Options.TCPMaxUnread:
//
//   - while that many bytes are unsent (the kernel's socket buffers being
//     full already), the server reads no more queries from the connection;
//   - an answer that comes while they still are (one of the queries
//     already in flight) finds a client that has stopped reading: the
//     connection is closed, and its unsent answers with it.
//
// A connection's unsent answers thus never exceed TCPMaxUnread plus one
// answer (64 KiB at most).

// send queues reply for the client and, unless a write is in progress,
// writes the queue out, until it is empty or the connection breaks.
func (c *tcpConn) send(reply []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken {
		return
	}
	if c.unsent >= c.s.opts.TCPMaxUnread {
		c.s.m.unreadClosed.Inc()
		c.breakLocked("the client leaves its answers unread", nil)
		return
	}
	c.out = binary.BigEndian.AppendUint16(c.out, uint16(len(reply)))
	c.out = append(c.out, reply...)
	c.unsent += 2 + len(reply)
	if c.writing {
		return
	}
	c.writing = true
	for len(c.out) > 0 && !c.broken {
		buf := c.out
		c.out = c.spare[:0]
		c.wmu.Unlock()
		err := c.write(buf)
		c.wmu.Lock()
		c.unsent -= len(buf)
		if c.unsent < c.s.opts.TCPMaxUnread {
			c.signalRoom()
		}
		if err != nil {
			c.breakLocked("writing a TCP answer failed", err)
		}
		c.spare = nil
		if cap(buf) <= maxPooledSize {
			c.spare = buf
		}
	}
	c.writing = false
}

// write writes b, with a deadline: a client that does not read its answers
// is idle too.
func (c *tcpConn) write(b []byte) error {
	dl := time.Now().Add(c.s.opts.TCPIdleTimeout).UnixNano()
	_ = c.nc.SetWriteDeadline(time.Unix(0, dl))
	// Checked after setting ours: a cutoff stored later is applied by
	// cutWrites after this, so the earlier deadline always wins.
	if co := c.s.writeCutoff.Load(); co != 0 && co < dl {
		_ = c.nc.SetWriteDeadline(time.Unix(0, co))
	}
	_, err := c.rw.Write(b)
	return err
}

// breakLocked closes the connection, dropping its unsent answers; the
// reader wakes and ends it. Called with wmu held.
func (c *tcpConn) breakLocked(why string, err error) {
	c.broken = true
	c.unsent -= len(c.out)
	c.out = nil
	c.s.log.Debug("closing a TCP connection", "client", c.from, "reason", why, "err", err)
	_ = c.nc.Close() // wakes the reader
	c.signalRoom()
}

func (c *tcpConn) signalRoom() {
	select {
	case c.room <- struct{}{}:
	default:
	}
}

// waitRoom holds the reader while TCPMaxUnread bytes of answers are unsent.
// It reports false when the connection broke or the server is shutting
// down meanwhile.
func (c *tcpConn) waitRoom() bool {
	for {
		c.wmu.Lock()
		full, broken := c.unsent >= c.s.opts.TCPMaxUnread, c.broken
		c.wmu.Unlock()
		switch {
		case broken:
			return false
		case !full:
			return true
		}
		select {
		case <-c.room:
		case <-c.s.quit:
			return false
		}
	}
}
