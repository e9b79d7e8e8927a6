package podmantest

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Where the Go image keeps what it adds to the Debian root filesystem.
const (
	imageGoroot = "usr/local/go"
	imageCAFile = "etc/ssl/certs/ca-certificates.crt"
)

// writeGoRootfs writes, as one tar stream, the Debian root filesystem in
// debianTar, the toolchain in goroot at /usr/local/go, and caFile as the
// system CA bundle.
func writeGoRootfs(w io.Writer, debianTar, goroot, caFile string) error {
	tw := tar.NewWriter(w)
	seen, err := copyTar(tw, debianTar, imageCAFile)
	if err != nil {
		return err
	}
	// minbase has no ca-certificates package, so maybe no /etc/ssl/certs.
	for _, dir := range []string{"etc/ssl", "etc/ssl/certs"} {
		if !seen[dir] {
			hdr := &tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		}
	}
	if err := addFile(tw, caFile, imageCAFile, 0o644); err != nil {
		return err
	}
	if err := addTree(tw, goroot, imageGoroot); err != nil {
		return err
	}
	return tw.Close()
}

// copyTar copies every entry of the tarball at src but skip, and returns
// the (cleaned) names it copied.
func copyTar(tw *tar.Writer, src, skip string) (map[string]bool, error) {
	f, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	seen := make(map[string]bool)
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return seen, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", src, err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if name == skip {
			continue
		}
		seen[name] = true
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return nil, err
		}
	}
}

// addFile adds the file at src as name, owned by root.
func addFile(tw *tar.Writer, src, name string, mode int64) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(b))}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = tw.Write(b)
	return err
}

// addTree adds the directory tree at src under name, owned by root.
func addTree(tw *tar.Writer, src, name string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		} else if !info.Mode().IsRegular() && !info.IsDir() {
			return nil // sockets, pipes: nothing a toolchain needs
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		hdr.Name = path.Join(name, filepath.ToSlash(rel))
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
}
