package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
)

// An upload is copied to every replica as soon as it is recorded, so an
// image still starts when the replica that took the upload is down (the
// chaos suite found a new instance of an uploaded image could not start
// while that replica was away).
func TestUploadsAreCopiedToEveryReplica(t *testing.T) {
	endpoints, secretsKey := sharedEtcd(t)
	start := func(name string) *testReplica { return startReplica(t, endpoints, secretsKey, name, time.Second) }
	one, two := start("one"), start("two")
	data := buildImage(t, "berth.local/copied:v1", "copied")
	resp := mustUpload(t, pb.NewBerthClient(adminConn(t, one.srv)), data)
	digest := resp.GetDigest()
	if digest == "" {
		digest = sha256Of(data)
	}
	// The copy lands in the other replica's image directory, whole.
	path := filepath.Join(two.dataDir, "images", "sha256-"+strings.TrimPrefix(digest, "sha256:")+".tar")
	eventually(t, "the upload copied to replica two", func() (bool, string) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, err.Error()
		}
		sum := sha256.Sum256(b)
		return "sha256:"+hex.EncodeToString(sum[:]) == digest, fmt.Sprintf("%d bytes", len(b))
	})
	// Removed through the replica that took it, the upload leaves no copy
	// on the other (the sweep spares files younger than an hour, which may
	// be uploads not yet recorded: this copy is made older).
	extra := mustUpload(t, pb.NewBerthClient(adminConn(t, one.srv)), buildImage(t, "berth.local/removed:v1", "removed"))
	extraDigest := extra.GetDigest()
	extraPath := filepath.Join(two.dataDir, "images", "sha256-"+strings.TrimPrefix(extraDigest, "sha256:")+".tar")
	eventually(t, "the second upload copied to replica two", func() (bool, string) {
		_, err := os.Stat(extraPath)
		return err == nil, fmt.Sprint(err)
	})
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(extraPath, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := pb.NewBerthClient(adminConn(t, one.srv)).RemoveImage(context.Background(), &pb.RemoveImageRequest{Image: extraDigest}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica two's copy of the removed upload gone", func() (bool, string) {
		_, err := os.Stat(extraPath)
		return os.IsNotExist(err), fmt.Sprint(err)
	})
	// With the receiving replica gone, the other still lists and holds it.
	one.stop()
	l, err := pb.NewBerthClient(adminConn(t, two.srv)).ListImages(context.Background(), &pb.ListImagesRequest{})
	if err != nil || len(l.GetImages()) != 1 {
		t.Fatalf("images on replica two with one down: %v %v", l, err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}
