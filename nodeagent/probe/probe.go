// Package probe checks whether a container is ready to serve: an HTTP GET
// that answers 2xx/3xx, or a TCP port that accepts a connection. It only
// probes; deciding what readiness means for traffic is the control
// plane's business.
package probe

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/berth-dev/berth/api"
)

// Prober runs probes. Its HTTP client keeps no connections alive: each
// probe is a fresh connection, as a new client would see the container.
type Prober struct {
	client *http.Client
}

// New returns a prober.
func New() *Prober {
	return &Prober{client: &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}}
}

// Check runs h against ip once. A nil h means "ready when running": it
// returns nil.
func (p *Prober) Check(ctx context.Context, ip string, h *api.Health) error {
	if h == nil {
		return nil
	}
	timeout := h.Timeout.Duration
	if timeout <= 0 {
		timeout = time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case h.HTTP != nil:
		url := "http://" + net.JoinHostPort(ip, strconv.Itoa(int(h.HTTP.Port))) + h.HTTP.Path
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("probe %s: %w", url, err)
		}
		req.Header.Set("User-Agent", "berth-probe/1")
		resp, err := p.client.Do(req)
		if err != nil {
			return fmt.Errorf("probe %s: %w", url, err)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("probe %s: status %d", url, resp.StatusCode)
		}
		return nil
	case h.TCP != nil:
		addr := net.JoinHostPort(ip, strconv.Itoa(int(h.TCP.Port)))
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("probe tcp %s: %w", addr, err)
		}
		c.Close()
		return nil
	}
	return nil
}

// Interval returns the probe period of h (default 10s).
func Interval(h *api.Health) time.Duration {
	if h == nil || h.Interval.Duration <= 0 {
		return 10 * time.Second
	}
	return h.Interval.Duration
}
