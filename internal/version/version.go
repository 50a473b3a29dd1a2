// Package version says which build of nsflow is running, for `nsflow
// version` and the agent's nsflow_build_info metric.
package version

import (
	"runtime"
	"runtime/debug"
)

// Version is set at link time by the Makefile (-X); a plain `go build`
// falls back to the module version and VCS data the toolchain embeds.
var Version = ""

// Info describes this build.
type Info struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns this build's description.
func Get() Info {
	i := Info{Version: Version, Revision: "unknown", GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				i.Revision = s.Value
			}
		}
	}
	if i.Version == "" {
		i.Version = "devel"
	}
	return i
}
