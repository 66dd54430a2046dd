// Package buildinfo says which build of Berth is running: the version
// set at link time (-X .../buildinfo.version=v0.3.0), else the module's,
// and the VCS commit the Go toolchain recorded.
package buildinfo

import "runtime/debug"

// version is set with -ldflags "-X github.com/berth-dev/berth/internal/buildinfo.version=...".
var version = ""

// Info is a build's identity.
type Info struct {
	Version   string
	GoVersion string
	Commit    string
	Modified  bool
}

// Get returns this binary's build information.
func Get() Info {
	info := Info{Version: version}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if info.Version == "" {
			info.Version = "devel"
		}
		return info
	}
	info.GoVersion = bi.GoVersion
	if info.Version == "" {
		info.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	if info.Version == "" || info.Version == "(devel)" {
		info.Version = "devel"
	}
	if info.Modified && info.Commit != "" {
		info.Commit += "-dirty"
	}
	return info
}
