// Package manifests owns Berth's manifest format: it reads YAML or JSON
// manifests (apiVersion berth.dev/v1), decodes them strictly into the api
// types, fills in defaults and validates them, reporting every problem with
// its file, document number and field path.
//
// It is pure apart from Load's file reading: it must not talk to the
// control plane, etcd or the network, and it must not accept anything
// partially: on any error the caller gets no objects at all. Checks that
// need other objects (a route host claimed by two services, a name already
// taken in the cluster) belong to the API server, which calls Validate too.
//
// Adding a kind is one case in decodeDocument plus its defaults and
// validation; adding a field to an api type needs no change to the decoder,
// which walks the api structs' json tags.
package manifests
