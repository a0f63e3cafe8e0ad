package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"

	"github.com/fleetbox/fleetbox/internal/atomicfile"
	"github.com/fleetbox/fleetbox/internal/strictjson"
)

// A witness is the newest signed head, kept where whoever can replace the
// database cannot: another volume, another machine's mount. The log never
// answers a caller before the witness holds the head of that answer, so a
// log that ends below the witness, or whose record at the witness's
// sequence number hashes otherwise, has lost records: a restored older
// kms.db, or a damaged bbolt meta page that made bbolt fall back to the
// previous transaction. Both look like a valid, shorter log from inside.

// maxWitnessSize bounds the witness file.
const maxWitnessSize = 4096

// writeWitness replaces the witness file atomically (internal/atomicfile)
// and durably: the directory is synced too, so that after a crash the
// witness is never older than a head a caller was told.
func writeWitness(path string, sh SignedHead) error {
	b, err := json.Marshal(sh)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o600); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ReadWitness reads a witness file (a signed head), or a head saved from
// GET /audit, and checks its signature with pub.
func ReadWitness(path string, pub []byte) (Head, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Head{}, err
	}
	if len(b) > maxWitnessSize {
		return Head{}, fmt.Errorf("%w: witness %s is %d bytes, over %d", ErrHead, path, len(b), maxWitnessSize)
	}
	var sh SignedHead
	if err := strictjson.Unmarshal(b, &sh); err != nil {
		return Head{}, fmt.Errorf("%w: witness %s: %v", ErrHead, path, err)
	}
	return sh.verify(pub)
}

// checkWitness compares the log with its witness; a missing witness is
// created from the current head.
func (l *Log) checkWitness() error {
	w, err := ReadWitness(l.cfg.Witness, l.PublicKey())
	if errors.Is(err, os.ErrNotExist) {
		l.log.Warn("audit witness missing; creating it from the current head", "witness", l.cfg.Witness, "seq", l.head.Seq)
		return writeWitness(l.cfg.Witness, l.signedHead(l.head))
	}
	if err != nil {
		return err
	}
	return guard(func() error {
		return l.db.View(func(tx *bolt.Tx) error {
			return holdsHead(tx.Bucket(bucketRecords), w, "witness "+l.cfg.Witness)
		})
	})
}

// holdsHead checks that recs holds the record a signed head names. what
// says where the head came from, for the error.
func holdsHead(recs *bolt.Bucket, h Head, what string) error {
	if h.Seq == 0 {
		return nil
	}
	rec := recs.Get(seqKey(h.Seq))
	switch {
	case rec == nil:
		last, _ := recs.Cursor().Last()
		var end uint64
		if last != nil {
			end = seqFromKey(last)
		}
		return fmt.Errorf("%w: %s holds a head signed at record %d (%s), but the log ends at %d", ErrRollback, what, h.Seq, h.Time.Format("2006-01-02T15:04:05Z07:00"), end)
	case RecordHash(rec) != h.Hash:
		return fmt.Errorf("%w: %s holds record %d with hash %s, the log's record %d hashes to %s (the log forked)", ErrRollback, what, h.Seq, h.Hash, h.Seq, RecordHash(rec))
	}
	return nil
}
