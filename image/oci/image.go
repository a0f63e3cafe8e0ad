package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Input is everything the image is made of. Two equal Inputs give the same
// manifest digest: nothing else (clock, host user, file order) reaches it.
type Input struct {
	// Binary is the static fleetbox executable, installed as /fleetbox.
	Binary []byte
	// CABundle, if not nil, is installed as
	// /etc/ssl/certs/ca-certificates.crt, where Go's crypto/x509 looks for
	// trust roots on Linux.
	CABundle []byte
	// Epoch is SOURCE_DATE_EPOCH: every timestamp in the layer and the
	// config.
	Epoch int64
	// Version, Revision and Source become the org.opencontainers.image
	// labels of the same names; empty ones are left out.
	Version, Revision, Source string
}

// The container runs as root (uid 0, gid 0). The dstack guest agent's socket
// (/var/run/dstack.sock) is bind-mounted from the CVM, where the agent runs
// as root and creates it owned by root; connecting to a unix socket needs
// write permission on it, which a non-root uid would get only if the socket
// were world-writable. fleetbox needs that socket (quotes, keys) to do
// anything, so a non-root user would trade a working node for nothing: the
// CVM holds this one application, the image holds no shell or other program,
// and the compose files drop every capability, forbid new privileges and
// mount the root filesystem read-only, so root in the container can write
// only /data and /tmp.
const (
	rootUID = 0
	rootGID = 0
)

// entry is one member of the layer: a directory when its name ends in "/".
type entry struct {
	name string
	mode int64
	data []byte
}

// layerEntries lists the layer's content, sorted by name.
func layerEntries(in Input) []entry {
	es := []entry{
		{name: "data/", mode: 0o755},
		{name: "etc/", mode: 0o755},
		// Names for uid 0 (what runs) and nobody (for an operator who
		// chooses `user: 65534`), so that tools reading these files
		// find an entry; fleetbox itself looks up no user.
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnobody:x:65534:\n")},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n")},
		{name: "fleetbox", mode: 0o755, data: in.Binary},
		{name: "tmp/", mode: 0o1777},
	}
	if in.CABundle != nil {
		es = append(es,
			entry{name: "etc/ssl/", mode: 0o755},
			entry{name: "etc/ssl/certs/", mode: 0o755},
			entry{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: in.CABundle})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].name < es[j].name })
	return es
}

// LayerTar returns the uncompressed layer: USTAR headers (no PAX records,
// so no access or change times), owner 0:0 with no user or group names, and
// every modification time at the epoch.
func LayerTar(in Input) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(in.Epoch, 0).UTC()
	for _, e := range layerEntries(in) {
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			Uid:     rootUID,
			Gid:     rootGID,
			ModTime: mtime,
			Format:  tar.FormatUSTAR,
		}
		if e.name[len(e.name)-1] == '/' {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// Build assembles the image: an OCI manifest, an OCI config and one gzip
// layer. The gzip stream is Go's compress/gzip at BestCompression with an
// empty header (no name, no time); its bytes are fixed by the toolchain,
// which go.mod pins.
func Build(in Input) (v1.Image, error) {
	raw, err := LayerTar(in)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(
		func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil },
		tarball.WithMediaType(types.OCILayer),
		tarball.WithCompressionLevel(gzip.BestCompression),
		tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	created := v1.Time{Time: time.Unix(in.Epoch, 0).UTC()}

	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	base, err = mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Created:      created,
		Config: v1.Config{
			Entrypoint: []string{"/fleetbox"},
			Cmd:        []string{"--help"},
			Env:        []string{"PATH=/"},
			WorkingDir: "/",
			User:       fmt.Sprintf("%d:%d", rootUID, rootGID),
			Labels:     labels(in),
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   created,
			CreatedBy: "fleetbox image/oci: /fleetbox and the files it needs",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	return img, nil
}

func labels(in Input) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":   "fleetbox",
		"org.opencontainers.image.created": time.Unix(in.Epoch, 0).UTC().Format(time.RFC3339),
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.version":  in.Version,
		"org.opencontainers.image.revision": in.Revision,
		"org.opencontainers.image.source":   in.Source,
	} {
		if v != "" {
			l[k] = v
		}
	}
	return l
}
