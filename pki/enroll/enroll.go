// Package enroll gets a part (a node agent, a gateway) its certificate
// and keeps it fresh: load it from the part's credentials directory, or
// join with a join token, checking the control plane against the pinned
// CA hash before anything is sent; then renew it over the part's own
// connection before it expires.
package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/pki"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Options say who the part is and how it joins.
type Options struct {
	// Server is the control plane's API address(es).
	Server string
	Role   pki.Role
	Name   string
	// Dir keeps ca.crt, tls.crt and tls.key ("" keeps them in memory).
	Dir string
	// JoinToken and CAHash are needed only when Dir holds no credentials.
	JoinToken string
	CAHash    string
	Logger    *slog.Logger
}

// Credentials are a part's certificate, key and cluster CA.
type Credentials struct {
	KeyPair *pki.KeyPair
	CAPEM   []byte
	Pool    *x509.CertPool
	files   *pki.Files
}

// FromPEM makes credentials from PEM (a part issued its certificate in
// process, like `berth dev`'s agent and gateway).
func FromPEM(caPEM, certPEM, keyPEM []byte) (*Credentials, error) {
	kp, err := pki.NewKeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	pool, err := pki.PoolFromPEM(caPEM)
	if err != nil {
		return nil, err
	}
	return &Credentials{KeyPair: kp, CAPEM: caPEM, Pool: pool}, nil
}

// ClientTLS is the configuration to dial the control plane with.
func (c *Credentials) ClientTLS() *tls.Config { return pki.ClientTLS(c.KeyPair, c.Pool) }

// Identity is the identity the current certificate names.
func (c *Credentials) Identity() (pki.Identity, error) { return pki.IdentityOf(c.KeyPair.Leaf()) }

// Load returns the part's credentials from opts.Dir, or joins.
func Load(ctx context.Context, opts Options) (*Credentials, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	var files *pki.Files
	if opts.Dir != "" {
		files = &pki.Files{Dir: opts.Dir}
		caPEM, certPEM, keyPEM, ok, err := files.Load()
		if err != nil {
			return nil, err
		}
		if ok {
			c, err := FromPEM(caPEM, certPEM, keyPEM)
			if err != nil {
				return nil, fmt.Errorf("enroll: credentials in %s: %w", opts.Dir, err)
			}
			id, err := c.Identity()
			if err != nil {
				return nil, fmt.Errorf("enroll: credentials in %s: %w", opts.Dir, err)
			}
			if id.Role != opts.Role || id.Name != opts.Name {
				return nil, fmt.Errorf("enroll: the certificate in %s is %s's, not %s/%s's: use another directory or remove it to join again", opts.Dir, id, opts.Role, opts.Name)
			}
			if ca, err := pki.ParseCert(caPEM); err == nil && opts.CAHash != "" && pki.PinOf(ca) != opts.CAHash {
				if opts.JoinToken == "" {
					return nil, fmt.Errorf("enroll: the CA in %s does not match --ca-hash %s", opts.Dir, opts.CAHash)
				}
				// A new cluster (another CA) and a token for it: join it.
				opts.Logger.Warn("enroll: the certificate on disk is from another cluster CA; joining the one --ca-hash names", "dir", opts.Dir)
				return join(ctx, opts, files)
			}
			if time.Now().After(c.KeyPair.Leaf().NotAfter) {
				return nil, fmt.Errorf("enroll: the certificate in %s expired at %s: remove the directory and join again with a new token", opts.Dir, c.KeyPair.Leaf().NotAfter.Format(time.RFC3339))
			}
			c.files = files
			return c, nil
		}
	}
	return join(ctx, opts, files)
}

// join joins and keeps the credentials in files (if any).
func join(ctx context.Context, opts Options, files *pki.Files) (*Credentials, error) {
	c, err := Join(ctx, opts)
	if err != nil {
		return nil, err
	}
	if files != nil {
		if err := files.Save(c.CAPEM, pki.PEMCert(c.KeyPair.Certificate().Certificate[0]), pki.PEMKey(c.KeyPair.Certificate().PrivateKey)); err != nil {
			return nil, err
		}
		c.files = files
	}
	return c, nil
}

// Join exchanges opts.JoinToken for a certificate. The control plane must
// present a chain whose CA has the pin opts.CAHash: a part never sends its
// token to a server it has not authenticated.
func Join(ctx context.Context, opts Options) (*Credentials, error) {
	if opts.JoinToken == "" || opts.CAHash == "" {
		return nil, fmt.Errorf("enroll: %s %s has no certificate yet: join with --join-token and --ca-hash (from `berth token create --role %s` on the server)", opts.Role, opts.Name, opts.Role)
	}
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.NewCSR(key, opts.Name)
	if err != nil {
		return nil, err
	}
	conn, err := pb.Dial(opts.Server, pki.PinnedTLS(opts.CAHash, nil))
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	defer conn.Close()
	var resp *pb.CertificateResponse
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err = pb.NewBerthClient(conn).Join(actx, &pb.JoinRequest{Token: opts.JoinToken, Role: string(opts.Role), Name: opts.Name, Csr: csr})
		cancel()
		if err == nil || attempt >= 20 || !retryable(err) || ctx.Err() != nil {
			break
		}
		opts.Logger.Warn("join: control plane not reachable yet; retrying", "server", opts.Server, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("enroll: join %s as %s %s: %w", opts.Server, opts.Role, opts.Name, err)
	}
	ca, err := pki.ParseCert(resp.Ca)
	if err != nil || pki.PinOf(ca) != opts.CAHash {
		return nil, errors.New("enroll: the control plane answered with a CA that is not the pinned one")
	}
	c, err := FromPEM(resp.Ca, resp.Certificate, keyPEM)
	if err != nil {
		return nil, err
	}
	opts.Logger.Info("joined the cluster", "role", opts.Role, "name", opts.Name, "expires", c.KeyPair.Leaf().NotAfter)
	return c, nil
}

func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// KeepRenewed renews the certificate over conn (a connection that
// presents it) before it expires, until ctx ends, saving each new one.
func (c *Credentials) KeepRenewed(ctx context.Context, conn grpc.ClientConnInterface, logger *slog.Logger) error {
	client := pb.NewBerthClient(conn)
	renew := func(ctx context.Context, csr []byte) ([]byte, error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		resp, err := client.RenewCertificate(rctx, &pb.RenewCertificateRequest{Csr: csr})
		if err != nil {
			return nil, err
		}
		return resp.Certificate, nil
	}
	var save func(certPEM, keyPEM []byte) error
	if c.files != nil {
		save = func(certPEM, keyPEM []byte) error { return c.files.Save(c.CAPEM, certPEM, keyPEM) }
	}
	return pki.KeepRenewed(ctx, c.KeyPair, renew, save, logger)
}
