package store

import (
	"fmt"
	"strings"
	"time"
)

// The etcd key layout: every prefix Berth writes, and the functions that
// build keys under them. Nothing outside this package builds a key.

// Key prefixes.
const (
	Root            = "/berth/"
	ServicesPrefix  = "/berth/services/"
	RevisionsPrefix = "/berth/revisions/"
	InstancesPrefix = "/berth/instances/"
	StatusPrefix    = "/berth/status/"
	NodesPrefix     = "/berth/nodes/"
	LeasesPrefix    = "/berth/leases/nodes/"
	ImagesPrefix    = "/berth/images/"
	// ImageRefsPrefix maps each image reference (tag) to the digest of
	// the upload it names: one upload per tag.
	ImageRefsPrefix = "/berth/image-refs/"
	EventsPrefix    = "/berth/events/"
	ElectionsPrefix = "/berth/election/"
	// ElectionPrefix is where control plane replicas campaign for the
	// lead (etcd's concurrency.Election).
	ElectionPrefix = ElectionsPrefix + "controllers"
	// RolloutsPrefix holds each service's rollout state.
	RolloutsPrefix = "/berth/rollouts/"
	// SubnetsPrefix records which node holds each pod subnet.
	SubnetsPrefix = "/berth/subnets/"
	VolumesPrefix = "/berth/volumes/"
	// GatewaysPrefix holds, per control plane replica, the xDS clients
	// connected to it (under the replica's lease).
	GatewaysPrefix = "/berth/gateways/"
	// DNSVersionsPrefix holds, per control plane replica, the snapshot
	// version each node it hears runs its DNS from (one key per replica,
	// on its session lease: not one write per node and snapshot).
	DNSVersionsPrefix = "/berth/dns-versions/"
)

func serviceKey(ns, name string) string { return ServicesPrefix + ns + "/" + name }

func revisionKey(ns, name string, n int64) string {
	return fmt.Sprintf("%s%s/%s/%010d", RevisionsPrefix, ns, name, n)
}

func instanceKey(id string) string { return InstancesPrefix + id }

func statusKey(id string) string { return StatusPrefix + id }

func volumeKey(ns, name string) string {
	return VolumesPrefix + ns + "/" + name
}

func nodeKey(name string) string { return NodesPrefix + name }

func leaseKey(name string) string { return LeasesPrefix + name }

// Keys outside Root: the watch-fed cache never holds them and they wake
// no controller.
const (
	// SecretsPrefix holds sealed Secrets, "<ns>/<name>".
	SecretsPrefix = "/berth-secrets/"
	// AuthRoot holds who may do what: it changes rarely and is read on
	// every call.
	AuthRoot = "/berth-auth/"
	// CAKey holds the cluster CA: its certificate, and its key sealed
	// with the secrets key.
	CAKey = "/berth-auth/ca"
	// TokensPrefix holds API and join tokens by id: their role, scope,
	// expiry and uses, and the SHA-256 of the secret (never the secret).
	TokensPrefix = "/berth-auth/tokens/"
	// IdentitiesPrefix holds, per "<role>/<name>" a certificate was issued
	// to, its generation and whether it is revoked.
	IdentitiesPrefix = "/berth-auth/identities/"
	// LoadsPrefix holds one key per control plane replica: the load its
	// gateways reported (loadshare).
	LoadsPrefix = "/berth-loads/"
)

func rolloutKey(ns, name string) string { return RolloutsPrefix + ns + "/" + name }
func secretKey(ns, name string) string  { return SecretsPrefix + ns + "/" + name }
func gatewaysKey(replica string) string { return GatewaysPrefix + replica }
func imageRefKey(ref string) string     { return ImageRefsPrefix + ref }
func tokenKey(id string) string         { return TokensPrefix + id }
func identityKey(role, name string) string {
	return IdentitiesPrefix + role + "/" + name
}
func imageKey(digest string) string { return ImagesPrefix + digest }

// subnetKey: a pod subnet's claim ("10.213.3.0/24" as 10.213.3.0_24).
func subnetKey(cidr string) string { return SubnetsPrefix + strings.ReplaceAll(cidr, "/", "_") }

// eventKey orders events by time: "<unixnano, 20 digits>-<seq>".
func eventKey(at time.Time, seq uint64) string {
	return fmt.Sprintf("%s%020d-%06d", EventsPrefix, at.UnixNano(), seq%1e6)
}

// eventKeyBefore sorts before every event at or after t.
func eventKeyBefore(t time.Time) string { return fmt.Sprintf("%s%020d", EventsPrefix, t.UnixNano()) }

// Keys outside Root for records the controllers never read.
const (
	// RoutesPrefix holds one claim per route host and path prefix,
	// "<host>/<path>": the service that owns it. The oldest claim wins;
	// an apply claiming a route another service owns is refused.
	RoutesPrefix = "/berth-routes/"
	// LastRevisionPrefix keeps, for a service deleted with its history,
	// the last revision number it had: a re-created service goes on from
	// there, so an old instance still draining never shares a revision
	// number with new content.
	LastRevisionPrefix = "/berth-last-revision/"
)

func routeKey(host, path string) string { return RoutesPrefix + host + "/" + path }

func lastRevisionKey(ns, name string) string { return LastRevisionPrefix + ns + "/" + name }
