// Package secrets seals Secret values for etcd: AES-256-GCM under a key
// kept in a file on the control plane's disk (not in etcd), each value
// bound to its secret's name so a sealed value cannot be moved to another
// secret. Anyone who can read etcd sees names and keys, never values.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
)

// Box seals and opens secret values with one key.
type Box struct {
	aead cipher.AEAD
	mac  []byte
	// ID names the key (not secret: a hash of it), so a value sealed under
	// another key is reported as such.
	ID string
}

// keySize is AES-256's.
const keySize = 32

// LoadOrCreate reads the key in path, creating it (mode 0600, in a 0700
// directory) when there is none.
func LoadOrCreate(path string) (*Box, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, keySize)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("secrets: key directory: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			return LoadOrCreate(path) // another process made it first
		}
		if err != nil {
			return nil, fmt.Errorf("secrets: create key: %w", err)
		}
		_, werr := f.Write(key)
		if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
			return nil, fmt.Errorf("secrets: write key %s: %w", path, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("secrets: read key: %w", err)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secrets: key %s is readable by others (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	return New(key)
}

// New returns a Box for a 32-byte key.
func New(key []byte) (*Box, error) {
	if len(key) != keySize {
		return nil, fmt.Errorf("secrets: key is %d bytes, want %d", len(key), keySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	// Separate keys for sealing and for the change digest.
	derive := func(label string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(label))
		return h.Sum(nil)
	}
	return &Box{aead: aead, mac: derive("berth secret digest"), ID: hex.EncodeToString(derive("berth secret key id")[:6])}, nil
}

// Sealed is a secret's values as stored.
type Sealed struct {
	// Keys are the secret's keys, sorted (not secret: shown by ls).
	Keys []string
	// Digest changes when and only when the values change (an HMAC: it
	// says nothing about them to whoever lacks the key).
	Digest string
	// KeyID names the key that sealed it.
	KeyID string
	// Box is nonce || ciphertext.
	Box []byte
}

// Seal encrypts data for the secret named name ("<ns>/<name>").
func (b *Box) Seal(name string, data map[string][]byte) (Sealed, error) {
	plain, err := json.Marshal(data) // sorted keys: a stable digest
	if err != nil {
		return Sealed{}, err
	}
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return Sealed{}, err
	}
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := hmac.New(sha256.New, b.mac)
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write(plain)
	return Sealed{
		Keys:   keys,
		Digest: hex.EncodeToString(h.Sum(nil)[:16]),
		KeyID:  b.ID,
		Box:    b.aead.Seal(slices.Clip(nonce), nonce, plain, []byte(name)),
	}, nil
}

// Open decrypts what Seal made for the secret named name.
func (b *Box) Open(name string, s Sealed) (map[string][]byte, error) {
	if s.KeyID != "" && s.KeyID != b.ID {
		return nil, fmt.Errorf("secret %s was sealed with key %s, this control plane has key %s: give every replica the same --secrets-key-file", name, s.KeyID, b.ID)
	}
	n := b.aead.NonceSize()
	if len(s.Box) < n {
		return nil, fmt.Errorf("secret %s: sealed value is truncated", name)
	}
	plain, err := b.aead.Open(nil, s.Box[:n], s.Box[n:], []byte(name))
	if err != nil {
		return nil, fmt.Errorf("secret %s: sealed value does not open (tampered with, or moved from another secret)", name)
	}
	var data map[string][]byte
	if err := json.Unmarshal(plain, &data); err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	return data, nil
}

// caKeyName is what the cluster CA's private key is sealed under.
const caKeyName = "berth/cluster-ca-key"

// SealKey seals the cluster CA's private key for etcd.
func (b *Box) SealKey(keyPEM []byte) (json.RawMessage, error) {
	sealed, err := b.Seal(caKeyName, map[string][]byte{"key": keyPEM})
	if err != nil {
		return nil, err
	}
	return json.Marshal(sealed)
}

// OpenKey opens what SealKey made.
func (b *Box) OpenKey(raw json.RawMessage) ([]byte, error) {
	var sealed Sealed
	if err := json.Unmarshal(raw, &sealed); err != nil {
		return nil, err
	}
	data, err := b.Open(caKeyName, sealed)
	if err != nil {
		return nil, err
	}
	return data["key"], nil
}
