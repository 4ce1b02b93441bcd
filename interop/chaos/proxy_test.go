//go:build chaos

package chaos_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// latencyProxy forwards TCP connections to target, delaying every chunk
// the database sends back by the current latency: a slow database, as
// serve sees one, without touching PostgreSQL. serve always reaches the
// database through it.
type latencyProxy struct {
	listener net.Listener
	target   string
	latency  atomic.Int64 // time.Duration

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *latencyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &latencyProxy{listener: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *latencyProxy) addr() string { return p.listener.Addr().String() }

func (p *latencyProxy) setLatency(d time.Duration) { p.latency.Store(int64(d)) }

func (p *latencyProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.listener.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.forward(client)
	}
}

// track records conn so that close can end it; it reports false once the
// proxy is closing.
func (p *latencyProxy) track(conn net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[conn] = struct{}{}
	return true
}

func (p *latencyProxy) forward(client net.Conn) {
	defer p.wg.Done()
	// A database that is down refuses the proxy, and so serve.
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil || !p.track(client) || !p.track(server) {
		client.Close()
		if server != nil {
			server.Close()
		}
		return
	}
	var both sync.WaitGroup
	both.Add(2)
	pipe := func(dst, src net.Conn, delayed bool) {
		defer both.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if d := time.Duration(p.latency.Load()); delayed && d > 0 {
					time.Sleep(d)
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		// Either side ending ends the connection on both.
		client.Close()
		server.Close()
	}
	go pipe(server, client, false)
	go pipe(client, server, true)
	both.Wait()
	p.mu.Lock()
	if p.conns != nil {
		delete(p.conns, client)
		delete(p.conns, server)
	}
	p.mu.Unlock()
}

func (p *latencyProxy) close() {
	p.listener.Close()
	p.mu.Lock()
	for conn := range p.conns {
		conn.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
