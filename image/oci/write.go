package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// Result names what WriteLayout wrote.
type Result struct {
	Manifest  v1.Hash // the image's digest: what a compose file pins
	Config    v1.Hash
	Layer     v1.Hash // the compressed layer, as the manifest lists it
	LayerSize int64
	DiffID    v1.Hash // the uncompressed layer
}

// WriteLayout writes img as an OCI image layout in dir, with the manifest
// digest in dir/digest. The layout is built beside dir and renamed into
// place, so a failed run leaves any earlier layout whole. An existing dir
// is replaced only if it is empty or an image layout (it has an oci-layout
// file): the tool never deletes an unrelated directory given by mistake.
// tag, if set, is recorded in index.json (org.opencontainers.image.ref.name
// holds the part after the last ':', io.containerd.image.name the whole).
func WriteLayout(img v1.Image, dir, tag string) (Result, error) {
	var res Result
	if err := replaceable(dir); err != nil {
		return res, err
	}
	var err error
	if res.Manifest, err = img.Digest(); err != nil {
		return res, fmt.Errorf("manifest digest: %w", err)
	}
	if res.Config, err = img.ConfigName(); err != nil {
		return res, fmt.Errorf("config digest: %w", err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		return res, fmt.Errorf("layers: want 1, got %d (%v)", len(layers), err)
	}
	if res.Layer, err = layers[0].Digest(); err != nil {
		return res, fmt.Errorf("layer digest: %w", err)
	}
	if res.LayerSize, err = layers[0].Size(); err != nil {
		return res, fmt.Errorf("layer size: %w", err)
	}
	if res.DiffID, err = layers[0].DiffID(); err != nil {
		return res, fmt.Errorf("layer diff_id: %w", err)
	}

	if err := os.MkdirAll(filepath.Dir(filepath.Clean(dir)), 0o755); err != nil {
		return res, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dir)), "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(tmp)
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return res, fmt.Errorf("writing the layout: %w", err)
	}
	var opts []layout.Option
	if tag != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": tagPart(tag),
			"io.containerd.image.name":          tag,
		}))
	}
	if err := p.AppendImage(img, opts...); err != nil {
		return res, fmt.Errorf("writing the layout: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "digest"), []byte(res.Manifest.String()+"\n"), 0o644); err != nil {
		return res, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return res, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return res, err
	}
	return res, nil
}

// replaceable refuses a dir that exists and holds something other than an
// image layout.
func replaceable(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && len(ents) == 0) {
		return nil
	}
	if err != nil {
		return usageError{fmt.Errorf("--out %s: %w", dir, err)}
	}
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return usageError{fmt.Errorf("--out %s exists and is not an OCI image layout; not replacing it", dir)}
	}
	return nil
}

// tagPart is the tag of "name:tag" ("registry:5000/name:tag" included), or
// the whole string when it has none.
func tagPart(ref string) string {
	if i := strings.LastIndexByte(ref, ':'); i >= 0 && !strings.Contains(ref[i+1:], "/") {
		return ref[i+1:]
	}
	return ref
}

// dockerManifest is one entry of docker save's manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// WriteArchive writes the layout in dir as one tar file: the layout's files
// (oci-layout, index.json, blobs/sha256/...), which is what skopeo and
// podman read as oci-archive:, plus docker save's manifest.json naming the
// same blobs, which docker load reads (Docker 25 and later write this same
// shape). Entries are sorted, owned by 0:0 without names, mode 0644 (0755
// for directories), dated at the epoch, so the archive too is reproducible.
// The file "digest" is left out: it is not part of the layout.
func WriteArchive(dir string, res Result, tarPath, tag string, epoch int64) error {
	var names []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." || rel == "digest" {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			rel += "/"
		} else if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", path)
		}
		names = append(names, rel)
		return nil
	})
	if err != nil {
		return fmt.Errorf("reading the layout: %w", err)
	}
	dm := []dockerManifest{{
		Config: "blobs/" + res.Config.Algorithm + "/" + res.Config.Hex,
		Layers: []string{"blobs/" + res.Layer.Algorithm + "/" + res.Layer.Hex},
	}}
	if tag != "" {
		dm[0].RepoTags = []string{tag}
	}
	manifestJSON, err := json.Marshal(dm)
	if err != nil {
		return err
	}
	names = append(names, "manifest.json")
	sort.Strings(names)

	if err := os.MkdirAll(filepath.Dir(tarPath), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(tarPath), "."+filepath.Base(tarPath)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	tw := tar.NewWriter(f)
	mtime := time.Unix(epoch, 0).UTC()
	for _, name := range names {
		h := &tar.Header{Name: name, ModTime: mtime, Format: tar.FormatUSTAR}
		var data []byte
		switch {
		case strings.HasSuffix(name, "/"):
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case name == "manifest.json":
			h.Typeflag, h.Mode, data = tar.TypeReg, 0o644, manifestJSON
		default:
			if data, err = os.ReadFile(filepath.Join(dir, filepath.FromSlash(name))); err != nil {
				return err
			}
			h.Typeflag, h.Mode = tar.TypeReg, 0o644
		}
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("archive: %s: %w", name, err)
		}
		if _, err := tw.Write(data); err != nil {
			return fmt.Errorf("archive: %s: %w", name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(f.Name(), tarPath)
}
