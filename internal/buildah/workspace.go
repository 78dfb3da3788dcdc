package buildah

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// workspace is the files and environment one buildah run gets in its work
// dir. Everything buildah would otherwise read from the host's or the
// user's configuration (registries, short-name aliases, credentials,
// signature policy, storage) is written here, so the host's settings and our
// own process's environment do not leak into builds.
type workspace struct {
	dir        string
	storage    Storage
	authFile   string
	policyFile string
	regConf    string
	regConfDir string
	aliasFile  string
	storeConf  string
}

// hostPattern is what Insecure accepts: a host name or IPv4 address, or a
// bracketed IPv6 one, with an optional port. It keeps registries.conf free
// of anything a host could inject into it.
var hostPattern = regexp.MustCompile(`^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$`)

// secretID is what a secret's ID may be: --secret is a comma-separated
// list of key=value pairs, and the ID is also the file name under
// /run/secrets.
var secretID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func prepare(dir string, s Storage, auth []byte, insecure []string) (*workspace, error) {
	if dir == "" {
		return nil, errors.New("no work dir")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	ws := &workspace{
		dir:        dir,
		storage:    s,
		authFile:   filepath.Join(dir, "auth.json"),
		policyFile: filepath.Join(dir, "policy.json"),
		regConf:    filepath.Join(dir, "registries.conf"),
		regConfDir: filepath.Join(dir, "registries.conf.d"),
		aliasFile:  filepath.Join(dir, "short-name-aliases.conf"),
		storeConf:  filepath.Join(dir, "storage.conf"),
	}
	for _, d := range []string{dir, ws.home(), ws.tmp(), ws.runtimeDir(), ws.regConfDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("work dir: %w", err)
		}
	}

	// An empty auth file rather than none: buildah would look for
	// credentials in its default places otherwise.
	if len(auth) == 0 {
		auth = []byte(`{"auths":{}}`)
	}
	var conf strings.Builder
	// Short names ("FROM alpine") fail instead of being looked up on
	// public registries this machine may not reach and tenants must not
	// silently depend on.
	conf.WriteString("unqualified-search-registries = []\nshort-name-mode = \"enforcing\"\n")
	for _, h := range insecure {
		if !hostPattern.MatchString(h) {
			return nil, fmt.Errorf("insecure registry %q is not a host[:port]", h)
		}
		fmt.Fprintf(&conf, "\n[[registry]]\nlocation = %s\ninsecure = true\n", tomlString(h))
	}
	files := []struct {
		path string
		body []byte
	}{
		{ws.authFile, auth},
		// Signatures are not part of Flock's trust model: the registries
		// builds pull from are the tenant's choice.
		{ws.policyFile, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}` + "\n")},
		{ws.regConf, []byte(conf.String())},
		{ws.aliasFile, nil},
		{ws.storeConf, []byte(fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %s\nrunroot = %s\n",
			tomlString(s.Root), tomlString(s.RunRoot)))},
	}
	for _, f := range files {
		if err := writePrivate(f.path, f.body); err != nil {
			return nil, fmt.Errorf("work dir: %w", err)
		}
	}
	return ws, nil
}

// tempWorkspace is a workspace for a run that needs no credentials, in a
// directory of its own removed by done.
func tempWorkspace(s Storage) (*workspace, func(), error) {
	dir, err := os.MkdirTemp("", "buildah-")
	if err != nil {
		return nil, nil, err
	}
	done := func() { _ = os.RemoveAll(dir) }
	ws, err := prepare(dir, s, nil, nil)
	if err != nil {
		done()
		return nil, nil, err
	}
	return ws, done, nil
}

func (ws *workspace) home() string       { return filepath.Join(ws.dir, "home") }
func (ws *workspace) tmp() string        { return filepath.Join(ws.dir, "tmp") }
func (ws *workspace) runtimeDir() string { return filepath.Join(ws.dir, "run") }
func (ws *workspace) secretsDir() string { return filepath.Join(ws.dir, "secrets") }

// writeSecrets writes each secret to its own file and returns the
// --secret flags naming them.
func (ws *workspace) writeSecrets(secrets map[string]string) ([]string, error) {
	if len(secrets) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(ws.secretsDir(), 0o700); err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	var args []string
	for _, id := range sortedKeys(secrets) {
		if !secretID.MatchString(id) {
			return nil, fmt.Errorf("secret id %q: use letters, digits, '.', '_' and '-'", id)
		}
		path := filepath.Join(ws.secretsDir(), id)
		if err := writePrivate(path, []byte(secrets[id])); err != nil {
			return nil, fmt.Errorf("secret %s: %w", id, err)
		}
		args = append(args, "--secret", "id="+id+",src="+path)
	}
	return args, nil
}

func (ws *workspace) globalArgs() []string {
	return []string{
		"--root", ws.storage.Root,
		"--runroot", ws.storage.RunRoot,
		"--storage-driver", "vfs",
		"--registries-conf-dir", ws.regConfDir,
		"--short-name-alias-conf", ws.aliasFile,
	}
}

// env is buildah's whole environment. Nothing of ours is inherited but
// PATH: our environment may hold our own credentials.
func (ws *workspace) env() []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	return []string{
		"PATH=" + path,
		"HOME=" + ws.home(),
		"TMPDIR=" + ws.tmp(),
		"XDG_RUNTIME_DIR=" + ws.runtimeDir(),
		"XDG_CONFIG_HOME=" + filepath.Join(ws.home(), ".config"),
		"XDG_DATA_HOME=" + filepath.Join(ws.home(), ".local", "share"),
		"BUILDAH_ISOLATION=chroot",
		"STORAGE_DRIVER=vfs",
		"CONTAINERS_REGISTRIES_CONF=" + ws.regConf,
		"CONTAINERS_STORAGE_CONF=" + ws.storeConf,
		"REGISTRY_AUTH_FILE=" + ws.authFile,
		"LANG=C.UTF-8",
	}
}

// writePrivate writes a file only we can read. It replaces any file a
// previous run left rather than writing into it, which would keep that
// file's permissions (or follow a symlink).
func writePrivate(path string, body []byte) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(body)
	return errors.Join(err, f.Close())
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
