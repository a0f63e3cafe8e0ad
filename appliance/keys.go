package appliance

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
)

// HKDF info strings for the keys the appliance derives from the key the
// KMS releases for its instance (RFC 5869, SHA-256, no salt). Separate keys
// mean the LUKS2 volume key and the node's store key never equal each
// other, and neither equals the released key.
const (
	infoVolumeKey = "fleetbox/appliance/luks2-volume-key/v1"
	infoStoreKey  = "fleetbox/appliance/node-store-key/v1"
)

// derivedKeys are the volume and store keys. Wipe them when done.
type derivedKeys struct {
	volume [32]byte
	store  [32]byte
}

func deriveKeys(released []byte) (*derivedKeys, error) {
	var k derivedKeys
	for _, d := range []struct {
		info string
		out  *[32]byte
	}{{infoVolumeKey, &k.volume}, {infoStoreKey, &k.store}} {
		b, err := hkdf.Key(sha256.New, released, nil, d.info, 32)
		if err != nil {
			return nil, fmt.Errorf("deriving keys: %w", err)
		}
		copy(d.out[:], b)
		clear(b)
	}
	return &k, nil
}

func (k *derivedKeys) wipe() {
	clear(k.volume[:])
	clear(k.store[:])
}

// newInstanceID returns a random RFC 9562 version 4 UUID in lowercase text:
// the new instance's ID, which becomes its data volume's LUKS2 UUID.
func newInstanceID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant 10
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}
